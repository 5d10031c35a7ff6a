"""Reference models for the per-round auditor: trained once per run, reused against every round's targets.

The attacks ``reference``, ``lira-offline``, ``lira-online``, ``rmia-offline``, ``rmia-online`` (and the
aliases ``lira``, ``rmia``) need no training on membership labels, only reference models of the audited
architecture. Those do not change while the federation trains, so the auditor trains them once (at its
first round), computes their logits on the audited records once, and each round only computes the
target's logits (the global model for ``participant``, every client's model for ``server``).

Design (the ground truth stays that of the other attacks: members are the clients' records, non-members
the population records, and every audited record is scored):

- the pool is the audited records themselves, and every pool record follows the balanced design of
  :func:`fedaudit.attacks.reference_models.reference_design` (``include=`` the whole pool): each is IN for
  exactly ``R // 2`` of the ``R`` reference models and OUT for the others, and the in-mask says which.
  Offline attacks only (no ``*-online`` attack configured): the pool is the population records, so each
  model trains on half of the population and no reference model ever sees a member. With an online attack
  configured: the pool is members + population records, so each model trains on half of each.
- offline attacks read only the OUT models of each record (the attacks use the in-mask), so a population
  record audited as a non-member is never scored against a model that trained on it; online attacks use
  the IN and OUT models of each record. Hence at least 2 reference models are needed
  (``[audit] reference_models >= 2``); with fewer, these attacks are skipped with the reason.
- RMIA's comparison records z are all population records, scored by the target and by the references
  (offline: OUT models only per z). A non-member x is among its own z (LR(x, x) = 1 counts for it): this
  shifts a non-member's score up by at most 1 / (population records), against the attack, never for it.
- no cross-fitting: nothing is fitted on membership labels; metrics are on the same audited records as
  the other attacks (server: a record under its (pseudo-)owner's model, per client: k's members vs every
  population record under theta_k).

Training recipe: the scenario's model and options, optimizer, learning rate and batch size; epochs =
``local_epochs * rounds`` capped at :data:`EPOCHS_CAP` (the global model's total local training, not
more than an overfit model needs). They mimic a model trained on about half the audited records from
scratch, not a client's model fine-tuned from theta_prev, and without DP noise.

Where: in the auditor's process. Inside Ray (the actor) they train as Ray tasks only when the cluster has
at least 2 free CPUs: Flower's client pool holds the CPUs for the whole simulation, and a task waiting
for one would block the auditor, whose rounds the ServerApp waits for before it returns. Otherwise (and
without Ray, as in tests) they train one after another in the process. Weights are cached in
``run_dir.parent / ".fedaudit-models"`` by a hash of data, architecture,
training settings, seed and training records, so a restarted auditor, later runs and other scenarios
with the same data and recipe load them instead of training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EPOCHS_CAP = 30
MIN_MODELS = 2
CACHE_DIRNAME = ".fedaudit-models"


def reference_attacks() -> list:
    """The attacks of ``[audit] attacks`` that use reference models (from the registry)."""
    from fedaudit.attacks.base import attack_names, attack_spec

    return [a for a in attack_names() if attack_spec(a).uses_reference_models]


def is_online(name: str) -> bool:
    from fedaudit.attacks.base import resolve

    return resolve(name).online


def reference_epochs(local_epochs: int, rounds: int) -> int:
    return int(max(1, min(int(local_epochs) * int(rounds), EPOCHS_CAP)))


def cache_dir_for(run_dir, models_dir: str = "") -> Path:
    return Path(models_dir).expanduser() if models_dir else Path(run_dir).parent / CACHE_DIRNAME


def ray_parallel() -> bool:
    """Train as Ray tasks only inside an initialised Ray with at least 2 free CPUs (see the module doc)."""
    try:
        import ray
    except ImportError:
        return False
    if not ray.is_initialized():
        return False
    try:
        return float(ray.available_resources().get("CPU", 0.0)) >= 2.0
    except Exception:  # noqa: BLE001 - cannot tell: train in process
        return False


@dataclass
class AuditorReferences:
    """Reference models' logits on every audited record and which model trained on which record."""

    logits: np.ndarray        # (R, n, C) on the audited records
    in_mask: np.ndarray       # (R, n) bool
    labels: np.ndarray        # (n,)
    population: np.ndarray    # (n,) bool: population records (RMIA's z)
    online: bool
    info: dict = field(default_factory=dict)

    def inputs(self, target_logits: np.ndarray):
        """AttackInputs for one target given its (n, C) logits on the audited records."""
        from fedaudit.attacks.base import AttackInputs

        pop = self.population
        return AttackInputs(
            target_logits=target_logits, labels=self.labels, population_logits=target_logits[pop],
            population_labels=self.labels[pop], reference_logits=self.logits, reference_in=self.in_mask,
            reference_population_logits=self.logits[:, pop], reference_population_in=self.in_mask[:, pop])

    def scores_rows(self, name: str, target_logits: np.ndarray, rows: np.ndarray, comparison: np.ndarray) -> np.ndarray:
        """Scores of attack ``name`` for one target's logits on ``rows`` (positions of audited records);
        ``comparison`` marks the rows that are RMIA's population records z (the population sample)."""
        from fedaudit.attacks.base import AttackInputs, run_score_attack

        rows = np.asarray(rows)
        z = rows[comparison]
        inputs = AttackInputs(
            target_logits=target_logits, labels=self.labels[rows], population_logits=target_logits[comparison],
            population_labels=self.labels[z], reference_logits=self.logits[:, rows],
            reference_in=self.in_mask[:, rows], reference_population_logits=self.logits[:, z],
            reference_population_in=self.in_mask[:, z])
        return run_score_attack(name, inputs)

    def scores(self, name: str, target_logits: np.ndarray) -> np.ndarray:
        """Scores of attack ``name`` for targets with logits (n, C), or (n, K, C) (NaN columns: no model)."""
        from fedaudit.attacks.base import run_score_attack

        z = np.asarray(target_logits)
        if z.ndim == 2:
            return run_score_attack(name, self.inputs(z))
        out = np.full(z.shape[:2], np.nan)
        for k in range(z.shape[1]):
            if np.isfinite(z[:, k]).all():
                out[:, k] = run_score_attack(name, self.inputs(z[:, k]))
        return out


