"""Attribute inference: a record's sensitive attribute inferred through the model from its other attributes.

For an audited record whose sensitive attribute (one column of tabular data, ``[audit] sensitive_attribute``) the
adversary does not know, it tries every candidate value (the column's distinct values among the population
records, or 16 quantiles of a continuous one) and asks the model:

- white-box: the candidate under which the model's loss on the record's label is lowest (Fredrikson et al. 2014;
  Yeom et al. 2018);
- a trained attack on the outputs: a logistic regression from the per-candidate losses to the value, fitted on
  population records whose attribute is known.

Jayaraman and Evans (CCS 2022) showed that such accuracy mostly is what imputation from the other attributes
achieves anyway, so the imputation model (a logistic regression on the other attributes and the label, fitted on
the same population records) is the baseline, and the privacy risk is the model's advantage over it. Each is
measured on members and on held-out non-members separately (accuracy, and AUC where the attribute is binary, with
bootstrap intervals); a larger advantage on members than on non-members is leakage of the training records
themselves. NumPy and scikit-learn; the model is read through a ``probs(x)`` callable.
"""

from __future__ import annotations

import numpy as np

from fedaudit.inferences.base import Inference, register_inference

MAX_CANDIDATES = 16
MAX_RECORDS = 1000         # audited records of each kind scored per round
_STREAM = 23


def candidate_values(values: np.ndarray, limit: int = MAX_CANDIDATES) -> np.ndarray:
    """The values the adversary tries: the distinct values, or ``limit`` quantiles of a continuous column."""
    distinct = np.unique(values)
    if distinct.size <= limit:
        return distinct.astype(np.float32)
    return np.unique(np.quantile(values, (np.arange(limit) + 0.5) / limit)).astype(np.float32)


