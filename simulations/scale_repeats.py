"""`fedaudit bench scale`'s measurement at one size, repeated: how much the audited / unaudited ratio moves from one
pair of runs to the next on the same machine (the unaudited run varies as much as the audited one).

    python simulations/scale_repeats.py --model cnn --clients 300 --repeat 3

Each repeat is one unaudited and one audited run of the bench's workload, each in a fresh process
(:func:`fedaudit.bench.scale.measure`). Per repeat it prints both walls, their ratio and the audit's seconds per
round (round 1 first); then the mean and range of each. To set the code of another checkout beside this one, run
the script from that checkout with ``PYTHONPATH`` pointing at it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from fedaudit.bench.scale import MODELS, measure
    from fedaudit.federation.runtime import quiet_environment

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=MODELS, default="cnn")
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or args.repeat < 1:
        ap.error("--clients, --rounds and --repeat: allowed: positive integers")
    quiet_environment()
    rows = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="fedaudit-scale-repeats-") as tmp:
            r = measure(args.clients, args.rounds, Path(tmp), args.model)
        rows.append(r)
        audit = ", ".join(f"{s:.1f}" for s in r["audit_seconds_per_round"])
        print(f"repeat {i + 1}: audited {r['audited_wall']:.1f} s / unaudited {r['unaudited_wall']:.1f} s = "
              f"{r['ratio']:.2f}x; audit s per round {audit}", flush=True)
    for key, name in (("audited_wall", "audited wall"), ("unaudited_wall", "unaudited wall"), ("ratio", "ratio")):
        v = np.array([r[key] for r in rows])
        print(f"{name}: mean {v.mean():.2f}, range {v.min():.2f}-{v.max():.2f} ({len(v)} repeats)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