def train_auditor_references(scenario, member: np.ndarray, x: np.ndarray, y: np.ndarray, num_classes: int,
                             n_models: int, *, online: bool, cache_dir, parallel: bool | None = None
                             ) -> AuditorReferences:
    """Train (or load from ``cache_dir``) the run's reference models; logits on all audited records."""
    from fedaudit.attacks.reference_models import reference_logits, train_reference_models

    member = np.asarray(member, dtype=bool)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    pool = np.arange(len(y)) if online else np.flatnonzero(~member)
    f = scenario.federation
    epochs = reference_epochs(f.local_epochs, f.rounds)
    if parallel is None:
        parallel = ray_parallel()
    refs = train_reference_models(
        scenario.model.name, scenario.model.options, x[pool], y[pool], num_classes, int(n_models),
        include=np.arange(pool.size), train_size=0, epochs=epochs, batch_size=f.batch_size,
        learning_rate=f.learning_rate, optimizer=f.optimizer, seed=f.seed, cache_dir=cache_dir,
        parallel=bool(parallel))
    logits = reference_logits(scenario.model.name, scenario.model.options, x.shape[1:], num_classes,
                              refs.weights, x)
    in_mask = np.zeros((len(refs), len(y)), dtype=bool)
    in_mask[:, pool] = refs.in_mask
    info = {"models": len(refs), "online": bool(online), "epochs": epochs,
            "records_per_model": int(refs.in_mask.sum(axis=1).min()),
            "from_cache": int(sum(refs.from_cache)), "train_seconds": round(float(refs.train_seconds), 3),
            "parallel": bool(parallel), "cache_dir": str(cache_dir)}
    log.info("auditor reference models: %s", info)
    return AuditorReferences(logits=logits, in_mask=in_mask, labels=y, population=~member, online=bool(online),
                             info=info)


__all__ = ["AuditorReferences", "EPOCHS_CAP", "cache_dir_for", "reference_attacks", "reference_epochs",
           "train_auditor_references"]
