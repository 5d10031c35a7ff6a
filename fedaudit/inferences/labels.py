"""Label inference: the class histogram of each client's records, read from its update.

The gradient of the cross-entropy with respect to the output layer's bias is the batch mean of ``softmax - onehot``,
so the bias's change over local training counts each class's records, offset by what the model predicted along
the way (iDLG, Zhao et al. 2020, for one record; LLG, Wainakh et al. 2022, for a batch; Dimitrov et al. 2022 for
several local steps). With an adaptive optimizer (Adam) and several epochs the change is no longer proportional
to the counts, so the adversary calibrates the relation the way Dimitrov et al. estimate a record's impact: it
simulates shadow clients, local training from the same weights with the scenario's optimizer, learning rate,
epochs and batch size on population records of random class mixes and sizes, and fits a ridge regression from
the update's features to the class proportions. The features are the output bias's change per local step (scaled
by the learning rate) and the shift of the model's mean prediction on population records (a client's model
leans towards the classes it trained on). Nothing of the client's data is used; the client's record count is
the ``num_examples`` every FedAvg client reports.

Scored against the truth (the ledger's labels of the client's records) by the total-variation distance, beside
the baseline of guessing the population's class mix. Under secure aggregation (and for any adversary that sees
the global model) the same regression, fitted on averaged shadow clients, reads the federation's mix from the
global update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedaudit.inferences.base import Inference, register_inference

SHADOWS = 32          # shadow clients simulated per round
PROBE = 256           # population records whose mean prediction is a feature
RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
FEDERATIONS = 200     # averaged shadow clients that calibrate the reading of a global update
_STREAM = 19


def tv_distance(p, q) -> float:
    """Total-variation distance between two distributions over the same classes."""
    return float(0.5 * np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


def histogram(labels, num_classes: int) -> np.ndarray:
    """Class proportions of ``labels`` (uniform when there are none)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes].astype(float)
    return counts / counts.sum() if counts.sum() else np.full(num_classes, 1.0 / num_classes)


def output_bias(weights, num_classes: int) -> int:
    """Index (in ``get_weights`` order) of the output layer's bias: the last 1-D array of ``num_classes``."""
    for i in range(len(weights) - 1, -1, -1):
        if np.ndim(weights[i]) == 1 and np.shape(weights[i])[0] == num_classes:
            return i
    raise ValueError(f"label inference: the model has no output bias of {num_classes} classes")


@dataclass
class LabelRegressor:
    """Ridge regression from an update's features to class proportions (standardised features)."""

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, proportions: np.ndarray, ridge: float | None = None) -> "LabelRegressor":
        """Fitted with ``ridge``, or (None) the ridge of :data:`RIDGES` with the least 4-fold cross-validated TV
        error on the shadows: uninformative features then shrink the estimate to the shadows' mean mix."""
        if ridge is None:
            ridge = min(RIDGES, key=lambda a: _cv_error(features, proportions, a))
        mean, scale = features.mean(0), features.std(0) + 1e-8
        z = (features - mean) / scale
        target = proportions - proportions.mean(0)
        coef = np.linalg.solve(z.T @ z + ridge * len(z) * np.eye(z.shape[1]), z.T @ target)
        return cls(coef, proportions.mean(0), mean, scale)

    def predict(self, features: np.ndarray) -> np.ndarray:
        raw = np.clip(((np.atleast_2d(features) - self.mean) / self.scale) @ self.coef + self.intercept, 0, None)
        total = raw.sum(1, keepdims=True)
        uniform = np.full_like(raw, 1.0 / raw.shape[1])
        return np.where(total > 0, raw / np.where(total > 0, total, 1), uniform)


def _cv_error(features: np.ndarray, proportions: np.ndarray, ridge: float, folds: int = 4) -> float:
    fold = np.arange(len(features)) % folds
    errors = []
    for f in range(folds):
        fit = LabelRegressor.fit(features[fold != f], proportions[fold != f], ridge)
        est = fit.predict(features[fold == f])
        errors.append(0.5 * np.abs(est - proportions[fold == f]).sum(1))
    return float(np.mean(np.concatenate(errors)))


