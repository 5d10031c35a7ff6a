"""Adversaries that deviate from the protocol: what they do to the models they send or the updates they return.

Nasr, Shokri and Houmansadr ("Comprehensive Privacy Analysis of Deep Learning", IEEE S&P 2019, section V) define,
for federated learning:

- the **active global attacker** (``active-server``): before sending the global model, the server runs gradient
  *ascent* on a set of target records. A member's owner then pulls its loss down sharply in local training (the
  record is in its data), while a non-member's loss stays up: the drop, read from each client's reply, separates
  them better than a passive server's view;
- the **isolating global attacker** (``isolating-server``): the server sends a target client a model updated only
  with that client's own replies, so that the client's model overfits its own data, round after round;
- the **active local attacker** (``active-participant``): one client runs gradient ascent on the target records in
  its own update; the owners of the members pull their losses back down, which the next global models show.

Pasquini, Francati and Ateniese ("Eluding Secure Aggregation in Federated Learning via Model Inconsistency", CCS
2022) show that a server that sends different models to different clients recovers one client's update through
secure aggregation: every other client gets a model whose training changes (almost) nothing it does not know
(:func:`inert_weights`), so the unmasked sum is the target's model plus what the server chose
(:func:`recover_target`).

This module holds the manipulations themselves (NumPy, and TensorFlow for the gradient ascent); the strategies
and clients apply them (:mod:`fedaudit.federation.strategy`, :mod:`fedaudit.federation.secagg`,
:mod:`fedaudit.federation.task`), and :mod:`fedaudit.auditor.active` attacks what they produce.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

ACTIVE_SERVER = "active-server"
ISOLATING_SERVER = "isolating-server"
ACTIVE_PARTICIPANT = "active-participant"
ACTIVE_KINDS = (ACTIVE_SERVER, ISOLATING_SERVER, ACTIVE_PARTICIPANT)


@dataclass
class ActivePlan:
    """What one deviating adversary does in its run (small enough to ship to the ServerApp and every client).

    ``targets``: positions in the dataset of the target records (members and non-members); ``isolated``: the clients
    the isolating server keeps apart; ``participant``: the active participant; ``inconsistent_target``: under secure
    aggregation, the client whose update the active server recovers by model inconsistency (None: not under SecAgg).
    """

    kind: str
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ascent_steps: int = 5
    ascent_lr: float = 0.05
    start_round: int = 1
    isolated: list = field(default_factory=list)
    participant: int | None = None
    inconsistent_target: int | None = None

    def active_in(self, round_: int) -> bool:
        return int(round_) >= int(self.start_round)


# ---- gradient ascent ------------------------------------------------------------------------------------------

class Ascent:
    """Gradient ascent on the mean loss of target records, for one model architecture (built once, reused)."""

    def __init__(self, model_name: str, model_options: dict, input_shape, num_classes: int, seed: int = 0):
        import tensorflow as tf

        from fedaudit.models import build_model
        from fedaudit.models.training import loss_fn

        self.model = build_model(model_name, tuple(input_shape), int(num_classes), seed=seed, **dict(model_options))
        loss = loss_fn()
        variables = self.model.trainable_variables

        @tf.function(reduce_retracing=True)
        def step(x, y, lr):
            with tf.GradientTape() as tape:
                value = tf.reduce_mean(loss(y, self.model(x, training=False)))
            grads = tape.gradient(value, variables)
            for v, g in zip(variables, grads):
                if g is not None:
                    v.assign_add(lr * g)       # ascent: up the loss
            return value

        self._step = step

    def __call__(self, weights: list, x: np.ndarray, y: np.ndarray, steps: int, lr: float) -> tuple[list, list]:
        """(the weights after ``steps`` steps of gradient ascent on (x, y) at ``lr``, the mean loss before each
        step and after the last)."""
        import tensorflow as tf

        self.model.set_weights(weights)
        x = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
        y = tf.convert_to_tensor(np.asarray(y, dtype=np.int64))
        lr = tf.constant(float(lr), tf.float32)
        losses = [float(self._step(x, y, lr)) for _ in range(int(steps))]
        out = [np.asarray(w) for w in self.model.get_weights()]
        self.model.set_weights(out)
        from fedaudit.models.training import loss_fn

        losses.append(float(tf.reduce_mean(loss_fn()(y, self.model(x, training=False)))))
        return out, losses


# ---- model inconsistency under secure aggregation -----------------------------------------------------------

def inert_weights(weights: list) -> list:
    """A model whose local training changes nothing but its output bias: every array zero except the last (the
    output layer's bias, kept). With every kernel and hidden bias at zero, each hidden unit outputs the activation
    of zero (0 for ReLU and tanh), so every kernel's gradient is zero (its input is zero) and every earlier layer's
    gradient is zero (the later kernel is zero); only the output bias moves, towards the client's label mix.
    """
    if not weights:
        return []
    return [np.zeros_like(np.asarray(w)) for w in weights[:-1]] + [np.array(weights[-1], copy=True)]


def recover_target(aggregate: list, weights: dict, target: int, others_sent: list) -> list:
    """The target client's returned model from the weighted mean ``aggregate`` = sum_k w_k theta_k / sum_k w_k, when
    every other client was sent ``others_sent`` and (by :func:`inert_weights`) returned it unchanged except for its
    output bias. ``weights``: {client: w_k} (each client's example count, reported in plain text with its metrics).
    Exact on every array but the last; the output bias carries the other clients' bias updates."""
    total = float(sum(weights.values()))
    w_t = float(weights[target])
    rest = total - w_t
    return [(np.asarray(a, dtype=np.float64) * total - np.asarray(s, dtype=np.float64) * rest) / w_t
            for a, s in zip(aggregate, others_sent)]


def flat(weights: list) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights]) if weights else np.zeros(0)


def cosine(a: list, b: list) -> float:
    """Cosine between two models' flattened weights (or updates)."""
    x, y = flat(a), flat(b)
    den = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / den) if den > 0 else float("nan")


def norm(weights: list) -> float:
    return float(np.linalg.norm(flat(weights)))


def update(new: list, old: list) -> list:
    return [np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) for a, b in zip(new, old)]


__all__ = ["ACTIVE_KINDS", "ACTIVE_PARTICIPANT", "ACTIVE_SERVER", "ISOLATING_SERVER", "ActivePlan", "Ascent", "cosine",
           "flat", "inert_weights", "norm", "recover_target", "update"]
