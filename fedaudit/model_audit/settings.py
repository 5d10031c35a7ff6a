"""The single-model audit's settings: which attacks, how the adversary is cross-fitted, the reference models."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedaudit.errors import ConfigError

DEFAULT_ATTACKS = ("whitebox", "blackbox", "loss")     # [audit] attacks' default
#: how the audited model's outputs become logits
OUTPUTS = ("auto", "logits", "probabilities")


@dataclass
class ModelAuditSettings:
    """The audit's choices, as in ``[audit]`` (attacks, reference_models, attack_fraction, folds), and the
    reference models': their architecture (``model_name``, a registered model, and ``model_options``; None:
    the audited model's own, saved for the audit) and training recipe (match how the target was trained).

    ``outputs``: ``auto`` (a final softmax is removed, the model's own logits are read), ``logits`` (the model
    outputs logits) or ``probabilities`` (logits are the log of its clipped outputs). ``attack_options``:
    {attack: {option: value}} for the score attacks that read reference models or a population file.
    ``slices``: per-class, per-loss-decile and by-correctness metrics in every summary.
    """

    attacks: list = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    reference_models: int = 0
    attack_fraction: float = 0.5
    folds: int = 5
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    parallel: bool = False
    delta: float = 1e-5
    alpha: float = 0.05
    model_name: str | None = None
    model_options: dict = field(default_factory=dict)
    train_size: int | None = None
    cache_dir: str | None = None
    outputs: str = "auto"
    attack_options: dict = field(default_factory=dict)
    slices: bool = False

    def check(self) -> "ModelAuditSettings":
        from fedaudit.attacks.base import attack_spec
        from fedaudit.config import OPTIMIZERS, attack_names

        if not self.attacks:
            raise ConfigError("--attacks: name at least one attack")
        allowed = attack_names()
        for a in self.attacks:
            if a not in allowed:
                raise ConfigError(f"--attacks: unknown attack {a!r}; allowed: {', '.join(allowed)}")
        self.attacks = list(dict.fromkeys(self.attacks))
        needs = [a for a in self.attacks if attack_spec(a).uses_reference_models or attack_spec(a).needs_null]
        online = [a for a in needs if attack_spec(a).online]
        if needs and self.reference_models < 1:
            raise ConfigError(f"--reference-models: attacks {', '.join(needs)} need reference models; allowed: "
                              "--reference-models N with N >= 1 (N >= 2 for the online attacks)")
        if online and self.reference_models < 2:
            raise ConfigError(f"--reference-models: online attacks {', '.join(online)} need at least 2 reference "
                              f"models (each record IN for half of them), got {self.reference_models}")
        if not 0 < self.attack_fraction < 1:
            raise ConfigError(f"--attack-fraction: must be in (0, 1), got {self.attack_fraction}")
        for name, value, low in (("--folds", self.folds, 2), ("--epochs", self.epochs, 1),
                                 ("--batch-size", self.batch_size, 1), ("--reference-models", self.reference_models, 0),
                                 ("--seed", self.seed, 0)):
            if value < low:
                raise ConfigError(f"{name}: must be at least {low}, got {value}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate: must be positive, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer: unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.outputs not in OUTPUTS:
            raise ConfigError(f"outputs: unknown {self.outputs!r}; allowed: {', '.join(OUTPUTS)}")
        unknown = sorted(set(self.attack_options) - set(self.attacks))
        if unknown:
            raise ConfigError(f"attack_options: options for attacks not audited: {', '.join(unknown)}; allowed: "
                              f"{', '.join(self.attacks)}")
        return self

    def reference_training(self) -> dict:
        """The reference models' training recipe, as :func:`fedaudit.attacks.audit.prepare_audit` takes it."""
        return dict(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                    optimizer=self.optimizer, seed=self.seed, cache_dir=self.cache_dir, parallel=self.parallel,
                    train_size=self.train_size)

    @property
    def reference_attacks(self) -> list:
        """The attacks that read reference models (FedMIA's null models are the offline ones here)."""
        from fedaudit.attacks.base import attack_spec

        return [a for a in self.attacks if attack_spec(a).uses_reference_models or attack_spec(a).needs_null]
