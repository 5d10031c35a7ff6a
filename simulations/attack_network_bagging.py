"""Does averaging several attack networks name more members at low FPR than one? The meminf whitebox attack
(the tutorial's settings, the network alone) trained K times on each target with different seeds (its own
training/validation split and initialisation), the mean of the first k networks' log-odds against one network:

    python simulations/attack_network_bagging.py --targets 6 --seed 1 --networks 3

Targets are drawn as ``fedaudit bench attacks --peer art --targets N --seed S --family F`` draws them (the same
seed gives the same targets). Prints, pooled over the targets, AUC and TPR at 1% and 0.1% FPR with intervals,
and on how many targets each mix names at least as many members at 1% FPR as one network.
"""

from __future__ import annotations

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
        out.append(attack.fitted.log_odds(attack.features(model, held.x, held.y, "attack_datahandler")))
    return out, held.membership == 1


def main(argv=None) -> dict:
    from fedaudit.bench.peer_art import run_variants, variants_parser

    parser = variants_parser(__doc__.splitlines()[0], targets=6)
    parser.add_argument("--networks", type=int, default=3, help="networks per target (at least 2)")
    args = parser.parse_args(argv)
    if args.networks < 2:
        parser.error(f"--networks: at least 2 (got {args.networks})")
    names = ["one network"] + [f"mean of {k} networks" for k in range(2, args.networks + 1)]

    def scores_of(cfg, logs):
        each, member = target_log_odds(cfg, args.networks, logs)
        return {name: np.mean(each[:k], axis=0) for k, name in enumerate(names, start=1)}, member

    return run_variants(args, scores_of, names, "attack_network_bagging.py", f" --networks {args.networks}")


if __name__ == "__main__":
    main()
