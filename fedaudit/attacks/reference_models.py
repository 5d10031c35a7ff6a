"""Reference models: trained on records the audited model did not see, in parallel on Ray, cached on disk.

Each reference model trains on a random subset of a pool of records (population data, plus, for online
attacks, the audited records). :func:`reference_design` decides which model trains on which record:

- records listed in ``include`` (the candidates of online attacks) follow a balanced design: each is IN
  for exactly ``n_models // 2`` models (as in Carlini et al.'s reference code), so every candidate has
  IN and OUT models;
- each model also trains on ``train_size`` of the other pool records, drawn at random.

Weights are cached in ``cache_dir`` as ``<sha256>.npz``, keyed by the data, the model and its options,
the training settings, the seed, the model's index and its training records, so later runs, other
scenarios and other rounds of a federation reuse them. Everything here imports TensorFlow (and Ray)
only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedaudit.errors import AttackError, ConfigError

log = logging.getLogger(__name__)

CACHE_VERSION = "fedaudit-reference-v1"
# The only Ray this module starts: a new local one (address "local": never join another cluster found on
# this machine), bound to the loopback interface, no dashboard.
LOCAL_RAY = {"address": "local", "_node_ip_address": "127.0.0.1", "include_dashboard": False, "num_cpus": 2}


@dataclass
class ReferenceSet:
    """Trained reference models: weights per model and which pool record each trained on.

    Unpacks as ``weights, in_mask = train_reference_models(...)``.
    """

    weights: list                 # one list of NumPy arrays per model (Keras get_weights order)
    in_mask: np.ndarray           # (R, n_pool) bool
    keys: list = field(default_factory=list)        # cache keys (sha256 hex)
    from_cache: list = field(default_factory=list)  # whether each model came from the cache
    train_seconds: float = 0.0    # wall time spent training (0 when every model came from the cache)
    train_accuracy: list = field(default_factory=list)  # each model's accuracy on its own training records
    attempts: list = field(default_factory=list)    # each model's training attempt (0: the first; see FIT_GAP)

    def __iter__(self):
        return iter((self.weights, self.in_mask))

    def __len__(self) -> int:
        return len(self.weights)


def reference_design(n_pool: int, n_models: int, *, include=None, train_size: int | None = None,
                     seed: int = 0) -> np.ndarray:
    """(n_models, n_pool) bool: which model trains on which pool record (see the module docstring)."""
    n_pool, n_models = int(n_pool), int(n_models)
    if n_models < 1:
        raise ConfigError(f"audit.reference_models: need at least 1 reference model, got {n_models}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EF]))
    mask = np.zeros((n_models, n_pool), dtype=bool)
    include = np.zeros(0, dtype=np.int64) if include is None else np.unique(np.asarray(include, dtype=np.int64))
    if include.size and (include.min() < 0 or include.max() >= n_pool):
        raise AttackError(f"include: indices must lie in [0, {n_pool}), got [{include.min()}, {include.max()}]")
    if include.size:
        if n_models < 2:
            raise ConfigError(
                f"audit.reference_models: online attacks need at least 2 reference models (each audited record "
                f"IN for half of them), got {n_models}")
        order = rng.random((n_models, include.size)).argsort(axis=0)
        mask[:, include] = order < n_models // 2
    others = np.setdiff1d(np.arange(n_pool), include)
    if train_size is None:
        train_size = others.size // 2
    train_size = int(train_size)
    if not 0 <= train_size <= others.size:
        raise ConfigError(f"train_size: must be in [0, {others.size}] (pool records outside include), got {train_size}")
    for r in range(n_models):
        mask[r, rng.choice(others, size=train_size, replace=False)] = True
    if not mask.any(axis=1).all():
        raise ConfigError("train_size: every reference model needs at least one training record")
    return mask


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(data_digest: str, model_name: str, model_options: dict, input_shape, num_classes: int,
              settings: dict, seed: int, index: int, train_indices: np.ndarray, attempt: int = 0) -> str:
    """SHA-256 of everything that determines one reference model's weights (``attempt``: see :data:`FIT_GAP`)."""
    payload = {
        "version": CACHE_VERSION,
        "data": data_digest,
        "model": model_name,
        "options": model_options,
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "settings": settings,
        "seed": int(seed),
        "index": int(index),
        "train": _digest(np.asarray(train_indices, dtype=np.int64)),
    }
    if attempt:                 # the first attempt's key is the one models cached before attempts existed have
        payload["attempt"] = int(attempt)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_seed(seed: int, index: int, attempt: int = 0) -> int:
    """The build/training seed of reference model ``index`` (distinct per index and training attempt, small
    enough for Keras)."""
    entropy = [int(seed), int(index), 0xBEEF] + ([int(attempt)] if attempt else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] % 1_000_000)