class UpdateReader:
    """The features of an update, and the shadow clients that calibrate them, for one round."""

    def __init__(self, sim, previous, probe_x, num_classes: int):
        self.sim, self.previous, self.probe_x, self.num_classes = sim, previous, probe_x, num_classes
        self.bias = output_bias(previous, num_classes)
        self.prior = sim.probs(previous, probe_x).mean(0)

    def features(self, weights, n: float) -> np.ndarray:
        step = (np.asarray(weights[self.bias], float) - np.asarray(self.previous[self.bias], float))
        step /= self.sim.learning_rate * self.sim.steps(n)
        return np.r_[step, self.sim.probs(weights, self.probe_x).mean(0) - self.prior]

    def shadows(self, x_pop, y_pop, sizes, count: int, rng) -> tuple[list, np.ndarray, np.ndarray]:
        """``count`` shadow clients: (weights, record counts, class proportions), of the sizes in ``sizes`` in turn
        (the round's clients' record counts) and class mixes drawn from a Dirichlet of a random concentration,
        trained on population records."""
        by_class = [np.flatnonzero(y_pop == c) for c in range(self.num_classes)]
        present = np.array([b.size > 0 for b in by_class])
        weights, ns, props = [], [], []
        for i in range(count):
            n = int(sizes[i % len(sizes)])
            alpha = float(np.exp(rng.uniform(np.log(0.05), np.log(10.0))))
            mix = rng.dirichlet(np.full(int(present.sum()), alpha))
            full = np.zeros(self.num_classes)
            full[present] = mix
            counts = rng.multinomial(n, full)
            idx = np.concatenate([rng.choice(by_class[c], size=k, replace=True) for c, k in enumerate(counts) if k])
            weights.append(self.sim.train(self.previous, x_pop[idx], y_pop[idx], seed=int(rng.integers(2 ** 31))))
            ns.append(n)
            props.append(counts / n)
        return weights, np.asarray(ns, float), np.asarray(props)


def read_clients(ctx, limit: int, rng) -> list:
    """The clients whose label mix is read this round: all of them up to ``limit``, else a seeded sample of
    ``limit`` (the per-round cost stays bounded at thousands of clients; the figures are means over clients)."""
    ids = [k for k in sorted(ctx.clients) if int(k) not in ctx.non_finite]
    if len(ids) <= limit:
        return ids
    return sorted(rng.choice(np.asarray(ids, dtype=object), size=limit, replace=False).tolist())


def mean_weights(weights: list, n: np.ndarray) -> list:
    """FedAvg's mean of weight lists, weighted by record counts."""
    w = np.asarray(n, float) / float(np.sum(n))
    return [sum(wi * np.asarray(ws[j], np.float64) for wi, ws in zip(w, weights)).astype(np.float32)
            for j in range(len(weights[0]))]


def federation_regressor(reader: UpdateReader, weights, ns, props, members: int, count: int, rng) -> LabelRegressor:
    """The regression for a global update: fitted on FedAvg means of shadow federations, each of one shadow
    client per client of the round, of that client's size (shadow ``i`` has the size of client ``i % members``)."""
    feats, targets = [], []
    slots = [np.arange(j, len(weights), members) for j in range(min(members, len(weights)))]
    for _ in range(count):
        pick = np.array([rng.choice(slot) for slot in slots])
        n = ns[pick]
        feats.append(reader.features(mean_weights([weights[i] for i in pick], n), n.mean()))
        targets.append((props[pick] * n[:, None]).sum(0) / n.sum())
    return LabelRegressor.fit(np.asarray(feats), np.asarray(targets))


