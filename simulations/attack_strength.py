"""How strong is each score-based attack on a real target? Loss threshold, P, R, LiRA and RMIA side by side.

Trains several target models on random member/non-member splits of one dataset, attacks each with
reference models trained on a disjoint population, and pools the scores so that TPR at 0.1% FPR is
measurable (it needs well over 1,000 non-members)::

    python simulations/attack_strength.py purchase          # purchase-fcn on synthetic-purchase
    python simulations/attack_strength.py purchase-longtail --targets 2   # Zipf subgroups and 5% label noise
    python simulations/attack_strength.py digits-mlp --reference-models 4 --out strength.json

Prints AUC and TPR at 1% and 0.1% FPR with 95% Clopper-Pearson intervals per attack.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fedaudit.attacks.audit import DEFAULT_ATTACKS, prepare_audit, score_all
from fedaudit.attacks.scores import correct
from fedaudit.data import load_dataset
from fedaudit.metrics import summarize
from fedaudit.models import build_model, train_model

SETUPS = {
    "purchase": dict(dataset="synthetic-purchase", options={}, model="purchase-fcn", population=1000, epochs=40),
    # a long tail: each class in 20 subgroups of Zipf sizes, 5% of labels flipped (records of unequal difficulty)
    "purchase-longtail": dict(dataset="synthetic-purchase", options={"records": 4000, "features": 100, "classes": 10,
                                                                     "subgroups": 20, "label_noise": 0.05},
                              model="mlp", model_options={"hidden": [256]}, population=2000, epochs=30),
    "digits-mlp": dict(dataset="digits", options={}, model="mlp", population=797, epochs=60),
    "digits-cnn": dict(dataset="digits", options={"image": True}, model="cnn", population=797, epochs=40),
}


def run(setup: str, reference_models: int, targets: int, parallel: bool, cache_dir: str | None) -> dict:
    cfg = SETUPS[setup]
    d = load_dataset(cfg["dataset"], seed=0, **cfg["options"])
    order = np.random.default_rng(123).permutation(len(d))
    population, side = order[:cfg["population"]], order[cfg["population"]:]
    pooled = {a: ([], []) for a in DEFAULT_ATTACKS}
    accuracy = []
    started = time.time()
    for t in range(targets):
        perm = np.random.default_rng(1000 + t).permutation(side)
        half = len(perm) // 2
        members, nonmembers = perm[:half], perm[half:2 * half]
        model_options = cfg.get("model_options", {})
        model = build_model(cfg["model"], d.input_shape, d.num_classes, seed=100 + t, **model_options)
        train_model(model, d.x[members], d.y[members], epochs=cfg["epochs"], seed=100 + t)
        data = prepare_audit(model, d.x[members], d.y[members], d.x[nonmembers], d.y[nonmembers],
                             x_population=d.x[population], y_population=d.y[population], attacks=DEFAULT_ATTACKS,
                             reference_models=reference_models, model_name=cfg["model"], model_options=model_options,
                             epochs=cfg["epochs"], seed=7, cache_dir=cache_dir, parallel=parallel)
        ok = correct(data.plain.target_logits, data.plain.labels)
        accuracy.append((ok[data.is_member].mean(), ok[~data.is_member].mean()))
        for name, scores in score_all(data, DEFAULT_ATTACKS).items():
            pooled[name][0].append(scores[data.is_member])
            pooled[name][1].append(scores[~data.is_member])
        print(f"target {t + 1}/{targets}: train/test accuracy {accuracy[-1][0]:.3f}/{accuracy[-1][1]:.3f} "
              f"({time.time() - started:.0f} s)", flush=True)
    result = {"setup": setup, "reference_models": reference_models, "targets": targets,
              "train_accuracy": float(np.mean([a for a, _ in accuracy])),
              "test_accuracy": float(np.mean([b for _, b in accuracy])), "attacks": {}}
    for name, (m, n) in pooled.items():
        s = summarize(np.concatenate(m), np.concatenate(n))
        result["attacks"][name] = s.to_dict()
        print(f"{name:14s} AUC {s.auc:.3f}  TPR@1% {_rate(s.tpr_at_1pct, s.tpr_at_1pct_ci)}  "
              f"TPR@0.1% {_rate(s.tpr_at_0_1pct, s.tpr_at_0_1pct_ci)}  "
              f"({s.n_members} members, {s.n_nonmembers} non-members)")
    return result


def _rate(value: float, ci) -> str:
    if not np.isfinite(value):
        return "not measurable"
    return f"{100 * value:5.2f}% [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setup", choices=sorted(SETUPS))
    parser.add_argument("--reference-models", type=int, default=4)
    parser.add_argument("--targets", type=int, default=4, help="target models whose scores are pooled")
    parser.add_argument("--ray", action="store_true", help="train the reference models as Ray tasks")
    parser.add_argument("--cache-dir", help="reuse reference models from this folder")
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args()
    result = run(args.setup, args.reference_models, args.targets, args.ray, args.cache_dir)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