#: A reference model stands for the audited model trained on other records, so it must learn its training records
#: as the audited model learnt its own. One that classifies its own training records correctly more than FIT_GAP
#: less often than the reference model that fits its own best did not (a training run that stalled: on a 50-class
#: long-tailed target of ``fedaudit bench attacks --family longtail --seed 90210``, two of four online reference
#: models reached 0.28 and 0.77 where the other two and the target reached 0.99, and RMIA online, whose p(x)
#: averages them in, fell from the loss threshold's AUC 0.969 to 0.939; ``simulations/reference_fit.py``). It is
#: trained again with another seed, up to REFIT_ATTEMPTS more times, and the attempt that fits best is kept. Models
#: that all fit alike (a hard task, a small model, DP training) are left as they are.
FIT_GAP = 0.1
REFIT_ATTEMPTS = 2


def _load_cached(path: Path) -> list | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable cached reference model %s (%s)", path, exc)
        return None


def _save_cached(path: Path, weights: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, *weights)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _train_one(model_name, model_options, x, y, num_classes, indices, settings, seed, single_thread=False):
    """Build and train one reference model; returns its weights. Runs in this process or in a Ray task."""
    if single_thread:
        import tensorflow as tf

        for setter in (tf.config.threading.set_intra_op_parallelism_threads,
                       tf.config.threading.set_inter_op_parallelism_threads):
            try:
                setter(1)
            except RuntimeError:   # TF already initialised in this worker: keep its settings
                pass
    from fedaudit.models import build_model, train_model

    model = build_model(model_name, x.shape[1:], num_classes, seed=seed, **model_options)
    train_model(model, x[indices], y[indices], epochs=settings["epochs"], batch_size=settings["batch_size"],
                learning_rate=settings["learning_rate"], optimizer=settings["optimizer"], seed=seed)
    return [np.asarray(w) for w in model.get_weights()]


def _ray_session():
    """(ray module, whether we started it). Reuses a running Ray."""
    import ray

    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray.init(**LOCAL_RAY, logging_level=logging.WARNING, log_to_driver=False)
    return ray, True


@contextlib.contextmanager
def ray_session(enabled: bool = True):
    """Reuse a running Ray or start a local one for the block (and shut it down after); no-op if not enabled."""
    if not enabled:
        yield None
        return
    ray, started = _ray_session()
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def train_reference_models(model_name: str, model_options: dict | None, x_pool, y_pool, num_classes: int,
                           n_models: int, *, include=None, train_size: int | None = None, epochs: int = 20,
                           batch_size: int = 64, learning_rate: float = 1e-3, optimizer: str = "adam",
                           seed: int = 0, cache_dir=None, parallel: bool = True, refit: bool = True) -> ReferenceSet:
    """Train (or load from ``cache_dir``) ``n_models`` reference models on subsets of the pool.

    ``parallel``: one Ray task per model that is not cached (each task uses one TensorFlow thread);
    otherwise one after another in this process. ``refit``: train a model that did not fit its training records
    again (:data:`FIT_GAP`). Returns a :class:`ReferenceSet` (weights, in_mask).
    """
    model_options = dict(model_options or {})
    x_pool = np.ascontiguousarray(x_pool, dtype=np.float32)
    y_pool = np.ascontiguousarray(y_pool, dtype=np.int64)
    if x_pool.shape[0] != y_pool.shape[0]:
        raise AttackError(f"x_pool, y_pool: {x_pool.shape[0]} records but {y_pool.shape[0]} labels")
    in_mask = reference_design(x_pool.shape[0], n_models, include=include, train_size=train_size, seed=seed)
    settings = {"epochs": int(epochs), "batch_size": int(batch_size), "learning_rate": float(learning_rate),
                "optimizer": str(optimizer)}
    data_digest = _digest(x_pool, y_pool)

    def key(r: int, attempt: int = 0) -> str:
        return cache_key(data_digest, model_name, model_options, x_pool.shape[1:], num_classes, settings, seed, r,
                         np.flatnonzero(in_mask[r]), attempt)

    cache = Path(cache_dir) if cache_dir is not None else None
    args = (model_name, model_options, x_pool, y_pool, num_classes, in_mask, settings, parallel)
    keys = [key(r) for r in range(n_models)]
    got, cached, elapsed = _load_or_train(dict(enumerate(keys)), {r: model_seed(seed, r) for r in range(n_models)},
                                          cache, args)
    weights = [got[r] for r in range(n_models)]
    from_cache = [r in cached for r in range(n_models)]
    fit = training_accuracy(model_name, model_options, x_pool, y_pool, num_classes, weights, in_mask)
    attempts = [0] * n_models
    for attempt in range(1, REFIT_ATTEMPTS + 1 if refit else 1):
        poor = [r for r in range(n_models) if fit[r] < max(fit) - FIT_GAP]
        if not poor:
            break
        log.info("reference models %s fit %s of their training records against %.2f: trained again with another "
                 "seed (attempt %d)", poor, ", ".join(f"{fit[r]:.2f}" for r in poor), max(fit), attempt + 1)
        retry_keys = {r: key(r, attempt) for r in poor}
        new, cached, seconds = _load_or_train(retry_keys, {r: model_seed(seed, r, attempt) for r in poor}, cache, args)
        elapsed += seconds
        new_fit = training_accuracy(model_name, model_options, x_pool, y_pool, num_classes,
                                    [new[r] for r in poor], in_mask[poor])
        for r, f in zip(poor, new_fit):
            if f > fit[r]:
                weights[r], keys[r], from_cache[r], fit[r], attempts[r] = new[r], retry_keys[r], r in cached, f, attempt
    return ReferenceSet(weights=weights, in_mask=in_mask, keys=keys, from_cache=from_cache, train_seconds=elapsed,
                        train_accuracy=[float(f) for f in fit], attempts=attempts)


