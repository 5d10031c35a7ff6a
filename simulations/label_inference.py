"""Label inference from client updates, measured on an in-process FedAvg federation.

    python simulations/label_inference.py --partition dirichlet:0.1 --clients 10 --rounds 3 --seeds 0 1 2

Trains FedAvg in this process (the scenario's model, optimizer and local epochs; no Ray), hands every round to the
auditor's core exactly as the federation's auditor would (the server sees each client's weights; with
``--secure-aggregation`` only the FedAvg mean), and prints the label inference's total-variation error per round
beside the baseline of guessing the population's class mix: per client, and for the federation's mix.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def fedavg_rounds(scenario):
    """FedAvg in this process: yields (prepared, round, previous, {client: weights}, new)."""
    from fedaudit.federation.driver import prepare
    from fedaudit.models import Trainer, build_model

    p = prepare(scenario)
    f, d = scenario.federation, p.dataset
    trainer = Trainer(build_model(scenario.model.name, d.input_shape, d.num_classes, seed=f.seed,
                                  **scenario.model.options), f.optimizer, f.learning_rate)
    weights = p.initial_weights
    for r in range(1, f.rounds + 1):
        clients, sizes = {}, []
        for k in range(f.clients):
            idx = p.ledger.client_indices(k)
            if idx.size == 0:
                continue
            trainer.set_weights(weights)
            trainer.fit(d.x[idx], d.y[idx], epochs=f.local_epochs, batch_size=f.batch_size,
                        rng=np.random.default_rng([f.seed, k, r]))
            clients[k] = trainer.get_weights()
            sizes.append(idx.size)
        new = [np.average(np.stack(layer), axis=0, weights=sizes).astype(np.float32)
               for layer in zip(*clients.values())]
        yield p, r, weights, clients, new
        weights = new


def run(seed: int, args) -> list[dict]:
    from fedaudit.auditor import AuditCore
    from fedaudit.config import load_scenario
    from fedaudit.federation.driver import write_inputs

    scenario = load_scenario(REPO / "scenarios" / "quickstart.toml", {
        "federation.partition": args.partition, "federation.clients": args.clients,
        "federation.rounds": args.rounds, "federation.local_epochs": args.epochs, "federation.seed": seed,
        "federation.secure_aggregation": bool(args.secure_aggregation),
        "audit.threat_models": ["server"], "audit.attacks": ["loss"], "audit.inferences": ["labels"]})
    rows, core = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for p, r, previous, clients, new in fedavg_rounds(scenario):
            if core is None:
                write_inputs(Path(tmp), p)
                d = p.dataset
                core = AuditCore.from_dataset(tmp, scenario, d.x, d.y, p.ledger.owner, p.ledger.num_clients)
            if args.secure_aggregation:
                line = core.observe(r, previous, {}, new, {"clients": sorted(clients)}, aggregate=None)
            else:
                line = core.observe(r, previous, clients, new, {"clients": sorted(clients)})
            res = line["inferences"]["labels"]
            fed = res.get("federation") or {}
            from fedaudit.rundir import read_jsonl

            seconds = read_jsonl(Path(tmp) / "audit" / "timing.jsonl")[-1].get("inferences")
            rows.append({"seed": seed, "round": r, "seconds": seconds, "mean_tv": res.get("mean_tv"),
                         "mean_baseline_tv": res.get("mean_baseline_tv"), "federation_tv": fed.get("tv"),
                         "federation_baseline_tv": fed.get("baseline_tv")})
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partition", default="dirichlet:0.1")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--secure-aggregation", action="store_true")
    args = parser.parse_args(argv)
    rows = [row for seed in args.seeds for row in run(seed, args)]

    def mean(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(vals)) if vals else float("nan")

    print(f"rounds={len(rows)} inference seconds per round {mean('seconds'):.1f}; per-client mean TV {mean('mean_tv'):.3f} (population-mix baseline "
          f"{mean('mean_baseline_tv'):.3f}); federation mix TV {mean('federation_tv'):.3f} (baseline "
          f"{mean('federation_baseline_tv'):.3f})")
    return rows


if __name__ == "__main__":
    main()
