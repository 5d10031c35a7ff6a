"""Training the attack network on known records (a traced training step, a selection callback); scoring with it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fedaudit.attacks.nasr.features import WhiteboxFeatures
from fedaudit.attacks.nasr.network import build_attack_network
from fedaudit.attacks.nasr.preprocess import Preprocessor
from fedaudit.errors import AttackError


@dataclass
class FittedAttack:
    """A trained attack network with the preprocessing fitted on its training split, and the temperature that
    calibrates its log-odds (:func:`calibrate_temperature`, on the validation split; 1 without one)."""

    network: keras.Model
    preprocessor: Preprocessor
    history: list[dict]
    best_epoch: int
    steps: int
    train_index: np.ndarray
    val_index: np.ndarray
    seconds: float = 0.0
    temperature: float = 1.0
    _predict_fn: object = field(default=None, repr=False)

    def log_odds(self, features: WhiteboxFeatures, batch_size: int = 1024) -> np.ndarray:
        """The calibrated log-odds of membership of each record (the network's output over the temperature),
        shape (n,), float64."""
        if [(c.kind, c.shape) for c in features.components] != [(c.kind, c.shape) for c in self.preprocessor.components]:
            raise AttackError("predict: these features were extracted with other layers or gradients than the "
                              "attack was trained on; extract them with the same configuration")
        inputs = self.preprocessor.transform(features)
        if self._predict_fn is None:
            net = self.network
            self._predict_fn = tf.function(lambda *xs: net(list(xs), training=False)[:, 0],
                                           reduce_retracing=True, autograph=False)
        out = [self._predict_fn(*[tf.constant(x[s:s + batch_size]) for x in inputs]).numpy()
               for s in range(0, len(features), batch_size)]
        return np.concatenate(out).astype(np.float64) / self.temperature if out else np.zeros(0)

    def predict(self, features: WhiteboxFeatures, batch_size: int = 1024) -> np.ndarray:
        """Membership probability of each record, shape (n,): the sigmoid of :meth:`log_odds`."""
        from scipy.special import expit

        return expit(self.log_odds(features, batch_size))

    @property
    def parameters(self) -> int:
        return int(self.network.count_params())


#: the attack network's optimizers. Adam's and RMSprop's epsilon is 1e-10, not Keras' 1e-7: with N(0, 0.01)
#: weights the first layers' gradients start far below 1e-7, where a 1e-7 epsilon shrinks their steps so much
#: that the network can sit on its initial plateau (or its ReLUs die) for thousands of steps at lr 1e-4.
ATTACK_OPTIMIZERS = {
    "adam": lambda lr: keras.optimizers.Adam(learning_rate=lr, epsilon=1e-10),
    "sgd": lambda lr: keras.optimizers.SGD(learning_rate=lr),
    "momentum": lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(learning_rate=lr, epsilon=1e-10),
}


def write_tensorboard(history: list[dict], directory) -> Path:
    """The attack's training curves as TensorBoard scalars (``attack/train_loss``, ``attack/val_loss``,
    ``attack/val_auc``, ``attack/val_accuracy``; step = epoch) in one event file under ``directory``."""
    from fedaudit.scalars import write_scalars

    steps = [(int(record["epoch"]), {f"attack/{k}": float(v) for k, v in record.items() if k not in ("epoch", "steps")})
             for record in history]
    return write_scalars(directory, steps, kind="whitebox", replace=False)


def _split_known(membership: np.ndarray, val_fraction: float, rng: np.random.Generator):
    train, val = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(membership == cls))
        n_val = int(round(val_fraction * len(idx)))
        if val_fraction > 0:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


#: the temperatures :func:`calibrate_temperature` chooses from (bounds)
TEMPERATURE_RANGE = (0.05, 50.0)


def calibrate_temperature(logit: np.ndarray, member: np.ndarray, min_per_class: int = 5) -> float:
    """Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017): the T in
    :data:`TEMPERATURE_RANGE` that minimises the balanced binary cross-entropy of ``sigmoid(logit / T)`` on held-out
    records of known membership; 1 with fewer than ``min_per_class`` members or non-members among them.

    A network fitted to a few hundred records comes out over- or under-confident by a factor that differs from
    target to target (0.8 to 1.6 on the tutorial-shaped targets of ``fedaudit bench attacks --peer art``): its
    membership probabilities are then not probabilities, and its scores on two targets are not on one scale. T
    changes no record's rank within a target."""
    from scipy.optimize import minimize_scalar

    logit, member = np.asarray(logit, np.float64), np.asarray(member).astype(bool)
    if min(member.sum(), (~member).sum()) < min_per_class:
        return 1.0
    w = np.where(member, 0.5 / member.mean(), 0.5 / (1 - member.mean()))

    def loss(log_t: float) -> float:
        z = logit / np.exp(log_t)
        return float(np.mean(w * (np.logaddexp(0, z) - member * z)))

    low, high = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(loss, bounds=(low, high), method="bounded").x))