def nearest(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index of the candidate nearest to each value (the truth an inference is scored against)."""
    return np.abs(np.asarray(values, float)[:, None] - candidates[None, :]).argmin(1)


def candidate_losses(probs, x: np.ndarray, y: np.ndarray, column: int, candidates: np.ndarray) -> np.ndarray:
    """(n, V): the model's cross-entropy on each record's label with its attribute set to each candidate."""
    flat = x.reshape(len(x), -1)
    out = np.empty((len(x), candidates.size))
    for i, v in enumerate(candidates):
        z = flat.copy()
        z[:, column] = v
        p = probs(z.reshape(x.shape))
        out[:, i] = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))
    return out


def _fit_predict(features_fit, target_fit, features, classes: int) -> np.ndarray:
    """(n, V) class probabilities of a logistic regression (a constant one when the fit set holds one value)."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(target_fit)
    out = np.zeros((len(features), classes))
    if present.size < 2:
        out[:, present[0]] = 1.0
        return out
    model = LogisticRegression(max_iter=500, C=1.0).fit(features_fit, target_fit)
    out[:, model.classes_] = model.predict_proba(features)
    return out


def _standard(f_fit, f):
    mu, sd = f_fit.mean(0), f_fit.std(0) + 1e-8
    return (f_fit - mu) / sd, (f - mu) / sd


def _accuracy(correct: np.ndarray, draws: int, rng) -> dict:
    if correct.size == 0:
        return {"accuracy": None, "accuracy_ci": [None, None]}
    boots = correct[rng.integers(0, correct.size, size=(draws, correct.size))].mean(1)
    return {"accuracy": float(correct.mean()),
            "accuracy_ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]}


def _binary_auc(score: np.ndarray, truth: np.ndarray) -> float | None:
    from fedaudit.metrics import auc

    if truth.min() == truth.max():
        return None
    return float(auc(score[truth == 1], score[truth == 0]))


def score_group(guesses: dict, truth: np.ndarray, binary_scores: dict | None, seed: int, draws: int = 500) -> dict:
    """Accuracy (and AUC for a binary attribute) of each guess with bootstrap intervals, and each attack's
    advantage over ``imputation`` (paired bootstrap: the same resampled records for both)."""
    rng = np.random.default_rng(seed)
    out = {"records": int(truth.size)}
    correct = {k: (g == truth).astype(float) for k, g in guesses.items()}
    for k, c in correct.items():
        out[k] = _accuracy(c, draws, np.random.default_rng([seed, len(k)]))
        if binary_scores is not None:
            out[k]["auc"] = _binary_auc(binary_scores[k], truth)
    if truth.size:
        idx = rng.integers(0, truth.size, size=(draws, truth.size))
        for k in correct:
            if k == "imputation":
                continue
            diff = correct[k] - correct["imputation"]
            boots = diff[idx].mean(1)
            out[k]["advantage"] = float(diff.mean())
            out[k]["advantage_ci"] = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
    return out


def infer_attribute(probs, x: np.ndarray, y: np.ndarray, column: int, member: np.ndarray, fit: np.ndarray,
                    num_classes: int, seed: int = 0) -> dict:
    """The attribute inference on records (x, y): fitted on the ``fit`` records (population, attribute known),
    scored on the ``member`` records and on the non-members outside ``fit``."""
    flat = x.reshape(len(x), -1)
    if not 0 <= column < flat.shape[1]:
        raise ValueError(f"sensitive attribute: column {column} is outside the records' {flat.shape[1]} columns")
    candidates = candidate_values(flat[fit, column])
    truth = nearest(flat[:, column], candidates)
    V = candidates.size
    losses = candidate_losses(probs, x, y, column, candidates)
    guesses, binary = {}, {} if V == 2 else None
    guesses["white-box"] = losses.argmin(1)
    relative = losses - losses.min(1, keepdims=True)
    f_fit, f_all = _standard(relative[fit], relative)
    trained = _fit_predict(f_fit, truth[fit], f_all, V)
    guesses["trained"] = trained.argmax(1)
    others = np.delete(flat, column, axis=1)
    onehot = np.eye(num_classes)[y]
    o_fit, o_all = _standard(np.c_[others[fit], onehot[fit]], np.c_[others, onehot])
    imputed = _fit_predict(o_fit, truth[fit], o_all, V)
    guesses["imputation"] = imputed.argmax(1)
    if binary is not None:
        binary.update({"white-box": losses[:, 0] - losses[:, 1], "trained": trained[:, 1], "imputation": imputed[:, 1]})
    out = {"column": int(column), "candidates": int(V), "binary": V == 2}
    for name, mask in (("members", member), ("nonmembers", ~member & ~fit)):
        out[name] = score_group({k: g[mask] for k, g in guesses.items()}, truth[mask],
                                {k: s[mask] for k, s in binary.items()} if binary is not None else None,
                                seed=seed + (0 if name == "members" else 1))
    m, n = out["members"], out["nonmembers"]
    for k in ("white-box", "trained"):
        a, b = m.get(k, {}).get("advantage"), n.get(k, {}).get("advantage")
        out.setdefault("member_gap", {})[k] = None if a is None or b is None else a - b
    return out


def resolve_column(attribute: str, scenario=None) -> int:
    """``[audit] sensitive_attribute`` as a column index: digits are an index; a name is looked up in the header
    of a csv dataset (``[data] dataset = "csv"``)."""
    from fedaudit.errors import ConfigError

    text = str(attribute).strip()
    if text.isdigit():
        return int(text)
    options = dict(scenario.data.options) if scenario is not None else {}
    if scenario is None or scenario.data.dataset != "csv" or "path" not in options:
        raise ConfigError(f"audit.sensitive_attribute: {text!r} is a column name, which needs a csv dataset with a "
                          "header; give a column index (0-based, among the features) instead")
    from fedaudit.data.loaders import _first_row, _label_position

    header = _first_row(options["path"], options.get("delimiter", ","))
    label = _label_position(options.get("label_column", -1), header, len(header), options["path"])
    names = [h for i, h in enumerate(header) if i != label]
    if text not in names:
        raise ConfigError(f"audit.sensitive_attribute: no column {text!r} in {options['path']}; "
                          f"allowed: {', '.join(names)}")
    return names.index(text)


@register_inference
class AttributeInference(Inference):
    name = "attributes"
    title = "Attribute inference"
    family = "attribute"
    description = ("a record's sensitive attribute through the global model (lowest-loss candidate, and an attack "
                   "trained on the outputs), against imputation from the other attributes")
    needs_features = True
    needs_trained = True

    def run(self, core, ctx) -> dict | None:
        from fedaudit.auditor.runtime import materialize

        model = ctx.aggregate if ctx.aggregate is not None else ctx.new
        if model is None:
            return None
        weights = materialize(model)
        sim = core.inference_simulator()
        r = core.records
        x, _ = core.inference_data()
        column = resolve_column(core.scenario.audit.sensitive_attribute, core.scenario)
        rng = np.random.default_rng(np.random.SeedSequence([core.seed, _STREAM]))   # the same records every round
        trained = ctx.trained
        members = np.flatnonzero(r.member & np.isin(r.owner, list(trained)))
        pop = np.flatnonzero(~r.member)
        members = np.sort(rng.choice(members, size=min(MAX_RECORDS, members.size), replace=False))
        pop = rng.permutation(pop)
        fit_rows, held = pop[: pop.size // 2], pop[pop.size // 2:][:MAX_RECORDS]
        rows = np.r_[members, fit_rows, held]
        member = np.r_[np.ones(members.size, bool), np.zeros(fit_rows.size + held.size, bool)]
        fit = np.r_[np.zeros(members.size, bool), np.ones(fit_rows.size, bool), np.zeros(held.size, bool)]
        out = infer_attribute(lambda z: sim.probs(weights, z), x[rows], r.label[rows], column, member, fit,
                              core.num_classes, seed=core.seed)
        out["model"] = "the aggregate" if ctx.secure_aggregation else "the global model"
        return out

    def summarize(self, rounds: list[dict]) -> dict:
        last = rounds[-1]
        return {"rounds": len(rounds), "last_round": last["round"], "last": {k: v for k, v in last.items()
                                                                             if k != "round"},
                "per_round": [{"round": r["round"],
                               "members_advantage": (r["members"].get("white-box") or {}).get("advantage"),
                               "nonmembers_advantage": (r["nonmembers"].get("white-box") or {}).get("advantage")}
                              for r in rounds]}

    def finding(self, m: dict) -> str:
        where = "from the audited model" if m.get("last_round") is None else \
            f"in round {m.get('last_round')}, from {(m.get('last') or {}).get('model', 'the global model')}"
        return attribute_finding(m.get("last") or {}, where)


def attribute_finding(r: dict, where: str) -> str:
    """One sentence per attack on members and non-members: accuracy against imputation, and the advantage."""
    def part(group: str, k: str) -> str:
        g = r.get(group) or {}
        a, imp = g.get(k) or {}, g.get("imputation") or {}
        if a.get("accuracy") is None:
            return f"{group}: not measured"
        ci = a.get("advantage_ci") or [None, None]
        ci_text = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci[0] is not None else ""
        return (f"{group} {a['accuracy']:.3f} vs imputation {imp.get('accuracy', float('nan')):.3f} "
                f"(advantage {a.get('advantage', float('nan')):+.3f}{ci_text})")
    return (f"Column {r.get('column')} ({r.get('candidates')} candidate values), {where}: white-box accuracy "
            f"{part('members', 'white-box')}; {part('nonmembers', 'white-box')}. Trained attack: "
            f"{part('members', 'trained')}; {part('nonmembers', 'trained')}.")
