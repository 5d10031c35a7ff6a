"""Does calibrating the attack network's log-odds by a temperature (fitted on its validation split) change what
it names at low FPR? The meminf whitebox attack (the tutorial's settings, the network alone) on each target, its
log-odds before and after the temperature, beside ART's random forest and the loss threshold on the same records:

    python simulations/attack_network_calibration.py --targets 8 --seed 112358

Targets are drawn as ``fedaudit bench attacks --peer art --targets N --seed S --family F`` draws them. Within one
target the temperature changes no rank (its AUC and TPR are the network's), so what moves is the pooled table:
scores of several targets on one scale. Prints each target's figures, the pooled table with intervals, and on how
many targets each names at least as many members at 1% FPR as the uncalibrated network.
"""

from __future__ import annotations

NAMES = ["network, uncalibrated", "network, calibrated", "ART rf", "loss threshold"]


def scores_of(cfg: dict, logs) -> tuple[dict, object]:
    from fedaudit.attacks.reference_models import logits_function
    from fedaudit.attacks.threshold import loss_scores
    from fedaudit.bench.peer_art import WHITEBOX, art_scores, meminf_attack, softmax, train_target

    t = cfg["seed"]
    d, model, handler, _ = train_target(cfg, t)
    held, known = handler.test_split(), handler.train_split()
    attack = meminf_attack(model, handler, cfg, t, logs, *WHITEBOX, stack=None)
    calibrated = attack.fitted.log_odds(attack.features(model, held.x, held.y, "attack_datahandler"))
    logits = logits_function(model)
    zk, zh = logits(known.x), logits(held.x)
    print(f"  temperature {attack.fitted.temperature:.2f}", flush=True)
    return {NAMES[0]: calibrated * attack.fitted.temperature, NAMES[1]: calibrated,
            NAMES[2]: art_scores("rf", d.num_classes, d.input_shape, softmax(zk), known.y, known.membership == 1,
                                 softmax(zh), held.y, seed=t),
            NAMES[3]: loss_scores(zh, held.y)}, held.membership == 1


def main(argv=None) -> dict:
    from fedaudit.bench.peer_art import run_variants, variants_parser

    args = variants_parser(__doc__.splitlines()[0], seed=112358).parse_args(argv)
    return run_variants(args, scores_of, NAMES, "attack_network_calibration.py")


if __name__ == "__main__":
    main()