def _auc(member, nonmember) -> float:
    from fedaudit.metrics import auc

    return auc(member, nonmember) if len(member) and len(nonmember) else float("nan")



def _train_step(net: keras.Model, optimizer, xs: list, y: np.ndarray, weights: np.ndarray):
    """One optimizer step on the minibatch of rows ``idx`` of the training inputs ``xs``, targets ``y`` and sample
    weights (kept as constants; binary cross-entropy, weighted) as one traced function, traced once for every batch
    size (an epoch's last batch may be smaller), without autograph. ``Model.fit`` with ``steps_per_execution``
    traced a while loop with autograph instead, which cost more than the training itself (53 s of a 114 s fit on a
    loaded 2-core machine, against 32 s of steps)."""
    consts, targets, sample = [tf.constant(x) for x in xs], tf.constant(y[:, None]), tf.constant(weights)
    variables = net.trainable_variables
    bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)

    def step(idx):
        batch = [tf.gather(x, idx) for x in consts]
        with tf.GradientTape() as tape:
            logit = net(batch, training=True)
            loss = tf.reduce_mean(tf.gather(sample, idx) * bce(tf.gather(targets, idx), logit))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return tf.function(step, input_signature=[tf.TensorSpec((None,), tf.int64)], autograph=False)


class _Selection(keras.callbacks.Callback):
    """After every epoch: the validation loss (classes weighted to balance), AUC and accuracy; keeps the best
    epoch's weights (lowest validation loss, or highest AUC with ``select="auc"``; the training loss without a
    validation split) and stops training once the best epoch lies ``patience`` steps back, after at least
    ``epochs`` passes and once the validation loss has left its initial plateau."""

    def __init__(self, x_val, y_val, *, select: str, epochs: int, patience, steps_per_epoch: int, on_epoch=None):
        super().__init__()
        self.x_val, self.y_val, self.select, self.epochs = x_val, y_val, select, epochs
        self.patience, self.steps_per_epoch, self.on_epoch = patience, steps_per_epoch, on_epoch
        self.history: list[dict] = []
        self.best, self.best_weights, self.best_epoch, self.armed = None, None, 0, False
        self._predict = None

    def on_train_begin(self, logs=None):
        self.best_weights = self.model.get_weights()
        if self.x_val is not None:
            net = self.model
            specs = [tf.TensorSpec((None, *x.shape[1:]), tf.float32) for x in self.x_val]
            self._predict = tf.function(lambda inputs: net(list(inputs), training=False)[:, 0],
                                        input_signature=[specs], autograph=False)

    def val_logits(self) -> np.ndarray:
        """The network's logits on the validation split, float64."""
        return np.concatenate([self._predict([x[s:s + 4096] for x in self.x_val]).numpy()
                               for s in range(0, len(self.y_val), 4096)]).astype(np.float64)

    def on_epoch_end(self, epoch, logs=None):
        epoch += 1
        record = {"epoch": epoch, "steps": epoch * self.steps_per_epoch, "train_loss": float(logs["loss"])}
        y_val = self.y_val
        if self.x_val is not None:
            logit = self.val_logits()
            prob = 1 / (1 + np.exp(-logit))
            vw = np.where(y_val == 1, 0.5 / y_val.mean(), 0.5 / (1 - y_val.mean()))
            bce = np.logaddexp(0, logit) - y_val * logit
            record.update(val_loss=float(np.mean(vw * bce)), val_auc=_auc(prob[y_val == 1], prob[y_val == 0]),
                          val_accuracy=float(np.mean((prob > 0.5) == (y_val == 1))))
            score = record["val_loss"] if self.select == "loss" else -record["val_auc"]
        else:
            score = record["train_loss"]
        if self.best is None or score < self.best:
            self.best, self.best_weights, self.best_epoch = score, self.model.get_weights(), epoch
        self.history.append(record)
        if self.on_epoch is not None:
            self.on_epoch(record, self.model)
        if self.x_val is not None and not self.armed:  # N(0, 0.01) weights sit on a plateau first: wait it out
            self.armed = record["val_loss"] < 0.98 * self.history[0]["val_loss"]
        if (self.patience is not None and self.armed and epoch >= self.epochs
                and (epoch - self.best_epoch) * self.steps_per_epoch >= self.patience):
            self.model.stop_training = True


