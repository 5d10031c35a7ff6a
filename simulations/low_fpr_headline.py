"""Is the rate a threat model reports at 1% FPR that of its strongest attack there? One federated run per scenario
and seed, then per threat model, per round and across rounds, on the records the adversary did not know:

    python simulations/low_fpr_headline.py --seeds 7 --out runs/low-fpr       # overfit and purchase-small, 2 rounds
    python simulations/low_fpr_headline.py --runs runs/low-fpr/overfit-s7     # only the table, of finished runs

Columns: the best single attack on those records (which attack that is, is only known after the fact: it reads
the scored records' membership), the attack :func:`fedaudit.auditor.results.low_fpr_choice` chose on the known
records (the report's figure: a smoothed TPR at 2% FPR), the one a smoothed TPR at 1% FPR would choose, and the
attack the former rule chose (the highest TPR at 1% FPR on the known records, at one false positive below 100
known non-members), and four mixes of every candidate's scores, each made rank-normal over the scored records (no
membership read): their mean, the mean of the two with the highest smoothed TPR at 2% FPR on the known records,
their maximum, and a logistic regression on them fitted on the known records (the per-round attacks' classifier,
stacking the candidates). Per round the candidates are the view's attacks;
across rounds the stacked attack and each attack's mean over the rounds. The last lines count how often each
rule is at least the best single attack, and its mean shortfall in percentage points. Runs already finished
under ``--out`` are not run again.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("overfit", "purchase-small")


def former_rate(scores, member, pool) -> float:
    """The former choice's criterion: TPR at 1% FPR on the pool (one false positive below 100 non-members)."""
    from fedaudit.metrics import roc_counts

    m, n = scores[member & pool], scores[~member & pool]
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if m.size == 0 or n.size == 0:
        return -np.inf
    c = roc_counts(m, n)
    allowed = max(1, math.floor(0.01 * c.n_nonmembers + 1e-9))
    return float(c.tpr[int(np.searchsorted(c.fp, allowed, side="right")) - 1])


def _tpr(score, on_m, on_n) -> float:
    from fedaudit.auditor.results import summary_or_none

    s = summary_or_none(score[on_m], score[on_n])
    return float("nan") if s is None else float(np.nan_to_num(s.tpr_at_1pct, nan=0.0))


def rank_normal(score, eligible) -> np.ndarray:
    """The score's ranks among the eligible records as standard-normal quantiles (NaN elsewhere)."""
    from scipy.stats import norm, rankdata

    score = np.asarray(score, np.float64)
    ok = np.isfinite(score) & eligible
    out = np.full(score.shape, np.nan)
    out[ok] = norm.ppf(rankdata(score[ok]) / (ok.sum() + 1.0))
    return out


def mixes(scores: dict, member, pool, eligible) -> dict:
    """{mix: per-record score}: the mean, the mean of the two best on the known records and the maximum of the
    candidates' rank-normal scores, and a logistic regression on them fitted on the known records."""
    from fedaudit.auditor.attack import Logistic
    from fedaudit.auditor.results import tail_rate

    z = {a: rank_normal(s, eligible) for a, s in scores.items()}
    rate = {a: tail_rate(np.asarray(s, np.float64), member, pool) for a, s in scores.items()}
    top = sorted(z, key=lambda a: -rate[a])[:2]
    rows = np.stack(list(z.values()), axis=1)
    stacked = Logistic().fit(rows[pool], member[pool]).decision_function(rows)   # NaN imputed by the mean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)         # all-NaN rows: records that no model scored
        return {"mean": np.nanmean(rows, axis=1),
                "mean of best 2": np.nanmean(np.stack([z[a] for a in top]), axis=0),
                "max": np.nanmax(rows, axis=1), "logistic": stacked}


def compare(scores: dict, member, known, eligible) -> dict:
    """{rule: (attack, TPR at 1% FPR on the unknown records)} for the best single attack, the choice, the
    former choice and the mixes; ``scores`` in headline-rank order."""
    from fedaudit.auditor.results import MIN_KNOWN_NONMEMBERS, low_fpr_choice, tail_rate

    name, unknown = low_fpr_choice(scores, member, known, eligible)
    mu, nu = member & unknown, ~member & unknown
    tpr = {a: _tpr(np.asarray(s, np.float64), mu, nu) for a, s in scores.items()}
    pool = known & eligible
    rules = {"smoothed at 1%": lambda s: tail_rate(s, member, pool, 0.01),
             "former": lambda s: former_rate(s, member, pool)}
    out = {"choice": (name, tpr[name])}
    for rule, rate in rules.items():
        chosen = next(iter(scores))
        if np.sum(pool & ~member) >= MIN_KNOWN_NONMEMBERS:
            values = {a: rate(np.asarray(s, np.float64)) for a, s in scores.items()}
            chosen = max(scores, key=lambda a: values[a])
        out[rule] = (chosen, tpr[chosen])
    for mix, score in mixes(scores, member, pool, eligible).items():
        out[mix] = ("mix", _tpr(score, mu, nu))
    best = max(tpr, key=lambda a: tpr[a] if np.isfinite(tpr[a]) else -1.0)
    return {"best single": (best, tpr[best]), **out, "unknown": (int(mu.sum()), int(nu.sum()))}