def _load_or_train(keys: dict, seeds: dict, cache: Path | None, args: tuple) -> tuple[dict, set, float]:
    """The reference models ``keys`` names ({index: cache key}): each loaded from ``cache`` where it holds it, the
    others trained (:func:`_train_models` with ``args``, seeded by ``seeds``) and cached. Returns ({index: weights},
    the indices that came from the cache, the seconds spent training)."""
    got = {}
    if cache is not None:
        for r, k in keys.items():
            path = cache / f"{k}.npz"
            if path.exists():
                w = _load_cached(path)
                if w is not None:
                    got[r] = w
    cached = set(got)
    todo = [r for r in keys if r not in cached]
    log.info("reference models: %d cached, %d to train (%s)", len(cached), len(todo),
             "Ray tasks" if args[-1] and len(todo) > 1 else "in process")     # args ends with parallel
    start = time.perf_counter()
    trained = _train_models({r: seeds[r] for r in todo}, *args)
    seconds = time.perf_counter() - start if todo else 0.0
    if cache is not None:
        for r, w in trained.items():
            _save_cached(cache / f"{keys[r]}.npz", w)
    return {**got, **trained}, cached, seconds


def _train_models(seeds: dict, model_name, model_options, x_pool, y_pool, num_classes, in_mask, settings,
                  parallel: bool) -> dict:
    """{index: weights} of the reference models ``seeds`` ({index: seed}) names, each trained on its records of
    ``in_mask``: one Ray task per model when ``parallel`` and there are several, else one after another here."""
    out = {}
    if parallel and len(seeds) > 1:
        ray, started = _ray_session()
        try:
            task = ray.remote(num_cpus=1)(_train_one)
            x_ref, y_ref = ray.put(x_pool), ray.put(y_pool)
            futures = {r: task.remote(model_name, model_options, x_ref, y_ref, num_classes,
                                      np.flatnonzero(in_mask[r]), settings, s, True) for r, s in seeds.items()}
            for r, fut in futures.items():
                out[r] = ray.get(fut)
        finally:
            if started:
                ray.shutdown()
    else:
        for r, s in seeds.items():
            out[r] = _train_one(model_name, model_options, x_pool, y_pool, num_classes, np.flatnonzero(in_mask[r]),
                                settings, s)
    return out


