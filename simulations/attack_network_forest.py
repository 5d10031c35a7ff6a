"""Does a random forest beside the attack network (meminf's ``stack="forest"``) name more members than the network
alone? The meminf whitebox attack (the tutorial's settings) on each target: the network, the forest on the softmax
vector, the one-hot label and the compact statistics (:func:`fedaudit.attacks.nasr.stacking.forest_features`), and
the mean of their probabilities, beside ART's random forest and gradient boosting and the loss threshold on the same
held-out records:

    python simulations/attack_network_forest.py --targets 8 --seed 57721

Targets are drawn as ``fedaudit bench attacks --peer art --targets N --seed S --family F`` draws them. Prints each
target's figures, the pooled table with intervals, and on how many targets each names at least as many members at
1% FPR as the network alone.
"""

from __future__ import annotations

NAMES = ["network", "forest", "network + forest", "ART rf", "ART gb", "loss threshold"]


def scores_of(cfg: dict, logs) -> tuple[dict, object]:
    from fedaudit.attacks.nasr.stacking import forest_features
    from fedaudit.attacks.reference_models import logits_function
    from fedaudit.attacks.threshold import loss_scores
    from fedaudit.bench.peer_art import WHITEBOX, art_scores, meminf_attack, softmax, train_target

    t = cfg["seed"]
    d, model, handler, _ = train_target(cfg, t)
    held, known = handler.test_split(), handler.train_split()
    attack = meminf_attack(model, handler, cfg, t, logs, *WHITEBOX, stack="forest")
    feats = attack.features(model, held.x, held.y, "attack_datahandler")
    logits = logits_function(model)
    zk, zh = logits(known.x), logits(held.x)
    out = {NAMES[0]: attack.fitted.log_odds(feats),
           NAMES[1]: attack.stacked.second.predict_proba(forest_features(feats))[:, 1],
           NAMES[2]: attack.stacked.log_odds(feats)}
    for name, kind in ((NAMES[3], "rf"), (NAMES[4], "gb")):
        out[name] = art_scores(kind, d.num_classes, d.input_shape, softmax(zk), known.y, known.membership == 1,
                               softmax(zh), held.y, seed=t)
    out[NAMES[5]] = loss_scores(zh, held.y)
    return out, held.membership == 1


def main(argv=None) -> dict:
    from fedaudit.bench.peer_art import run_variants, variants_parser

    args = variants_parser(__doc__.splitlines()[0], seed=57721).parse_args(argv)
    return run_variants(args, scores_of, NAMES, "attack_network_forest.py")


if __name__ == "__main__":
    main()
