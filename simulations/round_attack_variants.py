"""Could the per-round auditor's trained attacks name more members at low FPR with another classifier? On the
features every round saved (``audit/round_*.npz``), the same records, folds and known records as the auditor:

    python simulations/round_attack_variants.py --seeds 21 22 23 24 --out runs/low-fpr    # runs what is missing
    python simulations/round_attack_variants.py --runs runs/low-fpr/overfit-s21           # finished runs only

Per round and threat model, the ``whitebox`` and ``blackbox`` columns are cross-fitted by fold exactly as
:func:`fedaudit.auditor.attack.fit_folds` does (fitted on the known records outside the fold) with each classifier
below: the auditor's logistic regression (its penalty chosen among ``ROUND_C`` by the known records' out-of-fold
deviance, what runs), the logistic regression at fixed penalties (C = 100, 1 (what ran before the choice), 0.1,
0.01), scikit-learn's random forest (300 trees, leaves of 2 records, as the meminf ``stack="forest"`` option) and
gradient boosting (100 trees of 8 leaves), and the mean rank of the auditor's logistic regression and the forest.
Every score is measured on the records the adversary did not know, beside the loss threshold the round saved. The
last lines give, per threat model, the mean AUC and TPR at 1% FPR over the rounds, and how often each is at least
the loss threshold and at least the auditor's classifier at 1% FPR (TPR at 0.1% FPR needs 1,000 unknown
non-members, which these runs do not have). The runs are those of ``simulations/low_fpr_headline.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from low_fpr_headline import arguments  # noqa: E402

AUDITOR = "logistic, C chosen (auditor)"


def classifiers() -> dict:
    """{name: a function returning an unfitted classifier}."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    from fedaudit.auditor.attack import Logistic

    return {"logistic C=100": lambda: Logistic(100.0), "logistic C=1": lambda: Logistic(1.0),
            "logistic C=0.1": lambda: Logistic(0.1), "logistic C=0.01": lambda: Logistic(0.01),
            "random forest": lambda: RandomForestClassifier(300, min_samples_leaf=2, n_jobs=1, random_state=0),
            "gradient boosting": lambda: HistGradientBoostingClassifier(max_iter=100, learning_rate=0.05,
                                                                        max_leaf_nodes=8, random_state=0)}


def log_odds(clf, x: np.ndarray) -> np.ndarray:
    if hasattr(clf, "decision_function"):
        return clf.decision_function(x)
    p = np.clip(clf.predict_proba(np.nan_to_num(x))[:, 1], 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def cross_fitted(make, x: np.ndarray, member, fold, known, eligible) -> np.ndarray:
    """Record i scored by a classifier fitted on the known, eligible records outside fold[i] (missing values: the
    forest reads them as 0, gradient boosting routes them itself, the logistic regression imputes the mean)."""
    out = np.full(len(x), np.nan)
    usable = known & eligible & ~np.isnan(x).all(axis=1)
    for f in np.unique(fold):
        train = usable & (fold != f)
        clf = make()
        clf.fit(x[train] if hasattr(clf, "decision_function") else np.nan_to_num(x[train]), member[train])
        out[fold == f] = log_odds(clf, x[fold == f])
    return out


def rank(score: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(score) / score.size


def rows_of(run_dir: Path) -> list:
    """(round, threat model, {variant: (AUC, TPR at 1% FPR)}) on the unknown records."""
    from fedaudit.auditor.attack import ROUND_C, clean_rows, fit_folds, spec
    from fedaudit.auditor.records import AuditRecords
    from fedaudit.auditor.results import summary_or_none
    from fedaudit.auditor.state import AUDIT_DIR, load_round, round_path, saved_rounds
    from fedaudit.config import load_scenario
    from fedaudit.schema import round_key

    scenario = load_scenario(run_dir / "scenario.toml")
    rec = AuditRecords.load(run_dir / AUDIT_DIR / "records.npz")
    makers = classifiers()
    out = []
    for r in saved_rounds(run_dir):
        d = load_round(round_path(run_dir, r))
        names = [str(n) for n in d["feature_names"]]
        for tm in scenario.audit.threat_models:
            if round_key(tm, "features") not in d:
                continue
            x = clean_rows(d[round_key(tm, "features")])
            key = round_key(tm, "eligible")
            eligible = d[key].astype(bool) if key in d else np.ones(len(rec), dtype=bool)
            scores = {}
            for attack in ("whitebox", "blackbox"):
                xa = x[:, spec(attack).columns(names)]
                auditor = fit_folds(xa, rec.member, rec.fold, rec.known, c=ROUND_C, eligible=eligible)
                scores[f"{attack}: {AUDITOR}"] = auditor.score(np.arange(len(rec)), xa)
                for name, make in makers.items():
                    scores[f"{attack}: {name}"] = cross_fitted(make, xa, rec.member, rec.fold, rec.known, eligible)
                scores[f"{attack}: logistic + forest"] = (rank(scores[f"{attack}: {AUDITOR}"])
                                                          + rank(scores[f"{attack}: random forest"]))
            scores["loss threshold"] = d[round_key(tm, "score", "loss")].astype(np.float64)
            unknown = eligible & ~rec.known
            m, n = rec.member & unknown, ~rec.member & unknown
            metrics = {}
            for name, s in scores.items():
                summary = summary_or_none(s[m], s[n])
                metrics[name] = (summary.auc, float(np.nan_to_num(summary.tpr_at_1pct)))
            out.append((r, tm, metrics))
    return out


def table(run_dirs) -> dict:
    """Print every round's figures and the means per threat model; returns {threat model: {variant: means}}."""
    rows = []
    for run_dir in run_dirs:
        for r, tm, metrics in rows_of(Path(run_dir)):
            rows.append((tm, metrics))
            cells = "; ".join(f"{k} {v[0]:.3f} / {100 * v[1]:.1f}%" for k, v in metrics.items())
            print(f"{Path(run_dir).name} round {r} {tm}: {cells}")
    result = {}
    for tm in dict.fromkeys(tm for tm, _ in rows):
        mine = [m for t, m in rows if t == tm]
        loss = np.array([m["loss threshold"] for m in mine])
        print(f"\n{tm}, {len(mine)} rounds\n| classifier | AUC | TPR at 1% FPR | at 1%: >= loss threshold | "
              ">= the auditor's |\n|---|---|---|---|---|")
        result[tm] = {}
        for name in mine[0]:
            a = np.array([m[name] for m in mine])
            own = np.array([m[f"{name.split(':')[0]}: {AUDITOR}"] if ":" in name else m[name]
                            for m in mine])
            result[tm][name] = (float(a[:, 0].mean()), float(a[:, 1].mean()))
            at_least = [int(np.sum(a[:, 1] >= other[:, 1])) for other in (loss, own)]
            print(f"| {name} | {a[:, 0].mean():.3f} | {100 * a[:, 1].mean():.1f}% | {at_least[0]}/{len(mine)} | "
                  f"{at_least[1]}/{len(mine)} |")
    return result


def main(argv=None) -> dict:
    return table(arguments(__doc__.splitlines()[0], argv))


if __name__ == "__main__":
    main()
