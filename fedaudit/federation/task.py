"""What a client needs to train, shipped to every client actor once, and the per-actor model cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedaudit import faults


@dataclass
class TrainSpec:
    """Everything a client actor needs, small enough to pickle: the data travels as a Ray object ref."""

    data_ref: object                  # ray.ObjectRef of (x, y) or the (x, y) tuple itself
    owner: np.ndarray                 # the ledger's owner column
    model_name: str
    model_options: dict
    input_shape: tuple
    num_classes: int
    optimizer: str
    learning_rate: float
    local_epochs: int
    batch_size: int
    seed: int
    client_threads: int = 1
    capture_dir: str = ""          # clients save the weights they received and trained here (secure aggregation)
    active: object = None          # fedaudit.federation.active.ActivePlan of a deviating adversary's run, or None


#: a train message's config key naming the client (partition) whose records fedaudit's simulated node trains on:
#: the server draws each round's clients with the scenario's seed (:func:`fedaudit.federation.strategy.draw_clients`)
ASSIGNED_CLIENT_KEY = "fedaudit-client"


def client_of(config, node_config) -> int:
    """The partition a message asks a node to train as: the server's assignment, else the node's own."""
    return int(config[ASSIGNED_CLIENT_KEY]) if ASSIGNED_CLIENT_KEY in config else int(node_config["partition-id"])


_CACHE: dict = {}


def _resolve(ref):
    if isinstance(ref, tuple):
        return ref
    import ray

    return ray.get(ref)


def client_state(spec: TrainSpec):
    """(trainer, x, y) for this actor process, built once per (model, data) and reused for every message."""
    from fedaudit.models import Trainer, build_model

    key = (spec.model_name, repr(sorted(spec.model_options.items())), spec.input_shape, spec.num_classes,
           spec.optimizer, spec.learning_rate, id(spec.data_ref) if isinstance(spec.data_ref, tuple)
           else repr(spec.data_ref))
    state = _CACHE.get(key)
    if state is None:
        _limit_threads(spec.client_threads)
        x, y = _resolve(spec.data_ref)
        model = build_model(spec.model_name, spec.input_shape, spec.num_classes, seed=spec.seed,
                            **spec.model_options)
        state = (Trainer(model, spec.optimizer, spec.learning_rate), x, y)
        _CACHE.clear()   # one run at a time per actor process
        _CACHE[key] = state
    return state


def _limit_threads(n: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, n))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, n))
    except RuntimeError:
        pass  # TensorFlow already started in this process


def local_train(spec: TrainSpec, partition_id: int, weights: list, server_round: int,
                proximal_mu: float = 0.0) -> tuple[list, dict]:
    """Train client ``partition_id`` from ``weights``; return its new weights and metrics."""
    fault = faults.client_fault(partition_id, server_round)
    if fault == faults.RAISE:
        raise RuntimeError(f"client {partition_id} failed in round {server_round} (fault injection)")
    if fault == faults.KILL:
        faults.kill_this_process()
    trainer, x, y = client_state(spec)
    idx = np.flatnonzero(spec.owner == partition_id)
    trainer.set_weights(weights)
    rng = np.random.default_rng([spec.seed, partition_id, server_round])
    result = trainer.fit(x[idx], y[idx], epochs=spec.local_epochs, batch_size=spec.batch_size, rng=rng,
                         proximal_mu=proximal_mu)
    trained = trainer.get_weights()
    plan = spec.active
    if plan is not None and plan.participant == partition_id and plan.active_in(server_round):
        trained = _deviate(spec, plan, trained, x, y)
    return trained, {"train_loss": result.loss, "num-examples": int(len(idx)), "partition-id": int(partition_id)}


def seed_reply_mods(spec: TrainSpec, partition_id: int, server_round: int) -> None:
    """Seed NumPy's global generator for one client's reply: the Flower mods that wrap it draw from that generator
    (``LocalDpMod``'s noise, ``secaggplus_mod``'s stochastic rounding), and draw the same in every run of a seed."""
    np.random.seed([spec.seed, int(server_round), int(partition_id)])


def _deviate(spec: TrainSpec, plan, weights: list, x, y) -> list:
    """The active participant: gradient ascent on the target records in its own update (Nasr et al. 2019)."""
    from fedaudit.federation.active import ascent_for

    ascent = ascent_for(spec.model_name, spec.model_options, spec.input_shape, spec.num_classes)
    out, _ = ascent(weights, x[plan.targets], y[plan.targets], plan.ascent_steps, plan.ascent_lr)
    return out


def local_evaluate(spec: TrainSpec, partition_id: int, weights: list) -> dict:
    trainer, x, y = client_state(spec)
    idx = np.flatnonzero(spec.owner == partition_id)
    trainer.set_weights(weights)
    loss, acc = trainer.evaluate(x[idx], y[idx])
    return {"eval_loss": loss, "eval_accuracy": acc, "num-examples": int(len(idx)), "partition-id": int(partition_id)}
