"""`fedaudit bench federation`: one FedAvg workload three ways, in one command.

(a) fedaudit's federation: cached model per client actor, one compiled train step;
(b) the Flower quickstart idiom on the same Flower runtime: a fresh compiled Keras model and ``fit`` per message;
(c) the same training in one process with no federation runtime (a loop over clients, one compiled step).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from fedaudit.bench.common import report
from fedaudit.config import scenario_from_dict
from fedaudit.federation.runtime import init_ray, quiet_environment


def workload(quick: bool) -> dict:
    return {"name": "bench-federation", "data": {"dataset": "digits"}, "model": {"name": "mlp"},
            "federation": {"clients": 6 if quick else 20, "rounds": 2 if quick else 3, "local_epochs": 2,
                           "batch_size": 32, "learning_rate": 0.001, "optimizer": "adam", "seed": 0},
            "audit": {"enabled": False}}


def run_fedaudit(prepared) -> dict:
    from fedaudit.federation.driver import run_federation
    from fedaudit.schema import read_rounds

    with tempfile.TemporaryDirectory() as tmp:
        result = run_federation(prepared, Path(tmp), progress=False)
        rounds = read_rounds(Path(tmp) / "rounds.jsonl")
    return {"seconds": result.seconds - result.ray_seconds, "ray_start": result.ray_seconds,
            "rounds": [line.wall_seconds for line in rounds], "accuracy": result.accuracy}


def run_flower_idiom(prepared) -> dict:
    """The Flower tutorials' ClientApp: build and compile a new Keras model and call ``fit`` every message."""
    import ray
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    s, d, ledger = prepared.scenario, prepared.dataset, prepared.ledger
    f = s.federation
    t0 = time.time()
    init_ray()
    ray_start = time.time() - t0
    data_ref, owner = ray.put((d.x, d.y)), ledger.owner
    shape, classes, model_name, seed = d.input_shape, d.num_classes, s.model.name, f.seed
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        import keras

        from fedaudit.models import build_model

        x, y = ray.get(data_ref)
        idx = np.flatnonzero(owner == int(context.node_config["partition-id"]))
        model = build_model(model_name, shape, classes, seed=seed)
        model.compile(optimizer=keras.optimizers.Adam(f.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
        history = model.fit(x[idx], y[idx], epochs=f.local_epochs, batch_size=f.batch_size, verbose=0)
        metrics = {"train_loss": float(history.history["loss"][-1]), "num-examples": int(len(idx))}
        content = RecordDict({"arrays": ArrayRecord(model.get_weights()), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    server = ServerApp()
    rounds: list[float] = []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=f.clients, min_available_nodes=f.clients)
        last = [time.time()]

        def tick(server_round, arrays):
            if server_round:
                rounds.append(time.time() - last[0])
            last[0] = time.time()

        strategy.start(grid=grid, initial_arrays=ArrayRecord(prepared.initial_weights), num_rounds=f.rounds,
                       evaluate_fn=tick)

    t1 = time.time()
    run_simulation(server_app=server, client_app=client, num_supernodes=f.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return {"seconds": time.time() - t1, "ray_start": ray_start, "rounds": rounds}


def run_one_process(prepared) -> dict:
    """The same training with no runtime: one model, one compiled step, a loop over clients."""
    from fedaudit.models import Trainer, build_model

    s, d, ledger = prepared.scenario, prepared.dataset, prepared.ledger
    f = s.federation
    t0 = time.time()
    trainer = Trainer(build_model(s.model.name, d.input_shape, d.num_classes, seed=f.seed), f.optimizer,
                      f.learning_rate)
    weights = prepared.initial_weights
    rounds = []
    for r in range(1, f.rounds + 1):
        tr = time.time()
        updates, sizes = [], []
        for k in range(f.clients):
            idx = ledger.client_indices(k)
            trainer.set_weights(weights)
            trainer.fit(d.x[idx], d.y[idx], epochs=f.local_epochs, batch_size=f.batch_size,
                        rng=np.random.default_rng([f.seed, k, r]))
            updates.append(trainer.get_weights())
            sizes.append(len(idx))
        weights = [np.average(np.stack(layer), axis=0, weights=sizes) for layer in zip(*updates)]
        rounds.append(time.time() - tr)
    trainer.set_weights(weights)
    accuracy = trainer.evaluate(d.x[ledger.test_indices()], d.y[ledger.test_indices()])[1]
    return {"seconds": time.time() - t0, "rounds": rounds, "accuracy": accuracy}


def run(json_path: str | None = None, quick: bool = False) -> dict:
    quiet_environment()
    from fedaudit.federation.driver import prepare

    prepared = prepare(scenario_from_dict(workload(quick)))
    f = prepared.scenario.federation
    a = run_fedaudit(prepared)
    b = run_flower_idiom(prepared)
    c = run_one_process(prepared)
    steady = lambda x: sum(x["rounds"][1:])  # noqa: E731 - rounds after the first (actors and TF warm)
    figures = {
        "workload": {"dataset": "digits", "clients": f.clients, "rounds": f.rounds, "local_epochs": f.local_epochs,
                     "model": "mlp"},
        "a_fedaudit": a, "b_flower_idiom": b, "c_one_process": c,
        "ratio_b_over_a": b["seconds"] / a["seconds"],
        "ratio_a_over_c": a["seconds"] / c["seconds"],
        "ratio_a_over_c_after_first_round": steady(a) / max(steady(c), 1e-9),
        "ratio_b_over_a_after_first_round": steady(b) / max(steady(a), 1e-9),
    }
    rows = [
        ("workload", f"digits, {f.clients} clients, {f.rounds} rounds, {f.local_epochs} local epochs, mlp"),
        ("Ray start-up (a / b)", f"{a['ray_start']:.1f} s / {b['ray_start']:.1f} s (not counted below)"),
        ("(a) fedaudit federation", f"{a['seconds']:.1f} s  rounds {_fmt(a['rounds'])}"),
        ("(b) Flower idiom: new model + fit per message", f"{b['seconds']:.1f} s  rounds {_fmt(b['rounds'])}"),
        ("(c) one process, no runtime", f"{c['seconds']:.1f} s  rounds {_fmt(c['rounds'])}"),
        ("b / a (target >= 5)", f"{figures['ratio_b_over_a']:.2f}x  (after round 1: "
                                f"{figures['ratio_b_over_a_after_first_round']:.2f}x)"),
        ("a / c (target <= 3 after start-up)", f"{figures['ratio_a_over_c']:.2f}x  (after round 1: "
                                               f"{figures['ratio_a_over_c_after_first_round']:.2f}x)"),
    ]
    return report("fedaudit bench federation", rows, figures, json_path)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"
