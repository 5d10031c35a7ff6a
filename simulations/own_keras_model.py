"""Audit your own Keras model and NumPy data in a simulated federation.

Replace ``load_my_data`` and ``build_my_model`` with yours and run::

    python simulations/own_keras_model.py --out runs/own-model

What it does, with fedaudit's Python API:

1. saves your arrays as an .npz file and points the scenario's ``[data]`` at it (dataset ``npz``);
2. saves your model as a .keras file and points the scenario's ``[model]`` at it (model ``keras-file``): the
   clients and the auditor rebuild its architecture from the file, with fresh seeded weights;
3. runs the federation with the audit on (``fedaudit.run.run_scenario``) and prints the headline numbers;
   ``RUN_DIR/report.html`` is the report to hand in.

fedaudit trains the model with its own training step and reads logits: a final softmax is removed (the model
is trained and audited on the logits under it). To keep your own training loop, run your own Flower App with
``fedaudit.flower`` instead (``simulations/flower_app``); to audit a model you already trained, use
``fedaudit audit-model`` (or, on arrays, ``fedaudit.model_audit.audit``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

def load_my_data() -> tuple[np.ndarray, np.ndarray]:
    """Your records (float features) and integer labels. Here: scikit-learn's breast-cancer data set."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)          # standardise the 30 features
    return x.astype(np.float32), y.astype(np.int64)


def build_my_model(input_shape, num_classes, seed):
    """Your Keras model: any keras.Model from ``input_shape`` to ``num_classes`` logits."""
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init, name="hidden"),
        keras.layers.Dense(32, activation="relu", kernel_initializer=init, name="hidden_2"),
        keras.layers.Dense(num_classes, kernel_initializer=init, name="logits"),
    ], name="my_model")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/own-model", help="the run directory to write (new or empty)")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=0, help="CPUs for the local Ray (0: all)")
    args = parser.parse_args(argv)

    from fedaudit.config import scenario_from_dict
    from fedaudit.federation.runtime import quiet_environment
    from fedaudit.run import run_scenario

    quiet_environment()
    out = Path(args.out)
    x, y = load_my_data()
    data_file = out.with_name(out.name + "-data.npz")
    model_file = out.with_name(out.name + "-model.keras")
    data_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(data_file, x=x, y=y)
    build_my_model(x.shape[1:], int(y.max()) + 1, seed=0).save(model_file)

    scenario = scenario_from_dict({
        "name": "own-keras-model",
        "data": {"dataset": "npz", "path": str(data_file.resolve()), "population_fraction": 0.25,
                 "test_fraction": 0.2},
        "model": {"name": "keras-file", "path": str(model_file.resolve())},
        "federation": {"clients": args.clients, "rounds": args.rounds, "local_epochs": 20, "batch_size": 16,
                       "learning_rate": 0.003, "partition": "iid", "seed": 0},
        "audit": {"enabled": True, "threat_models": ["server", "participant"], "attack_fraction": 0.5},
        "ray": {"num_cpus": args.cpus},
    })
    run_dir = run_scenario(scenario, out=out)

    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    print(f"run directory: {run_dir}")
    print(f"final test accuracy: {rounds[-1]['accuracy']:.3f}")
    for tm, s in (summary.get("threat_models") or {}).items():
        tpr = s.get("tpr_at_1pct")
        eps_low = (s.get("epsilon_lower_ci") or [None])[0]
        print(f"{tm:>11}: AUC {s['auc']:.3f}, TPR at 1% FPR {'n/a' if tpr is None else f'{100 * tpr:.1f}%'}, "
              f"empirical epsilon >= {'n/a' if eps_low is None else f'{eps_low:.2f}'} (95% confidence)")
    print(f"report: {run_dir / 'report.html'}")
    return run_dir


if __name__ == "__main__":
    main()