def rows_of(run_dir: Path) -> list:
    """(where, threat model, :func:`compare`) per round and across rounds, from the run's saved arrays."""
    import fedaudit.auditor.aggregate as ag
    from fedaudit.auditor.attack import audit_attacks, headline, ranked_scores, view_attacks
    from fedaudit.auditor.records import AuditRecords
    from fedaudit.auditor.state import AUDIT_DIR, load_round, round_path, saved_rounds
    from fedaudit.config import load_scenario
    from fedaudit.schema import round_key

    scenario = load_scenario(run_dir / "scenario.toml")
    rec = AuditRecords.load(run_dir / AUDIT_DIR / "records.npz")
    attacks, _ = audit_attacks(scenario.audit.attacks, scenario.audit.reference_models)
    out = []
    for r in saved_rounds(run_dir):
        d = load_round(round_path(run_dir, r))
        for tm in scenario.audit.threat_models:
            mine = [a for a in view_attacks(attacks, tm) if round_key(tm, "score", a) in d]
            if not mine:
                continue
            key = round_key(tm, "eligible")
            eligible = d[key].astype(bool) if key in d else np.ones(len(rec), dtype=bool)
            scores = ranked_scores({a: d[round_key(tm, "score", a)].astype(np.float64) for a in mine}, headline(mine))
            out.append((f"round {r}", tm, compare(scores, rec.member, rec.known, eligible)))
    original = ag._aggregate_view

    def across(view, attacks_, feature_names, round_clients):   # the aggregation's own candidates
        result = original(view, attacks_, feature_names, round_clients)
        means = {a: ag._nan_reduce(np.nanmean, np.stack([view.scores(t, a) for t in view.rounds], axis=1))
                 for a in attacks_ if all(round_key(view.tm, "score", a) in view.data[t] for t in view.rounds)}
        scores = {result["stack_name"]: result["score"], **ranked_scores(means, view.head)}
        out.append(("across rounds", view.tm, compare(scores, view.records.member, view.records.known,
                                                      result["eligible"])))
        return result

    ag._aggregate_view = across
    try:
        ag.aggregate_run(run_dir, write=False)
    finally:
        ag._aggregate_view = original
    return out


def pct(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.1f}%"


def table(run_dirs) -> dict:
    """Print the comparison of every run; returns {rule: (at least the best single, comparisons, mean gap)}."""
    gaps = {"choice": [], "smoothed at 1%": [], "former": [], "mean": [], "mean of best 2": [], "max": [],
            "logistic": []}
    for run_dir in run_dirs:
        print(f"\n{run_dir}\n| where | threat model | best single attack | choice (2%) | smoothed at 1% | "
              "former choice | mean | mean of best 2 | max | logistic | unknown m/n |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
        for where, tm, c in rows_of(Path(run_dir)):
            best = c["best single"][1]
            for rule in gaps:
                gaps[rule].append(c[rule][1] - best)
            cells = " | ".join(f"{c[k][0]} {pct(c[k][1])}".removeprefix("mix ") for k in ("best single", *gaps))
            print(f"| {where} | {tm} | {cells} | {c['unknown'][0]}/{c['unknown'][1]} |")
    print("\n| rule | >= best single attack | mean difference (points) |\n|---|---|---|")
    summary = {}
    for rule, g in gaps.items():
        g = np.asarray(g)
        ok = g[np.isfinite(g)]
        summary[rule] = (int(np.sum(ok >= -1e-12)), int(ok.size), float(100 * ok.mean()) if ok.size else math.nan)
        print(f"| {rule} | {summary[rule][0]}/{summary[rule][1]} | {summary[rule][2]:+.2f} |")
    return summary


def finished_runs(scenarios, seeds, rounds: int, out) -> list:
    """The run directories ``out/<scenario>-s<seed>``, each run first unless it finished before."""
    from fedaudit.config import load_scenario
    from fedaudit.run import run_scenario

    run_dirs = []
    for name in scenarios:
        for seed in seeds:
            run_dir = Path(out) / f"{name}-s{seed}"
            if not (run_dir / "summary.json").exists():        # rerunning the script skips finished runs
                scenario = load_scenario(REPO / "scenarios" / f"{name}.toml",
                                         {"federation.rounds": rounds, "federation.seed": seed})
                run_scenario(scenario, out=run_dir)
            run_dirs.append(run_dir)
    return run_dirs


def arguments(description: str, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--out", default="runs/low-fpr", help="folder for the runs")
    parser.add_argument("--runs", nargs="+", help="finished run directories: print their table, run nothing")
    args = parser.parse_args(argv)
    return args.runs or finished_runs(args.scenarios, args.seeds, args.rounds, args.out)


def main(argv=None) -> dict:
    return table(arguments(__doc__.splitlines()[0], argv))


if __name__ == "__main__":
    main()
