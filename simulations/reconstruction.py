"""Reconstruction from client updates (gradient inversion), measured in two settings.

    python simulations/reconstruction.py fedsgd --batch 1 4 --seeds 0 1 2 --iterations 300
    python simulations/reconstruction.py quickstart --iterations 300

``fedsgd``: 5 clients, each sending one local SGD step on one batch of ``--batch`` records of the 8x8 digits
(as images), on a small MLP; every client's update is inverted. ``quickstart``: the quick start's FedAvg (Adam,
5 local epochs, batch 32, ~100 records per client) on the digits as images, one round, ``--clients`` of its
clients inverted, through the auditor's core as a run would. Prints, per setting, the share of records
reconstructed (PSNR >= 20 dB), mean PSNR and SSIM, beside the population's class means, and the seconds spent.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def fedsgd(batch: int, seed: int, iterations: int) -> dict:
    from sklearn.datasets import load_digits

    from fedaudit.auditor.records import audit_records
    from fedaudit.config import scenario_from_dict
    from fedaudit.inferences import get_inference
    from fedaudit.inferences.simulate import LocalSimulator

    clients = 5
    s = scenario_from_dict({"name": "fedsgd", "data": {"dataset": "digits", "options": {"image": True}},
                            "model": {"name": "mlp", "hidden": [32]},
                            "federation": {"clients": clients, "rounds": 1, "local_epochs": 1, "batch_size": batch,
                                           "learning_rate": 0.1, "optimizer": "sgd", "seed": seed},
                            "audit": {"enabled": True, "inferences": ["reconstruction"],
                                      "reconstruction_clients": clients, "reconstruction_iterations": iterations}})
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    rng = np.random.default_rng(seed)
    owner, perm = np.full(y.size, -2), rng.permutation(y.size)
    for k in range(clients):
        owner[perm[k * batch:(k + 1) * batch]] = k
    owner[perm[200:600]] = -1
    r = audit_records(owner, y, clients, folds=3, attack_fraction=0.5, seed=seed)
    xa, ya = x[r.index], y[r.index]
    sim = LocalSimulator(s, x.shape[1:], 10)
    previous = sim.trainer.get_weights()
    updates = {k: sim.train(previous, xa[r.owner == k], ya[r.owner == k], seed=k) for k in range(clients)}
    core = SimpleNamespace(records=r, num_classes=10, seed=seed, scenario=s, inference_data=lambda: (xa, ya),
                           inference_simulator=lambda: sim)
    ctx = SimpleNamespace(round=1, previous=previous, clients=updates, new=None, aggregate=None, record={},
                          ids=list(range(clients)), non_finite=[], secure_aggregation=False)
    return get_inference("reconstruction").run(core, ctx)


def quickstart(seed: int, iterations: int, inverted: int) -> dict:
    from fedaudit.auditor import AuditCore
    from fedaudit.config import load_scenario
    from fedaudit.federation.driver import write_inputs

    import importlib.util

    spec = importlib.util.spec_from_file_location("label_inference", REPO / "simulations" / "label_inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scenario = load_scenario(REPO / "scenarios" / "quickstart.toml", {
        "data.options": {"image": True}, "federation.rounds": 1, "federation.seed": seed,
        "audit.threat_models": ["server"], "audit.attacks": ["loss"], "audit.inferences": ["reconstruction"],
        "audit.reconstruction_clients": inverted, "audit.reconstruction_iterations": iterations})
    with tempfile.TemporaryDirectory() as tmp:
        for p, r, previous, clients, new in module.fedavg_rounds(scenario):
            write_inputs(Path(tmp), p)
            d = p.dataset
            core = AuditCore.from_dataset(tmp, scenario, d.x, d.y, p.ledger.owner, p.ledger.num_clients)
            line = core.observe(r, previous, clients, new, {"clients": sorted(clients)})
            return line["inferences"]["reconstruction"]


def show(name: str, results: list[dict]) -> None:
    done = [c for res in results for c in res["clients"] if "attack" in c]
    if not done:
        print(f"{name}: nothing inverted: {[c.get('skipped') for res in results for c in res['clients']]}")
        return
    records = sum(c["records"] for c in done)
    share = sum(c["attack"]["reconstructed"] * c["records"] for c in done) / records
    base = sum(c["baseline"]["reconstructed"] * c["records"] for c in done) / records
    print(f"{name}: {len(done)} clients, {records} records; reconstructed (PSNR >= 20 dB) {share:.1%} "
          f"(class means {base:.1%}); mean PSNR {np.mean([c['attack']['psnr'] for c in done]):.2f} dB "
          f"(class means {np.mean([c['baseline']['psnr'] for c in done]):.2f}); SSIM "
          f"{np.mean([c['attack']['ssim'] for c in done]):.3f} (class means "
          f"{np.mean([c['baseline']['ssim'] for c in done]):.3f}); labels right "
          f"{np.mean([c['labels_right'] for c in done]):.1%}; seconds per inverted client "
          f"{np.mean([c['seconds'] for c in done]):.1f}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting", choices=("fedsgd", "quickstart"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--clients", type=int, default=1, help="quickstart: clients inverted per round")
    args = parser.parse_args(argv)
    if args.setting == "fedsgd":
        for batch in args.batch:
            started = time.perf_counter()
            results = [fedsgd(batch, seed, args.iterations) for seed in args.seeds]
            show(f"FedSGD batch {batch} ({time.perf_counter() - started:.0f} s)", results)
    else:
        show("quickstart FedAvg", [quickstart(seed, args.iterations, args.clients) for seed in args.seeds])


if __name__ == "__main__":
    main()
