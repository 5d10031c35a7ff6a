"""Does averaging several attack networks name more members at low FPR than one? The meminf whitebox attack
(the tutorial's settings, the network alone) trained K times on each target with different seeds (its own
training/validation split and initialisation), the mean of the first k networks' log-odds against one network:

    python simulations/attack_network_bagging.py --targets 6 --seed 1 --networks 3

Targets are drawn as ``fedaudit bench attacks --peer art --targets N --seed S --family F`` draws them (the same
seed gives the same targets). Prints, pooled over the targets, AUC and TPR at 1% and 0.1% FPR with intervals,
and on how many targets each mix names at least as many members at 1% FPR as one network.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def target_log_odds(cfg: dict, networks: int, logs) -> tuple[list, np.ndarray]:
    """([log-odds of each network on the held-out records], their membership) on one drawn target."""
    from fedaudit.bench.peer_art import WHITEBOX, meminf_attack, train_target

    t = cfg["seed"]
    _, model, handler, _ = train_target(cfg, t)
    held = handler.test_split()
    out = []
    for k in range(networks):
        attack = meminf_attack(model, handler, cfg, t + 1000 * k, logs, *WHITEBOX, stack=None)
        p = np.clip(attack.fitted.predict(attack.features(model, held.x, held.y, "attack_datahandler")), 1e-7, 1 - 1e-7)
        out.append(np.log(p / (1 - p)))
    return out, held.membership == 1


def main(argv=None) -> dict:
    from fedaudit.bench.common import report
    from fedaudit.bench.peer_art import FAMILIES, _pooled_rows, describe, draw_targets
    from fedaudit.metrics import summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--family", default="tutorial", choices=FAMILIES)
    parser.add_argument("--networks", type=int, default=3, help="networks per target (at least 2)")
    args = parser.parse_args(argv)
    if args.networks < 2:
        parser.error(f"--networks: at least 2 (got {args.networks})")
    names = ["one network"] + [f"mean of {k} networks" for k in range(2, args.networks + 1)]
    pooled = {name: ([], []) for name in names}
    wins = dict.fromkeys(names[1:], 0)
    configs = draw_targets(args.targets, args.seed, args.family)
    for i, cfg in enumerate(configs):
        with tempfile.TemporaryDirectory() as logs:
            log_odds, member = target_log_odds(cfg, args.networks, Path(logs))
        tpr = {}
        for k, name in enumerate(names, start=1):
            s = np.mean(log_odds[:k], axis=0)
            pooled[name][0].append(s[member])
            pooled[name][1].append(s[~member])
            tpr[name] = float(np.nan_to_num(summarize(s[member], s[~member]).tpr_at_1pct, nan=0.0))
        for name in names[1:]:
            wins[name] += int(tpr[name] >= tpr["one network"])
        print(f"  target {i + 1}/{len(configs)} {describe(cfg)}: TPR@1% "
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in tpr.items()), flush=True)
    rows, attacks = _pooled_rows(pooled)
    rows += [(f"TPR@1% per target: {name}", f">= one network on {wins[name]}/{len(configs)}") for name in names[1:]]
    return report(f"python simulations/attack_network_bagging.py --targets {args.targets} --seed {args.seed} "
                  f"--family {args.family} --networks {args.networks}", rows, {"attacks": attacks, "wins": wins},
                  None)


if __name__ == "__main__":
    main()
