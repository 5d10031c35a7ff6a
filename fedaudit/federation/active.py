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




# ---- the plan of a deviating adversary's run --------------------------------------------------------------------

def plan_for(scenario, dataset, ledger) -> ActivePlan | None:
    """The plan of the scenario's deviating adversary (None: the scenario is not a deviating adversary's own run).

    The target records are those the auditor scores them on (:func:`fedaudit.auditor.records.active_targets`, from the
    same seed); the clients it singles out are the configured ones, else drawn from the seed."""
    from fedaudit.auditor.records import active_targets, scenario_records
    from fedaudit.twins import chosen_clients, is_twin

    if not scenario.audit.enabled or not is_twin(scenario):
        return None
    kind = scenario.audit.threat_models[0]
    a, f = scenario.audit.active, scenario.federation
    records = scenario_records(scenario, ledger.owner, dataset.y, ledger.num_clients)
    targets = records.index[active_targets(records, a.targets, f.seed)]
    chosen = chosen_clients(scenario)
    plan = ActivePlan(kind=kind, targets=np.asarray(targets, dtype=np.int64), ascent_steps=a.ascent_steps,
                      ascent_lr=a.ascent_lr, start_round=a.start_round)
    if kind == ISOLATING_SERVER:
        plan.isolated = [chosen["isolated_client"]]
    elif kind == ACTIVE_PARTICIPANT:
        plan.participant = chosen["participant"]
    elif kind == ACTIVE_SERVER and f.secure_aggregation:
        plan.inconsistent_target = chosen["inconsistent_client"]
    log.info("deviating adversary %s: %d target records%s", kind, targets.size,
             f", client {plan.isolated or plan.participant or plan.inconsistent_target}"
             if kind != ACTIVE_SERVER or f.secure_aggregation else "")
    return plan


_ASCENTS: dict = {}


def ascent_for(model_name: str, model_options: dict, input_shape, num_classes: int) -> Ascent:
    """One :class:`Ascent` per architecture and process (building and tracing it costs about a second)."""
    key = (model_name, repr(sorted(dict(model_options).items())), tuple(input_shape), int(num_classes))
    if key not in _ASCENTS:
        _ASCENTS.clear()
        _ASCENTS[key] = Ascent(model_name, model_options, input_shape, num_classes)
    return _ASCENTS[key]



# ---- what a deviating server does to a round ---------------------------------------------------------------------

class ServerMoves:
    """A deviating server's moves in a round of :class:`fedaudit.federation.strategy.AuditedStrategy`.

    ``active-server``: the model sent out is the honest global model after gradient ascent on the target records;
    ``isolating-server``: the isolated client is sent the model the server keeps for it alone (its own last reply),
    and its replies stay out of the global aggregate. Each round's :class:`RoundUpdate` then holds, as ``previous``,
    what the audited client(s) received, and as ``honest`` what the server would have sent.
    """

    def __init__(self, plan: ActivePlan, ascent: Ascent | None = None, x=None, y=None):
        self.plan = plan
        self.ascent = ascent
        self.x = None if x is None else np.asarray(x)[plan.targets]
        self.y = None if y is None else np.asarray(y)[plan.targets]
        self.isolated_model: list | None = None

    def configure(self, strategy, update, arrays, config, grid):
        from flwr.app import ArrayRecord

        from fedaudit.federation.messages import replace_records

        plan, r = self.plan, update.round
        honest = update.previous
        if plan.kind == ACTIVE_SERVER and plan.active_in(r):
            sent, losses = self.ascent(honest, self.x, self.y, plan.ascent_steps, plan.ascent_lr)
            update.honest, update.previous = honest, sent
            update.deviation = {"targets_loss_before": losses[0], "targets_loss_sent": losses[-1]}
            return strategy.train_messages(r, ArrayRecord(sent), config, grid)
        messages = strategy.train_messages(r, arrays, config, grid)
        if plan.kind == ISOLATING_SERVER and plan.active_in(r) and self.isolated_model is not None:
            iso = plan.isolated[0]
            node = next((n for n, k in strategy.node_partitions().items() if k == iso), None)
            if node is not None:
                isolated = ArrayRecord([np.asarray(w) for w in self.isolated_model])
                messages = [replace_records(m, arrays=isolated) if m.metadata.dst_node_id == node else m
                            for m in messages]
                update.honest, update.previous = honest, self.isolated_model
                update.deviation = {"isolated_client": iso}
        return messages

    def aggregated_replies(self, strategy, update, replies: list) -> list:
        """The replies the global model aggregates; the update keeps the clients the adversary audits."""
        if self.plan.kind != ISOLATING_SERVER:
            return replies
        iso = self.plan.isolated[0]
        if iso in update.clients:
            self.isolated_model = [np.asarray(w) for w in update.clients[iso]]
        update.clients = {iso: update.clients[iso]} if iso in update.clients else {}
        parts = strategy.node_partitions()
        kept = [m for m in replies if m.has_error() or parts.get(m.metadata.src_node_id) != iso]
        return kept or replies


class SecureServerMoves:
    """The active server under secure aggregation (model inconsistency, Pasquini et al. 2022), in a round of
    :class:`fedaudit.federation.secagg.AuditedLegacyStrategy`: every client but the target is sent
    :func:`inert_weights` of the global model, and the target's model is recovered from the unmasked mean
    (:func:`recover_target`). The target's node is known from its first reply on (replies name their partition), so
    the inconsistency starts in the round after the target's first reply."""

    def __init__(self, plan: ActivePlan, uniform: bool):
        self.plan = plan
        self.uniform = uniform
        self.inert: list | None = None
        self.consistent = True

    def configure(self, strategy, update, instructions: list) -> list:
        from flwr.common import FitIns, ndarrays_to_parameters

        plan, r = self.plan, update.round
        target = plan.inconsistent_target
        node = next((n for n, k in strategy.node_partitions().items() if k == target), None)
        self.consistent = True
        if not plan.active_in(r) or node is None or all(proxy.node_id != node for proxy, _ in instructions):
            return instructions
        self.inert = inert_weights(update.previous)
        inert = ndarrays_to_parameters(self.inert)
        self.consistent = False
        update.deviation = {"inconsistent_target": target}
        return [(proxy, ins if proxy.node_id == node else FitIns(inert, ins.config)) for proxy, ins in instructions]

    def recovered(self, update, mean: list) -> None:
        """Put the target's recovered model in ``update.clients`` (the server's view of one client)."""
        target = self.plan.inconsistent_target
        if self.consistent or target not in update.participants:
            return
        weights = {k: (1 if self.uniform else update.examples[k]) for k in update.participants}
        update.clients = {target: [w.astype(np.float32) for w in recover_target(mean, weights, target, self.inert)]}
        update.deviation["recovered_client"] = target

__all__ = ["ACTIVE_KINDS", "ACTIVE_PARTICIPANT", "ACTIVE_SERVER", "ISOLATING_SERVER", "ActivePlan", "Ascent", "ascent_for",
           "cosine", "flat", "inert_weights", "norm", "plan_for", "recover_target", "SecureServerMoves", "ServerMoves",
           "update"]