def fit_attack(features: WhiteboxFeatures, membership, *, epochs: int = 100, batch_size: int = 64,
               learning_rate: float = 1e-3, seed: int = 0, val_fraction: float = 0.2, min_steps: int = 2000,
               patience: int | None = 500, optimizer: str = "adam", size="auto", select: str = "loss",
               log_dir=None, run_name: str = "attack", on_epoch=None) -> FittedAttack:
    """Train the attack network on known records: ``membership[i]`` is 1 for a member, 0 otherwise.

    A stratified ``val_fraction`` of the known records is held out; after every epoch the network is
    scored on it and the weights of the best epoch (lowest validation loss, or highest validation AUC
    with ``select="auc"``) are kept. Training runs ``epochs`` passes, or more to reach ``min_steps``
    optimizer steps, but stops early, after at least ``epochs`` passes, once the best epoch lies
    ``patience`` steps back (None: never) and the validation loss has left its initial plateau (fallen
    2% below its first value; N(0, 0.01) weights learn nothing for a while at small learning rates). Binary
    cross-entropy, classes weighted to balance. The kept network's log-odds are then calibrated by a temperature
    fitted on the validation split (:func:`calibrate_temperature`). With ``log_dir``, TensorBoard scalars of
    every epoch (train loss, validation loss/AUC/accuracy) go to an event file in ``log_dir/run_name`` (see
    :func:`write_tensorboard`). ``on_epoch(record, network)``, if given, is called after every epoch (progress
    reporting).
    """
    membership = np.asarray(membership).astype(np.int64).ravel()
    if len(membership) != len(features):
        raise AttackError(f"membership: {len(membership)} labels for {len(features)} records; need one per record")
    if not set(np.unique(membership)) <= {0, 1} or len(np.unique(membership)) < 2:
        raise AttackError("membership: need both members (1) and non-members (0) among the known records")
    checks = [("epochs", epochs, 1), ("batch_size", batch_size, 1), ("min_steps", min_steps, 0)]
    if patience is not None:
        checks.append(("patience", patience, 1))
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise AttackError(f"{name}: must be an integer >= {low}; got {value!r}")
    if not 0 <= val_fraction < 1:
        raise AttackError(f"val_fraction: must be in [0, 1); got {val_fraction!r}")
    if select not in ("loss", "auc"):
        raise AttackError(f"select: must be 'loss' or 'auc'; got {select!r}")
    if optimizer not in ATTACK_OPTIMIZERS:
        raise AttackError(f"optimizer: unknown optimizer {optimizer!r}; allowed: {', '.join(ATTACK_OPTIMIZERS)}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _split_known(membership, val_fraction, rng)
    train_f = features.subset(train_idx)
    prep = Preprocessor(features.components).fit(train_f)
    x_train = prep.transform(train_f)
    y_train = membership[train_idx].astype(np.float32)
    x_val = prep.transform(features.subset(val_idx)) if len(val_idx) else None
    y_val = membership[val_idx]
    frac = y_train.mean()
    weights = np.where(y_train == 1, 0.5 / frac, 0.5 / (1 - frac)).astype(np.float32)

    n = len(y_train)
    batch = min(int(batch_size), n)
    steps_per_epoch = math.ceil(n / batch)
    net = build_attack_network(features.components, seed=seed, size=size)
    opt = ATTACK_OPTIMIZERS[optimizer](float(learning_rate))
    opt.build(net.trainable_variables)
    step = _train_step(net, opt, x_train, y_train, weights)
    total_epochs = max(int(epochs), math.ceil(min_steps / steps_per_epoch))
    orders = np.stack([rng.permutation(n) for _ in range(total_epochs)])
    selection = _Selection(x_val, y_val, select=select, epochs=int(epochs), patience=patience,
                           steps_per_epoch=steps_per_epoch, on_epoch=on_epoch)
    selection.set_model(net)
    selection.on_train_begin()
    net.stop_training = False
    sizes = np.diff(np.r_[0:n:batch, n])      # the epoch's loss: the batches' mean, weighted by their sizes
    for epoch, order in enumerate(orders):
        losses = [float(step(tf.constant(idx))) for idx in np.array_split(order, range(batch, n, batch))]
        selection.on_epoch_end(epoch, {"loss": float(np.average(losses, weights=sizes))})
        if net.stop_training:
            break
    history, best_epoch = selection.history, selection.best_epoch
    steps = history[-1]["steps"] if history else 0
    if log_dir is not None:
        write_tensorboard(history, Path(log_dir) / run_name)
    net.set_weights(selection.best_weights)
    temperature = calibrate_temperature(selection.val_logits(), y_val == 1) if x_val is not None else 1.0
    return FittedAttack(net, prep, history, best_epoch, steps, train_idx, val_idx,
                        seconds=time.perf_counter() - started, temperature=temperature)

