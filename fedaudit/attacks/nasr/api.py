"""ML Privacy Meter's ``meminf`` API: :class:`WhiteBoxAttack` with ``train_attack()`` and ``test_attack()``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from fedaudit.attacks.threshold import THRESHOLD_ATTACKS
from fedaudit.attacks.nasr.features import WhiteboxFeatures, whitebox_features
from fedaudit.attacks.nasr.stacking import STACKS, StackedAttack
from fedaudit.attacks.nasr.stacking import stack as stack_attack
from fedaudit.attacks.nasr.training import ATTACK_OPTIMIZERS, FittedAttack, fit_attack
from fedaudit.errors import AttackError
from fedaudit.signals.extract import check_model, check_records
from fedaudit.signals.layers import kernel_of, resolve_gradient_layers, resolve_output_layers

log = logging.getLogger(__name__)


@dataclass
class AttackResult:
    """What :meth:`WhiteBoxAttack.test_attack` measured on records the attack did not train on."""

    auc: float
    tpr_at_1pct: float
    tpr_at_0_1pct: float
    accuracy: float                      # balanced attack accuracy at the best threshold
    summary: object                      # fedaudit.metrics.Summary of the attack
    member_probs: np.ndarray
    nonmember_probs: np.ndarray
    baselines: dict = field(default_factory=dict)   # threshold attacks on the same records: name -> Summary
    log_dir: Path | None = None
    files: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"auc": self.auc, "tpr_at_1pct": _finite(self.tpr_at_1pct), "tpr_at_0_1pct": _finite(self.tpr_at_0_1pct),
                "accuracy": self.accuracy, "n_members": int(len(self.member_probs)),
                "n_nonmembers": int(len(self.nonmember_probs)), "summary": self.summary.to_dict(),
                "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "log_dir": str(self.log_dir) if self.log_dir else None}


def _finite(value):
    return None if value is None or not np.isfinite(value) else float(value)


def _output_shape(layer):
    try:
        return tuple(layer.output.shape[1:])
    except (AttributeError, ValueError):  # a layer never called symbolically
        return None


def _check_positive(name: str, value, kind=int):
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer) if kind is int else (int, float, np.number))
    if not ok or not value > 0:
        raise AttackError(f"{name}: must be a positive {'integer' if kind is int else 'number'}; got {value!r}")
    return kind(value)


class WhiteBoxAttack:
    """Nasr et al.'s whitebox membership-inference attack with ML Privacy Meter's ``meminf`` API.

    Args:
        target_train_model: the model whose signals train the attack.
        target_attack_model: the model the trained attack is evaluated on (often the same model).
        train_datahandler: gives the known records (:meth:`fedaudit.data.attack_data.train_split`).
        attack_datahandler: gives the records to evaluate on (``test_split``); records the attack
            trained on are dropped from them.
        device: a TensorFlow device string for the attack ('/GPU:0'), or None.
        optimizer, learning_rate, epochs, batch_size: the attack network's training (``batch_size``
            defaults to the train handler's). Training runs at least ``min_steps`` optimizer steps.
        model_name: names the TensorBoard run.
        layers_to_exploit: 1-based indices into ``model.layers`` (or names) of layers whose outputs the
            attack reads; ``[len(model.layers)]`` alone with no gradients is the black-box attack.
        gradients_to_exploit: 1-based indices among the layers that have a kernel (or names) whose
            kernel gradients the attack reads.
        exploit_loss, exploit_label: whether the attack reads the loss and the one-hot label.
        log_dir: where test_attack writes plots, arrays, ``result.json`` and ``tensorboard/``.
        seed: seeds the validation split, the shuffles and the network's initialisation.
        val_fraction: fraction of the known records held out to choose the epoch.
        size: attack network widths, 'auto' (sized to the data) or 'paper' (2021's widths).
        stack: None (default): the network alone; 'forest': the network stacked with a random forest on the
            softmax vector, the label and compact statistics of the same signals, the mean of their membership
            probabilities; 'boosting': with gradient-boosted trees on the compact statistics, the mean of their
            log-odds (:mod:`fedaudit.attacks.nasr.stacking`).
    """

    def __init__(self, target_train_model, target_attack_model, train_datahandler, attack_datahandler,
                 device=None, optimizer="adam", model_name="sample_model", layers_to_exploit=None,
                 gradients_to_exploit=None, exploit_loss=True, exploit_label=True, learning_rate=0.001,
                 epochs=100, batch_size=None, *, log_dir="logs", seed: int = 0, min_steps: int = 2000,
                 val_fraction: float = 0.2, size="auto", select: str = "loss", patience: int | None = 500,
                 signal_batch_size=None, stack: str | None = None):
        self.num_classes = check_model(target_train_model)
        other = check_model(target_attack_model)
        if other != self.num_classes or tuple(target_attack_model.input_shape) != tuple(target_train_model.input_shape):
            raise AttackError(
                f"target_attack_model: takes {target_attack_model.input_shape} and has {other} outputs, but "
                f"target_train_model takes {target_train_model.input_shape} and has {self.num_classes}; "
                "allowed: two models of the same architecture")
        self.layers_to_exploit = list(layers_to_exploit or [])
        self.gradients_to_exploit = list(gradients_to_exploit or [])
        for model, label in ((target_train_model, "target_train_model"), (target_attack_model, "target_attack_model")):
            outs = resolve_output_layers(model, self.layers_to_exploit, "layers_to_exploit")
            grads = resolve_gradient_layers(model, self.gradients_to_exploit, "gradients_to_exploit")
            shapes = ([_output_shape(r.layer) for r in outs], [tuple(kernel_of(r.layer).shape) for r in grads])
            if label == "target_train_model":
                reference = shapes
            elif shapes != reference:
                raise AttackError("target_attack_model: its exploited layers have other shapes than "
                                  "target_train_model's; allowed: two models of the same architecture")
        if not (self.layers_to_exploit or self.gradients_to_exploit or exploit_loss or exploit_label):
            raise AttackError("attack: nothing to exploit; allowed: at least one of layers_to_exploit, "
                              "gradients_to_exploit, exploit_loss=True, exploit_label=True")
        if optimizer not in ATTACK_OPTIMIZERS:
            raise AttackError(f"optimizer: unknown optimizer {optimizer!r}; allowed: {', '.join(ATTACK_OPTIMIZERS)}")
        for name, handler in (("train_datahandler", train_datahandler), ("attack_datahandler", attack_datahandler)):
            method = "train_split" if name == "train_datahandler" else "test_split"
            if not callable(getattr(handler, method, None)):
                raise AttackError(f"{name}: expected a fedaudit.data.attack_data (with {method}()), got "
                                  f"{type(handler).__name__}")
        self.target_train_model, self.target_attack_model = target_train_model, target_attack_model
        self.train_datahandler, self.attack_datahandler = train_datahandler, attack_datahandler
        self.device, self.optimizer, self.model_name = device, optimizer, str(model_name)
        self.exploit_loss, self.exploit_label = bool(exploit_loss), bool(exploit_label)
        self.learning_rate = _check_positive("learning_rate", learning_rate, float)
        self.epochs = _check_positive("epochs", epochs)
        self.batch_size = _check_positive("batch_size", batch_size if batch_size is not None
                                          else getattr(train_datahandler, "batch_size", 64))
        self.log_dir = Path(log_dir)
        self.seed, self.min_steps, self.val_fraction = int(seed), int(min_steps), float(val_fraction)
        self.size, self.select, self.signal_batch_size, self.patience = size, select, signal_batch_size, patience
        if stack not in STACKS:
            raise AttackError(f"stack: unknown stacking {stack!r}; allowed: {', '.join(map(repr, STACKS))}")
        self.stack = stack
        self.fitted: FittedAttack | None = None
        self.stacked: StackedAttack | None = None
        self.seconds: dict[str, float] = {}
        self._train_hashes: set = set()

    # -- helpers -----------------------------------------------------------------------------------

    def _device(self):
        import contextlib

        return tf.device(self.device) if self.device else contextlib.nullcontext()

    def features(self, model, x, y, source: str) -> WhiteboxFeatures:
        """The attack's inputs for ``model`` on (x, y), with this attack's configuration."""
        check_records(model, x, y, self.num_classes, source)
        with self._device():
            return whitebox_features(model, x, y, layers=self.layers_to_exploit, gradients=self.gradients_to_exploit,
                                     exploit_loss=self.exploit_loss, exploit_label=self.exploit_label,
                                     batch_size=self.signal_batch_size, layers_option="layers_to_exploit",
                                     gradients_option="gradients_to_exploit")

    # -- ML Privacy Meter's two calls -------------------------------------------------------------------

    def train_attack(self) -> dict:
        """Compute the known records' signals once and train the attack network on them."""
        from fedaudit.data.handler import record_hashes

        split = self.train_datahandler.train_split()
        t0 = time.perf_counter()
        feats = self.features(self.target_train_model, split.x, split.y, "train_datahandler")
        self.seconds["train_signals"] = time.perf_counter() - t0
        with self._device():
            self.fitted = fit_attack(feats, split.membership, epochs=self.epochs, batch_size=self.batch_size,
                                     learning_rate=self.learning_rate, seed=self.seed, val_fraction=self.val_fraction,
                                     min_steps=self.min_steps, patience=self.patience, optimizer=self.optimizer,
                                     size=self.size,
                                     select=self.select, log_dir=self.log_dir / "tensorboard", run_name=self.model_name)
        self.seconds["train_fit"] = self.fitted.seconds
        if self.stack is not None:
            t0 = time.perf_counter()
            self.stacked = stack_attack(self.fitted, feats, split.membership, seed=self.seed, kind=self.stack)
            self.seconds["train_stack"] = time.perf_counter() - t0
        self._train_hashes = set(record_hashes(split.x, split.y).tolist())
        best = self.fitted.history[self.fitted.best_epoch - 1]
        log.info("attack trained: %d known records, %d parameters, %d steps, best epoch %d (validation AUC %.3f)",
                 len(split), self.fitted.parameters, self.fitted.steps, self.fitted.best_epoch, best.get("val_auc", np.nan))
        out = {"known_records": len(split), "parameters": self.fitted.parameters, "steps": self.fitted.steps,
               "best_epoch": self.fitted.best_epoch, **{k: v for k, v in best.items() if k.startswith("val_")}}
        if self.stacked is not None:
            out["stack_validation"] = dict(self.stacked.validation)
        return out

    def predict(self, features: WhiteboxFeatures) -> np.ndarray:
        """Membership probability of each record of ``features`` (the stacked attack where there is one)."""
        if self.fitted is None:
            raise AttackError("predict: the attack is not trained; call train_attack() first")
        return (self.stacked or self.fitted).predict(features)

    def test_attack(self, log_dir=None) -> AttackResult:
        """Score the attack on records it did not train on; write plots and arrays to ``log_dir``."""
        from fedaudit.data.handler import AttackSplit, record_hashes
        from fedaudit.metrics import summarize
        from fedaudit import plots
        from fedaudit.rundir import atomic_save_npy, atomic_write_text, json_safe

        if self.fitted is None:
            raise AttackError("test_attack: the attack is not trained; call train_attack() first")
        out_dir = Path(log_dir) if log_dir is not None else self.log_dir
        split = self.attack_datahandler.test_split()
        keep = np.array([h not in self._train_hashes for h in record_hashes(split.x, split.y)], dtype=bool)
        if not keep.all():
            log.warning("dropped %d evaluation records that the attack trained on", int((~keep).sum()))
            nm = len(split.members_y)
            split = AttackSplit(split.members_x[keep[:nm]], split.members_y[keep[:nm]],
                                split.nonmembers_x[keep[nm:]], split.nonmembers_y[keep[nm:]])
        if not len(split.members_y) or not len(split.nonmembers_y):
            raise AttackError("attack_datahandler: no held-out members or non-members are left that the attack "
                              "did not train on; allowed: handlers whose test records differ from the training ones")
        t0 = time.perf_counter()
        feats = self.features(self.target_attack_model, split.x, split.y, "attack_datahandler")
        t1 = time.perf_counter()
        probs = self.predict(feats)
        t2 = time.perf_counter()
        self.seconds.update(test_signals=t1 - t0, test_scoring=t2 - t1)
        member = split.membership == 1
        mp, nmp = probs[member], probs[~member]
        summary = summarize(mp, nmp)
        baselines = {name: summarize(s[member], s[~member])
                     for name, fn in THRESHOLD_ATTACKS.items() for s in [fn(feats.logits, feats.labels)]}
        plot_dir = out_dir / "plots"
        plot_dir.mkdir(parents=True, exist_ok=True)
        ml, nml = split.members_y, split.nonmembers_y
        files = [
            plots.plot_probability_histogram(mp, nmp, plot_dir / "privacy_risk.png", title="Privacy risk"),
            plots.plot_roc({"whitebox attack" if self.gradients_to_exploit else "attack": summary,
                            "loss threshold": baselines["loss"]}, plot_dir / "roc.png"),
            plots.plot_roc({"attack": summary, "loss threshold": baselines["loss"]}, plot_dir / "roc_log.png", log=True),
            plots.plot_gradient_norms(ml, feats.gradient_norm[member], nml, feats.gradient_norm[~member],
                                      plot_dir / "gradient_norm.png"),
            *plots.plot_per_label_histograms(mp, ml, nmp, nml, plot_dir),
        ]
        arrays = {"member_probs.npy": mp.astype(np.float32)[:, None], "nonmember_probs.npy": nmp.astype(np.float32)[:, None],
                  "m_features.npy": split.members_x, "m_labels.npy": ml, "nm_features.npy": split.nonmembers_x,
                  "nm_labels.npy": nml}
        files += [atomic_save_npy(out_dir / name, value) for name, value in arrays.items()]
        self.seconds["outputs"] = time.perf_counter() - t2
        result = AttackResult(summary.auc, summary.tpr_at_1pct, summary.tpr_at_0_1pct, summary.accuracy, summary,
                              mp, nmp, baselines, out_dir, [str(f) for f in files], dict(self.seconds))
        data = {"model_name": self.model_name, "layers_to_exploit": self.layers_to_exploit,
                "gradients_to_exploit": self.gradients_to_exploit, "exploit_loss": self.exploit_loss,
                "exploit_label": self.exploit_label, "attack_parameters": self.fitted.parameters,
                "attack_steps": self.fitted.steps, "best_epoch": self.fitted.best_epoch, "stack": self.stack,
                "stack_validation": None if self.stacked is None else self.stacked.validation, **result.to_dict()}
        files.append(atomic_write_text(out_dir / "result.json", json.dumps(json_safe(data), indent=2) + "\n"))
        result.files = [str(f) for f in files]
        log.info("attack on %d members / %d non-members it did not train on: AUC %.3f, TPR %.3f at 1%% FPR "
                 "(loss threshold AUC %.3f)", len(mp), len(nmp), summary.auc, summary.tpr_at_1pct, baselines["loss"].auc)
        return result