def training_accuracy(model_name: str, model_options: dict | None, x_pool, y_pool, num_classes: int, weights_list,
                      in_mask) -> list:
    """Each reference model's accuracy on its own training records (``in_mask`` (R, n_pool) row r)."""
    right = reference_logits(model_name, model_options, x_pool.shape[1:], num_classes, weights_list,
                             x_pool).argmax(axis=2) == np.asarray(y_pool)[None, :]
    return [float(np.mean(right[r][in_mask[r]])) if in_mask[r].any() else 0.0 for r in range(len(weights_list))]


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def logits_function(model, batch_size: int = 2048):
    """A function x -> logits (NumPy) for a Keras model, one compiled call per batch (compiled once per model:
    a new ``tf.function`` per call would retrace, and TensorFlow warns about that)."""
    import tensorflow as tf

    call = _COMPILED.get(model)
    if call is None:
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        ref = weakref.ref(model)       # the cache must not keep the model alive
        call = tf.function(lambda x: ref()(x, training=False), input_signature=[spec])
        _COMPILED[model] = call

    def run(x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape[0] == 0:
            return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
        return np.concatenate([np.asarray(call(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)])

    return run


def reference_logits(model_name: str, model_options: dict | None, input_shape, num_classes: int, weights_list,
                     x, *, batch_size: int = 2048) -> np.ndarray:
    """(R, n, C) logits of each reference model (given by its weights) on records x."""
    from fedaudit.models import build_model

    model = build_model(model_name, input_shape, num_classes, seed=0, **dict(model_options or {}))
    run = logits_function(model, batch_size)
    out = []
    for r, weights in enumerate(weights_list):
        try:
            model.set_weights(weights)
        except ValueError as exc:
            raise AttackError(f"reference model {r}: its weights do not fit model {model_name!r} ({exc})") from None
        out.append(run(x))
    return np.stack(out) if out else np.zeros((0, len(x), num_classes), dtype=np.float32)


@dataclass
class ReferenceLogits:
    """Reference models' logits on fixed audited and population records, computed once and reused.

    Reference models do not change while a federation trains, so an auditor computes these once and, each
    round, only scores the new target (a round's global model or a client's model) on the same records:
    ``inputs(target_logits, labels, target_population_logits, population_labels)`` gives the
    :class:`~fedaudit.attacks.base.AttackInputs` every score attack reads.
    """

    audit_logits: np.ndarray             # (R, n, C)
    audit_in: np.ndarray | None          # (R, n) bool; None: no reference model saw an audited record (offline)
    population_logits: np.ndarray        # (R, m, C)
    population_in: np.ndarray            # (R, m) bool
    online: bool
    references: ReferenceSet | None = None

    def inputs(self, target_logits, labels, target_population_logits, population_labels):
        from fedaudit.attacks.base import AttackInputs

        return AttackInputs(
            target_logits=target_logits, labels=labels, population_logits=target_population_logits,
            population_labels=population_labels, reference_logits=self.audit_logits, reference_in=self.audit_in,
            reference_population_logits=self.population_logits, reference_population_in=self.population_in)


def prepare_reference_logits(model_name: str, model_options: dict | None, x_audit, y_audit, x_population,
                             y_population, num_classes: int, n_models: int, *, online: bool = False,
                             train_size: int | None = None, epochs: int = 20, batch_size: int = 64,
                             learning_rate: float = 1e-3, optimizer: str = "adam", seed: int = 0, cache_dir=None,
                             parallel: bool = True, refit: bool = True) -> ReferenceLogits:
    """Train (or load) reference models and compute their logits on the audited and population records.

    Offline: the models train on ``train_size`` random population records each (default: half of them) and
    never on an audited record (the audited records must not be among the population records).
    Online: the pool is audited + population records; each audited record is IN for half the models, and
    each model adds ``train_size`` population records (default: none).
    """
    x_audit = np.asarray(x_audit, dtype=np.float32)
    x_population = np.asarray(x_population, dtype=np.float32)
    y_audit, y_population = np.asarray(y_audit, dtype=np.int64), np.asarray(y_population, dtype=np.int64)
    common = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer,
                  seed=seed, cache_dir=cache_dir, parallel=parallel, refit=refit)
    shape = x_audit.shape[1:]
    if not online:
        refs = train_reference_models(model_name, model_options, x_population, y_population, num_classes,
                                      n_models, train_size=train_size, **common)
        return ReferenceLogits(
            audit_logits=reference_logits(model_name, model_options, shape, num_classes, refs.weights, x_audit),
            audit_in=None,
            population_logits=reference_logits(model_name, model_options, shape, num_classes, refs.weights,
                                               x_population),
            population_in=refs.in_mask, online=False, references=refs)
    n = x_audit.shape[0]
    pool_x, pool_y = np.concatenate([x_audit, x_population]), np.concatenate([y_audit, y_population])
    refs = train_reference_models(model_name, model_options, pool_x, pool_y, num_classes, n_models,
                                  include=np.arange(n), train_size=int(train_size or 0), **common)
    logits = reference_logits(model_name, model_options, shape, num_classes, refs.weights, pool_x)
    return ReferenceLogits(audit_logits=logits[:, :n], audit_in=refs.in_mask[:, :n],
                           population_logits=logits[:, n:], population_in=refs.in_mask[:, n:], online=True,
                           references=refs)