@register_inference
class LabelInference(Inference):
    name = "labels"
    title = "Label inference"
    family = "property"
    description = ("each client's class histogram recovered from its update (the output layer's bias and the "
                   "model's predictions), beside guessing the population's class mix")

    def run(self, core, ctx) -> dict | None:
        from fedaudit.auditor.runtime import materialize

        previous = ctx.previous
        if previous is None:
            return None
        r, C = core.records, core.num_classes
        sim = core.inference_simulator()
        rng = np.random.default_rng(np.random.SeedSequence([core.seed, _STREAM, ctx.round]))
        pop = r.population_sample
        x_all, y_all = core.inference_data()
        x_pop, y_pop = x_all[pop], r.label[pop]
        probe = x_pop[rng.choice(pop.size, size=min(PROBE, pop.size), replace=False)]
        baseline = histogram(r.label[~r.member], C)
        reader = UpdateReader(sim, previous, probe, C)
        taking = [int(k) for k in (ctx.ids or (ctx.record or {}).get("clients") or [])]
        sizes = np.array([max(1, int(np.sum(r.owner == k))) for k in taking] or [max(1, int(r.member.sum()))])
        weights, ns, props = reader.shadows(x_pop, y_pop, sizes, SHADOWS, rng)
        out: dict = {"shadows": SHADOWS, "baseline": "population class mix"}
        clients = []
        if ctx.clients:
            reg = LabelRegressor.fit(np.asarray([reader.features(w, n) for w, n in zip(weights, ns)]), props)
            for k in read_clients(ctx, int(core.scenario.audit.label_clients), rng):
                theta = materialize(ctx.clients[k])
                n = int(np.sum(r.owner == int(k)))
                truth = histogram(r.label[r.owner == int(k)], C)
                est = reg.predict(reader.features(theta, n))[0]
                clients.append({"client": int(k), "records": n, "tv": tv_distance(est, truth),
                                "baseline_tv": tv_distance(baseline, truth),
                                "estimate": [round(float(v), 4) for v in est],
                                "truth": [round(float(v), 4) for v in truth]})
            out["clients"] = clients
            out["mean_tv"] = float(np.mean([c["tv"] for c in clients])) if clients else None
            out["mean_baseline_tv"] = float(np.mean([c["baseline_tv"] for c in clients])) if clients else None
        glob = ctx.aggregate if ctx.aggregate is not None else ctx.new
        if glob is not None and taking:
            glob = materialize(glob)
            n = np.array([np.sum(r.owner == k) for k in taking], float)
            truth = (np.array([histogram(r.label[r.owner == k], C) for k in taking]) * n[:, None]).sum(0) / n.sum()
            fed = federation_regressor(reader, weights, ns, props, len(taking), FEDERATIONS, rng)
            est = fed.predict(reader.features(glob, n.mean()))[0]
            out["federation"] = {"tv": tv_distance(est, truth), "baseline_tv": tv_distance(baseline, truth),
                                 "estimate": [round(float(v), 4) for v in est],
                                 "truth": [round(float(v), 4) for v in truth],
                                 "from": "the aggregate" if ctx.secure_aggregation else "the global model"}
        return out

    def summarize(self, rounds: list[dict]) -> dict:
        per_client = [c for r in rounds for c in r.get("clients") or []]
        fed = [r["federation"] for r in rounds if r.get("federation")]
        out: dict = {"rounds": len(rounds)}
        if per_client:
            tv = np.array([c["tv"] for c in per_client])
            base = np.array([c["baseline_tv"] for c in per_client])
            out.update(mean_tv=float(tv.mean()), mean_baseline_tv=float(base.mean()),
                       mean_tv_ci=_mean_ci(tv), mean_baseline_tv_ci=_mean_ci(base),
                       ratio=float(tv.mean() / base.mean()) if base.mean() > 0 else None,
                       client_rounds=len(per_client),
                       clients=_per_client(per_client))
        if fed:
            out["federation"] = {"mean_tv": float(np.mean([f["tv"] for f in fed])),
                                 "mean_baseline_tv": float(np.mean([f["baseline_tv"] for f in fed])),
                                 "last": fed[-1]}
        return out


    def finding(self, m: dict) -> str:
        parts = []
        if m.get("mean_tv") is not None:
            ratio = m.get("ratio")
            verdict = ("the update reveals each client's label mix" if ratio is not None and ratio <= 0.5 else
                       "the update reveals part of each client's label mix" if ratio is not None and ratio < 0.9 else
                       "no better than guessing the population's mix")
            parts.append(f"Per client and round ({m.get('client_rounds')}), the recovered class histogram is "
                         f"{_f(m['mean_tv'])} from the truth in total variation {_ci(m.get('mean_tv_ci'))}, against "
                         f"{_f(m.get('mean_baseline_tv'))} {_ci(m.get('mean_baseline_tv_ci'))} for the population's "
                         f"mix: {verdict}.")
        fed = m.get("federation")
        if fed:
            tv, base = fed["mean_tv"], fed["mean_baseline_tv"]
            verdict = ("closer than guessing the population's mix" if tv is not None and base is not None and tv < base
                       else "no better than guessing the population's mix: this reading does not reveal it")
            parts.append(f"The federation's mix read from {fed['last'].get('from', 'the global model')}: total "
                         f"variation {_f(tv)} (population mix: {_f(base)}), {verdict}.")
        return " ".join(parts)


def _f(v) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def _ci(ci) -> str:
    return f"(95% CI {_f(ci[0])}-{_f(ci[1])})" if ci and ci[0] is not None else ""


def _mean_ci(values: np.ndarray, draws: int = 1000) -> list:
    """A 95% bootstrap interval of the mean (fixed seed: the same file gives the same interval)."""
    if values.size < 2:
        return [None, None]
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, values.size, size=(draws, values.size))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def _per_client(rows: list) -> list:
    out = []
    for k in sorted({c["client"] for c in rows}):
        mine = [c for c in rows if c["client"] == k]
        out.append({"client": k, "records": mine[-1]["records"], "mean_tv": float(np.mean([c["tv"] for c in mine])),
                    "baseline_tv": float(np.mean([c["baseline_tv"] for c in mine])),
                    "last_estimate": mine[-1]["estimate"], "truth": mine[-1]["truth"]})
    return out
