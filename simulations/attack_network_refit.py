"""Does training the attack network again on every known record, for the epochs its validation split chose, name
more members than the network trained on four fifths of them? The meminf whitebox attack (the tutorial's settings,
the network alone) on each target; then a network of the same seed trained on all known records (train and
validation splits) for the chosen number of epochs, without selection; and the mean of the two's log-odds:

    python simulations/attack_network_refit.py --targets 8 --seed 1

Targets are drawn as ``fedaudit bench attacks --peer art --targets N --seed S --family F`` draws them. Prints, pooled
over the targets, AUC and TPR at 1% and 0.1% FPR with intervals, and on how many targets each variant names at
least as many members at 1% FPR as the network.
"""

from __future__ import annotations

NAMES = ["network", "refit on all known", "mean of both"]


def scores_of(cfg: dict, logs) -> tuple[dict, object]:
    from fedaudit.attacks.nasr.training import fit_attack
    from fedaudit.bench.peer_art import WHITEBOX, meminf_attack, train_target

    t = cfg["seed"]
    _, model, handler, _ = train_target(cfg, t)
    held, known = handler.test_split(), handler.train_split()
    attack = meminf_attack(model, handler, cfg, t, logs, *WHITEBOX, stack=None)
    chosen = attack.fitted
    refit = fit_attack(attack.features(model, known.x, known.y, "train_datahandler"), known.membership,
                       epochs=max(chosen.best_epoch, 1), batch_size=attack.batch_size,
                       learning_rate=attack.learning_rate, seed=attack.seed, val_fraction=0.0, min_steps=0,
                       patience=None, optimizer=attack.optimizer, size=attack.size)
    test = attack.features(model, held.x, held.y, "attack_datahandler")
    out = {NAMES[0]: chosen.log_odds(test), NAMES[1]: refit.log_odds(test)}
    out[NAMES[2]] = (out[NAMES[0]] + out[NAMES[1]]) / 2
    return out, held.membership == 1


def main(argv=None) -> dict:
    from fedaudit.bench.peer_art import run_variants, variants_parser

    args = variants_parser(__doc__.splitlines()[0]).parse_args(argv)
    return run_variants(args, scores_of, NAMES, "attack_network_refit.py")


if __name__ == "__main__":
    main()
