"""A compiled training step of our own: much faster than ``model.fit`` on small models.

One :class:`Trainer` is built per model and reused across messages (a client actor keeps one), with
fresh optimizer state at every :meth:`Trainer.fit` call so that one client's moments never leak into
another client's training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import keras

from fedaudit.errors import ConfigError

OPTIMIZERS = {
    "sgd": lambda lr: keras.optimizers.SGD(learning_rate=lr),
    "momentum": lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
    "adam": lambda lr: keras.optimizers.Adam(learning_rate=lr),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(learning_rate=lr),
}


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """A Keras optimizer by name (``sgd``, ``momentum``, ``adam``, ``rmsprop``)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"federation.optimizer: unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](float(learning_rate))


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")


@dataclass
class FitResult:
    loss: float          # mean training loss over the last epoch
    examples: int
    steps: int


class Trainer:
    """Owns a model, an optimizer and one compiled train step; ``fit`` trains on NumPy arrays."""

    def __init__(self, model: keras.Model, optimizer: str = "adam", learning_rate: float = 1e-3):
        self.model = model
        self.optimizer = make_optimizer(optimizer, learning_rate)
        self.optimizer.build(model.trainable_variables)
        self._loss = loss_fn()
        self._anchor = [tf.Variable(tf.zeros_like(v), trainable=False) for v in model.trainable_variables]
        self._mu = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        spec_x = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        spec_y = tf.TensorSpec((None,), tf.int64)
        self._step = tf.function(self._train_step, input_signature=[spec_x, spec_y])
        self._evaluate = tf.function(self._eval_step, input_signature=[spec_x, spec_y])

    def _train_step(self, x, y):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss = tf.reduce_mean(self._loss(y, logits))
            prox = tf.add_n([tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, self._anchor)])
            total = loss + 0.5 * self._mu * prox
        grads = tape.gradient(total, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return loss

    def _eval_step(self, x, y):
        logits = self.model(x, training=False)
        losses = self._loss(y, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1), y), tf.float32)
        return tf.reduce_sum(losses), tf.reduce_sum(correct)

    def reset_optimizer(self) -> None:
        """Zero the optimizer's slots and step count; keep its learning rate."""
        lr = self.optimizer.learning_rate
        for var in self.optimizer.variables:
            if var is lr or getattr(var, "path", "").endswith("learning_rate"):
                continue
            var.assign(tf.zeros_like(var))

    def set_weights(self, weights) -> None:
        self.model.set_weights(weights)

    def get_weights(self) -> list[np.ndarray]:
        return [np.asarray(w) for w in self.model.get_weights()]

    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
            rng: np.random.Generator, proximal_mu: float = 0.0) -> FitResult:
        """Train for ``epochs`` passes over (x, y) in shuffled mini-batches, from fresh optimizer state.

        ``proximal_mu`` > 0 adds FedProx's term mu/2 * ||w - w_start||^2 anchored at the starting weights.
        """
        self.reset_optimizer()
        self._mu.assign(float(proximal_mu))
        if proximal_mu:
            for a, v in zip(self._anchor, self.model.trainable_variables):
                a.assign(v)
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        n = len(x)
        steps, last = 0, 0.0
        for _ in range(int(epochs)):
            order = rng.permutation(n)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                total += float(self._step(x[idx], y[idx])) * len(idx)
                steps += 1
            last = total / max(n, 1)
        return FitResult(loss=last, examples=n, steps=steps)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
        """Mean loss and accuracy on (x, y)."""
        return evaluate_with(self._evaluate, x, y, batch_size)


def evaluate_with(step, x, y, batch_size=1024) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    loss_sum = correct = 0.0
    for start in range(0, len(x), batch_size):
        l, c = step(x[start:start + batch_size], y[start:start + batch_size])
        loss_sum += float(l)
        correct += float(c)
    n = max(len(x), 1)
    return loss_sum / n, correct / n


def train_model(model: keras.Model, x, y, *, epochs: int, batch_size: int = 64, learning_rate: float = 1e-3,
                optimizer: str = "adam", seed: int = 0) -> FitResult:
    """Train ``model`` in place on (x, y) with the compiled step (targets, reference models, shadow models)."""
    trainer = Trainer(model, optimizer, learning_rate)
    return trainer.fit(x, y, epochs=epochs, batch_size=batch_size, rng=np.random.default_rng(seed))
