"""Did every reference model learn its training records, and what does one that did not cost the attacks?

Targets are drawn as ``fedaudit bench attacks --peer art --targets N --seed S --family F`` draws them (the same seed
gives the same targets; ``--only`` picks some of them, counted from 1). For each, the reference models are trained
twice, without and with the second attempt at a model that fits its own training records more than
``fedaudit.attacks.reference_models.FIT_GAP`` below the best-fitting one, and the script prints each reference
model's accuracy on its own training records (offline and online sets) and each attack's AUC and TPR at 1% FPR,
beside the loss threshold and the target's own accuracy on its members::

    python simulations/reference_fit.py --seed 90210 --family longtail --targets 8 --only 3
"""

from __future__ import annotations

import argparse

import numpy as np


def fit(inputs) -> list:
    """Each reference model's accuracy on the records it trained on (audited and population records)."""
    right = [inputs.reference_population_logits.argmax(axis=2) == inputs.population_labels[None, :]]
    trained = [inputs.reference_population_in]
    if inputs.reference_in is not None:
        right.append(inputs.reference_logits.argmax(axis=2) == inputs.labels[None, :])
        trained.append(inputs.reference_in)
    right, trained = np.concatenate(right, axis=1), np.concatenate(trained, axis=1)
    return [float(np.mean(right[r][trained[r]])) for r in range(right.shape[0])]


def main(argv=None) -> list:
    from fedaudit.attacks.scoring import score_all
    from fedaudit.bench.peer_art import FAMILIES, REFERENCE_ATTACKS, describe, draw_targets, reference_audit, \
        train_target
    from fedaudit.metrics import summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--seed", type=int, default=90210)
    parser.add_argument("--family", default="longtail", choices=FAMILIES)
    parser.add_argument("--only", type=int, nargs="+", help="the drawn targets to run (1 = the first)")
    args = parser.parse_args(argv)
    configs = draw_targets(args.targets, args.seed, args.family)
    picked = args.only or list(range(1, len(configs) + 1))
    bad = [i for i in picked if not 1 <= i <= len(configs)]
    if bad:
        parser.error(f"--only: {bad} not among the {len(configs)} drawn targets (1-{len(configs)})")
    out = []
    for i in picked:
        cfg = dict(configs[i - 1], reference_models=configs[i - 1]["reference_models"] or 4)
        t = cfg["seed"]
        _, model, handler, options = train_target(cfg, t)
        held = handler.test_split()
        member = held.membership == 1
        print(f"target {i}/{len(configs)} {describe(cfg)}")
        for refit in (False, True):
            data = reference_audit(model, handler, cfg, t, options, refit=refit)
            if not refit:
                own = data.plain.target_logits.argmax(axis=1) == data.plain.labels
                print(f"  the target's accuracy on its members: {own[data.is_member].mean():.3f}")
            scores = score_all(data, ("loss", *REFERENCE_ATTACKS))
            row = {"target": i, "refit": refit, "fit_offline": fit(data.offline), "fit_online": fit(data.online)}
            label = "second attempts" if refit else "first attempts only"
            print(f"  {label}: reference models' accuracy on their own records, offline "
                  f"{', '.join(f'{v:.2f}' for v in row['fit_offline'])}; online "
                  f"{', '.join(f'{v:.2f}' for v in row['fit_online'])}")
            for name, s in scores.items():
                summ = summarize(s[member], s[~member])
                row[name] = (summ.auc, summ.tpr_at_1pct)
                print(f"    {name:14s} AUC {summ.auc:.3f}  TPR@1% {100 * summ.tpr_at_1pct:.1f}%")
            out.append(row)
    return out


if __name__ == "__main__":
    main()
