"""The ServerApp: your strategy and your main, with the strategy wrapped by fedaudit.flower.audit_strategy.

At the end of ``start`` the run directory holds what ``fedaudit run`` writes (rounds.jsonl, summary.json,
records.csv, report.html, ...); the last lines of the log say how much the federation leaks and where the
report is.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedaudit.flower import audit_strategy
from flower_app.task import data_from_config, load_model

app = ServerApp()


def _names(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    model = load_model(float(cfg["learning-rate"]), int(cfg["seed"]))
    nodes = int(cfg["min-nodes"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes)
    strategy = audit_strategy(
        strategy,
        data=lambda num_partitions: data_from_config(cfg, num_partitions),   # the clients report num_partitions
        model=model,
        out=str(cfg["out-dir"]) or None,
        name="flower-app",
        audit={"threat_models": _names(cfg["threat-models"]), "attacks": _names(cfg["attacks"])},
        training={"local_epochs": int(cfg["local-epochs"]), "batch_size": int(cfg["batch-size"]),
                  "learning_rate": float(cfg["learning-rate"]), "optimizer": "adam"},
        seed=int(cfg["seed"]),
    )
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.get_weights()),
                   num_rounds=int(cfg["num-server-rounds"]))
