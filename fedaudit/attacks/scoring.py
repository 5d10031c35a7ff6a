"""Reference models and score attacks for a single-model audit (:func:`fedaudit.model_audit.audit`).

Every score attack of the registry (:mod:`fedaudit.attacks.base`) can be named; each gets the inputs its
``needs`` name: the target's logits, the population records (and their features, for QMIA), the reference
models, or (``fedmia``) the offline reference models as the models that did not train on a record.

:func:`prepare_audit` computes the target's logits on members, non-members and population records and trains
(or loads from a cache) the reference models the chosen attacks need; :func:`score_all` runs the attacks on
them. Two sets of reference models, each of ``reference_models`` models, are trained only when needed:

- offline set (``reference``, ``lira-offline``, ``rmia-offline``, ``fedmia``): trained on random subsets of the
  population records only (the target's training-set size, at most three quarters of the population),
  so none of them saw an audited record;
- online set (``lira-online``, ``rmia-online``): trained on the audited records (members and
  non-members, each IN for half the models) topped up with population records to the target's
  training-set size.

TensorFlow is imported when the functions run, not when this module is imported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from fedaudit.attacks.base import AttackInputs, resolve, run_score_attack
from fedaudit.attacks.scores import logit_confidence
from fedaudit.errors import AttackError, ConfigError

log = logging.getLogger(__name__)

#: every score attack on the target's logits, a population and both sets of reference models (a comparison suite;
#: the single-model audit's default attacks are fedaudit.model_audit.DEFAULT_ATTACKS)
SCORE_SUITE = ("loss", "population", "reference", "lira-offline", "lira-online", "rmia-offline", "rmia-online")
DEFAULT_ATTACKS = SCORE_SUITE   # the suite's former name, which simulations/attack_strength.py imports


@dataclass
class AuditData:
    """What the attacks saw: inputs per reference set, and which audited record is a member."""

    offline: AttackInputs | None
    online: AttackInputs | None
    plain: AttackInputs          # no reference models: loss and population
    is_member: np.ndarray        # (n,) bool over the audited records (members first)


def _arrays(x, y, name):
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise AttackError(f"{name}: {x.shape[0]} records but {y.shape[0]} labels")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise AttackError(f"{name}: labels must be integers (class indices), got {y.dtype}")
    return x, y.astype(np.int64)


def prepare_audit(model, x_members, y_members, x_nonmembers, y_nonmembers, *, x_population, y_population,
                  attacks=SCORE_SUITE, reference_models: int = 4, model_name: str | None = None,
                  model_options: dict | None = None, num_classes: int | None = None, epochs: int = 20,
                  batch_size: int = 64, learning_rate: float = 1e-3, optimizer: str = "adam", seed: int = 0,
                  cache_dir=None, parallel: bool = True, train_size: int | None = None,
                  from_probabilities: bool = False, refit: bool = True) -> AuditData:
    """Logits of the target and of the reference models the attacks need, as :class:`AttackInputs`
    (``refit``: train a reference model that did not fit its records again, see
    :data:`fedaudit.attacks.reference_models.FIT_GAP`)."""
    from fedaudit.attacks.reference_models import logits_function, ray_session

    xm, ym = _arrays(x_members, y_members, "members")
    xn, yn = _arrays(x_nonmembers, y_nonmembers, "nonmembers")
    xp, yp = _arrays(x_population, y_population, "population")
    if xm.shape[0] == 0 or xn.shape[0] == 0:
        raise AttackError("members, nonmembers: need at least one member and one non-member record to audit")
    x_audit = np.concatenate([xm, xn])
    y_audit = np.concatenate([ym, yn])
    is_member = np.r_[np.ones(len(ym), dtype=bool), np.zeros(len(yn), dtype=bool)]
    run = logits_function(model)
    to_logits = (lambda p: np.log(np.clip(p, 1e-30, None))) if from_probabilities else (lambda z: z)
    target_audit = to_logits(run(x_audit))
    target_pop = to_logits(run(xp)) if len(xp) else None
    c = int(num_classes or target_audit.shape[1])
    if target_audit.shape[1] != c:
        raise AttackError(f"num_classes: model outputs {target_audit.shape[1]} classes, num_classes is {c}")
    pop = {"population_logits": target_pop, "population_labels": yp if len(xp) else None}
    specs = [resolve(a) for a in attacks]
    features = {}
    if any("features" in s.needs for s in specs):   # QMIA: the records' own inputs, flattened
        features = {"features": x_audit.reshape(len(x_audit), -1),
                    "population_features": xp.reshape(len(xp), -1) if len(xp) else None}
    plain = AttackInputs(target_audit, y_audit, **pop, **features)

    need_offline = any(s.offline_references for s in specs)
    need_online = any(s.online for s in specs)
    offline = online = None
    if need_offline or need_online:
        if not model_name:
            raise ConfigError(
                f"model_name: attacks {', '.join(s.name for s in specs if s.uses_reference_models)} train "
                f"reference models of the audited architecture; pass model_name= a registered model "
                f"(see fedaudit.models.MODELS)")
        if int(reference_models) < 1:
            raise ConfigError(
                f"reference_models: attacks with reference models need at least 1, got {reference_models}")
        if len(xp) == 0:
            raise AttackError("x_population: reference models train on population records; got none")
    common = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer,
                  seed=seed, cache_dir=cache_dir, parallel=parallel, refit=refit)
    target_size = int(train_size) if train_size is not None else len(xm)
    with ray_session(parallel and (need_offline or need_online)):
        offline, online = _reference_inputs(
            need_offline, need_online, model_name, model_options, c, reference_models, target_size,
            x_audit, y_audit, target_audit, xp, yp, pop, common)
    return AuditData(offline=offline, online=online, plain=plain, is_member=is_member)


def _reference_inputs(need_offline, need_online, model_name, model_options, c, reference_models, target_size,
                      x_audit, y_audit, target_audit, xp, yp, pop, common):
    from fedaudit.attacks.reference_models import prepare_reference_logits

    offline = online = None
    args = (model_name, model_options, x_audit, y_audit, xp, yp, c, int(reference_models))
    if need_offline:
        # match the target's training-set size, but leave a quarter of the population OUT of every model
        # (RMIA offline tunes a on them; the models differ from each other)
        size = max(1, min(target_size, (3 * len(xp)) // 4))
        refs = prepare_reference_logits(*args, online=False, train_size=size, **common)
        offline = refs.inputs(target_audit, y_audit, pop["population_logits"], pop["population_labels"])
    if need_online:
        extra = int(np.clip(target_size - len(x_audit) // 2, 0, len(xp)))
        refs = prepare_reference_logits(*args, online=True, train_size=extra, **common)
        online = refs.inputs(target_audit, y_audit, pop["population_logits"], pop["population_labels"])
    return offline, online


def score_all(data: AuditData, attacks=SCORE_SUITE, attack_options: dict | None = None) -> dict:
    """Scores of each attack on the audited records (members first), from prepared inputs."""
    attack_options = attack_options or {}
    out = {}
    for name in attacks:
        spec = resolve(name)
        inputs = data.plain
        if spec.uses_reference_models:
            inputs = data.online if spec.online else data.offline
        elif spec.needs_null:   # FedMIA's null models: the offline reference models (none saw an audited record)
            inputs = replace(data.plain, null_phi=None if data.offline is None else
                             logit_confidence(data.offline.reference_logits, data.offline.labels))
        out[name] = run_score_attack(name, inputs, **attack_options.get(name, {}))
    return out
