"""Under client sampling, do the server's across-round figures agree with its rounds? One run's directory:

    fedaudit run scenarios/scale-10k.toml --out runs/scale-10k
    python simulations/across_rounds_sampling.py runs/scale-10k

With ``fraction < 1`` the server scores a member only in the rounds its owner trained, a population record in
every round (under its pseudo-owner, or a stand-in client when that one did not reply). Per threat model with
per-client models, the table gives, on the same members and non-members:

- each round alone: the headline attack's AUC in each round, each record under its own (its holder's) model;
- the aggregation's figures (``aggregate_run``, nothing written): the stacked attack and each attack's mean, both
  over each record's own rounds (:func:`fedaudit.auditor.aggregate.own_rounds`);
- for contrast, the mean over *every* round that scored a record: a population record's score averaged over many
  more models than a member's, which separates them by the spread of the averages alone.

The first two should agree; the last is what the across-round figures would say if they read calendar rounds.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)

    from fedaudit.auditor.aggregate import _View, aggregate_run, own_rounds
    from fedaudit.auditor.attack import audit_attacks, headline
    from fedaudit.auditor.records import AuditRecords
    from fedaudit.auditor.state import AUDIT_DIR, load_round, round_path, saved_rounds
    from fedaudit.config import load_scenario
    from fedaudit.metrics import summarize
    from fedaudit.threat_model import get_threat_model

    run = args.run_dir
    scenario = load_scenario(run / "scenario.toml", run_dir_file=True)
    records = AuditRecords.load(run / AUDIT_DIR / "records.npz")
    data = {t: load_round(round_path(run, t)) for t in saved_rounds(run)}
    head = headline(audit_attacks(scenario.audit.attacks, scenario.audit.reference_models)[0])
    summary = aggregate_run(run, write=False)
    member = records.member
    print(f"{run}: {scenario.federation.clients} clients, fraction {scenario.federation.fraction}, "
          f"{len(data)} rounds saved")
    for tm, entry in summary["threat_models"].items():
        if not get_threat_model(tm).per_client_models:
            continue
        view = _View(tm, data, records, entry.get("headline") or head)
        if not view.server:
            continue
        own = own_rounds(view, view.rounds)
        scores = np.stack([view.scores(t, view.head) for t in view.rounds], axis=1)
        per_round = []
        for j in range(len(view.rounds)):
            s = np.where(own[:, j], scores[:, j], np.nan)
            ok = np.isfinite(s)
            if (ok & member).any() and (ok & ~member).any():
                per_round.append(summarize(s[ok & member], s[ok & ~member]).auc)
        scored = np.isfinite(scores).any(axis=1)
        every = np.full(len(records), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            every[scored] = np.nanmean(scores[scored], axis=1)
        calendar = summarize(every[scored & member], every[scored & ~member])
        print(f"\n{tm} ({view.head} in each round, {int((scored & member).sum())} members / "
              f"{int((scored & ~member).sum())} non-members scored)")
        print(f"  {'figure':<52} {'AUC':>6} {'TPR@1%':>8}")
        if per_round:
            print(f"  {'each round alone, own rounds (min-max)':<52} "
                  f"{min(per_round):.3f}-{max(per_round):.3f}")
        print(f"  {entry['attack'] + ' (the headline)':<52} {entry['auc']:>6.3f} {100 * entry['tpr_at_1pct']:>7.1f}%")
        for a, s in (entry.get("attacks_across_rounds") or {}).items():
            if s:
                print(f"  {a + ', mean over own rounds':<52} {s['auc']:>6.3f} {100 * s['tpr_at_1pct']:>7.1f}%")
        low = entry.get("low_fpr") or {}
        if low:
            print(f"  {'reported at 1% FPR: ' + str(entry.get('low_fpr_attack')) + ' (unknown records)':<52} "
                  f"{low['auc']:>6.3f} {100 * low['tpr_at_1pct']:>7.1f}%")
        print(f"  {view.head + ', mean over every scored round (contrast)':<52} {calendar.auc:>6.3f} "
              f"{100 * calendar.tpr_at_1pct:>7.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
