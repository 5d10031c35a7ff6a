"""The single-model audit with keyword settings (:func:`audit_model`), for scripts written against it; the reference
models and score attacks it runs are in :mod:`fedaudit.attacks.scoring` (re-exported here)."""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.scoring import DEFAULT_ATTACKS, SCORE_SUITE, AuditData, prepare_audit, score_all
from fedaudit.errors import AttackError, ConfigError
from fedaudit.metrics import Summary


def audit_model(model, x_members, y_members, x_nonmembers, y_nonmembers, *, x_population=None, y_population=None,
                attacks=None, reference_models: int = 4, model_name: str | None = None,
                model_options: dict | None = None, num_classes: int | None = None, epochs: int = 20,
                batch_size: int = 64, learning_rate: float = 1e-3, optimizer: str = "adam", seed: int = 0,
                cache_dir=None, parallel: bool = True, train_size: int | None = None,
                from_probabilities: bool = False, attack_options: dict | None = None, delta: float = 1e-5,
                alpha: float = 0.05, slices: bool = False) -> dict[str, Summary]:
    """{attack: Summary} of :func:`fedaudit.model_audit.audit`, with its settings given as keywords.

    Deprecated, kept for scripts that call it; new code builds a :class:`fedaudit.model_audit.ModelAuditSettings`
    and calls :func:`fedaudit.model_audit.audit`, which this calls (``attacks`` None: its default attacks).
    ``from_probabilities``: the model outputs probabilities (else logits); ``num_classes`` is checked against the
    model's outputs.
    """
    import warnings

    from fedaudit.model_audit import ModelAuditSettings, audit

    warnings.warn("fedaudit.attacks.audit_model: use fedaudit.model_audit.audit(model, members, nonmembers, "
                  "population, ModelAuditSettings(...)), which it calls", DeprecationWarning, stacklevel=2)
    defaults = ModelAuditSettings()
    attacks = list(defaults.attacks if attacks is None else attacks)
    if not attacks:
        raise ConfigError("attacks: name at least one attack")
    classes = int(model.output_shape[-1])
    if num_classes is not None and int(num_classes) != classes:
        raise AttackError(f"num_classes: model outputs {classes} classes, num_classes is {num_classes}")
    settings = ModelAuditSettings(
        attacks=attacks, reference_models=reference_models, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, optimizer=optimizer, seed=seed, parallel=parallel, delta=delta, alpha=alpha,
        model_name=model_name, model_options=dict(model_options or {}), train_size=train_size,
        cache_dir=None if cache_dir is None else str(cache_dir),
        outputs="probabilities" if from_probabilities else "logits", attack_options=dict(attack_options or {}),
        slices=slices)
    population = None if x_population is None else (x_population, y_population)
    if population is not None and len(np.asarray(y_population)) == 0:
        population = None
    result = audit(model, (x_members, y_members), (x_nonmembers, y_nonmembers), population, settings)
    return result.attacks


__all__ = ["DEFAULT_ATTACKS", "SCORE_SUITE", "AuditData", "audit_model", "prepare_audit", "score_all"]
