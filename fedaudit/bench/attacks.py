"""`fedaudit bench attacks`: what reference-model attacks cost, measured in one command.

(a) Training N reference models: as Ray tasks in parallel (one TensorFlow thread each, one task per CPU
    of the local Ray) against one after another in this process (TensorFlow's default threads). The Ray
    figure is given cold (new worker processes import TensorFlow) and warm (workers already up, a second
    batch with another seed), and the start of Ray itself separately.
(b) Scoring: seconds per 10,000 audited records for each score attack (R reference models, as many
    population records as audited ones, 20 classes), and for ``summarize`` on its scores.

``--peer art``: instead, fedaudit's attacks beside IBM ART's black-box attack on the same target, split and known
records (:mod:`fedaudit.bench.peer_art`).
"""

from __future__ import annotations

import time

import numpy as np

from fedaudit.bench.common import report
from fedaudit.errors import ConfigError

ATTACKS = ("loss", "population", "reference", "lira-offline", "lira-online", "rmia-offline", "rmia-online")


def workload(quick: bool) -> dict:
    if quick:
        return {"dataset": "digits", "options": {}, "model": "mlp", "model_options": {"hidden": [64]},
                "models": 2, "records": 400, "epochs": 5, "score_records": 2000}
    return {"dataset": "synthetic-purchase", "options": {}, "model": "purchase-fcn", "model_options": {},
            "models": 4, "records": 600, "epochs": 20, "score_records": 10000}


def bench_training(w: dict) -> dict:
    from fedaudit.attacks.reference_models import ray_session, train_reference_models
    from fedaudit.data import load_dataset

    d = load_dataset(w["dataset"], seed=0, **w["options"])
    pool = 2 * w["records"]
    x, y = d.x[:pool], d.y[:pool]
    args = (w["model"], w["model_options"], x, y, d.num_classes, w["models"])
    # the same models trained each way: no second attempt at a model that fits worse than the others
    kw = dict(train_size=w["records"], epochs=w["epochs"], batch_size=64, cache_dir=None, refit=False)
    # in process first, so that TensorFlow's import is not counted against either side
    import tensorflow  # noqa: F401

    start = time.perf_counter()
    train_reference_models(*args, seed=1, parallel=False, **kw)
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    with ray_session(True) as ray:
        ray_start = time.perf_counter() - start
        cpus = int(ray.cluster_resources().get("CPU", 0))
        start = time.perf_counter()
        train_reference_models(*args, seed=2, parallel=True, **kw)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        train_reference_models(*args, seed=3, parallel=True, **kw)
        warm = time.perf_counter() - start
    return {"models": w["models"], "model": w["model"], "dataset": w["dataset"], "records_per_model": w["records"],
            "epochs": w["epochs"], "ray_cpus": cpus, "sequential_s": sequential, "ray_start_s": ray_start,
            "parallel_cold_s": cold, "parallel_warm_s": warm,
            "ratio_cold": sequential / cold, "ratio_warm": sequential / warm}


def synthetic_inputs(n: int, R: int = 4, C: int = 20, seed: int = 0):
    """Audited and population logits with a planted membership signal, an online reference design."""
    from fedaudit.attacks.base import AttackInputs

    rng = np.random.default_rng(seed)
    labels, zl = rng.integers(0, C, n), rng.integers(0, C, n)

    def logits(shape, lab, boost):
        z = rng.normal(0, 1, shape + (C,))
        idx = np.broadcast_to(lab[:, None], z.shape[:-1] + (1,))
        np.put_along_axis(z, idx, np.take_along_axis(z, idx, -1) + 2 + boost[..., None], axis=-1)
        return z

    member = rng.random(n) < 0.5
    in_mask = rng.random((R, n)).argsort(axis=0) < R // 2
    pop_in = rng.random((R, n)) < 0.5
    common = dict(target_logits=logits((n,), labels, 2.0 * member), labels=labels,
                  population_logits=logits((n,), zl, np.zeros(n)), population_labels=zl,
                  reference_population_logits=logits((R, n), zl, 2.0 * pop_in), reference_population_in=pop_in)
    online = AttackInputs(**common, reference_logits=logits((R, n), labels, 2.0 * in_mask), reference_in=in_mask)
    offline = AttackInputs(**common, reference_logits=logits((R, n), labels, np.zeros((R, n))))
    return online, offline, member


def bench_scoring(n: int, repeats: int = 3) -> dict:
    from fedaudit.attacks import resolve, run_score_attack
    from fedaudit.metrics import summarize

    online, offline, member = synthetic_inputs(n)
    per = 10000.0 / n
    out = {}
    for name in ATTACKS:
        inputs = online if resolve(name).online else offline
        times, scores = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            scores = run_score_attack(name, inputs)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        s = summarize(scores[member], scores[~member])
        out[name] = {"score_s_per_10k": float(np.median(times)) * per,
                     "summarize_s_per_10k": (time.perf_counter() - start) * per, "auc": s.auc}
    return {"records": n, "reference_models": 4, "classes": 20, "attacks": out}


def run(json_path: str | None = None, quick: bool = False, peer: str | None = None, targets: int | None = None,
        seed: int = 0, family: str = "mixed") -> dict:
    """Run both measurements, print a table, optionally write the figures as JSON; returns them.
    With ``peer`` ("art"): fedaudit's attacks beside that library's instead (:mod:`fedaudit.bench.peer_art`), on
    ``targets`` targets drawn from ``family`` with ``seed`` when given."""
    if peer is not None:
        from fedaudit.bench import peer_art

        return peer_art.run(json_path=json_path, quick=quick, peer=peer, targets=targets, seed=seed, family=family)
    if targets is not None:
        raise ConfigError("--targets: only with --peer (the peer comparison draws targets; this bench times)")
    w = workload(quick)
    training = bench_training(w)
    scoring = bench_scoring(w["score_records"])
    rows = [
        ("reference models", f"{training['models']} x {training['model']} on {training['dataset']}, "
                             f"{training['records_per_model']} records, {training['epochs']} epochs"),
        ("one after another, in process", f"{training['sequential_s']:.1f} s"),
        (f"Ray tasks ({training['ray_cpus']} CPUs), cold", f"{training['parallel_cold_s']:.1f} s "
                                                          f"(ratio {training['ratio_cold']:.2f}x)"),
        ("Ray tasks, warm workers", f"{training['parallel_warm_s']:.1f} s (ratio {training['ratio_warm']:.2f}x)"),
        ("Ray start", f"{training['ray_start_s']:.1f} s"),
    ]
    for name, f in scoring["attacks"].items():
        rows.append((f"score {name}", f"{f['score_s_per_10k'] * 1000:.1f} ms / 10k records "
                                      f"(+ summarize {f['summarize_s_per_10k'] * 1000:.0f} ms)"))
    figures = {"workload": w, "training": training, "scoring": scoring}
    return report("fedaudit bench attacks", rows, figures, json_path)
