"""Reconstruction: a client's training records recovered from its update by gradient inversion.

The adversary optimises dummy records so that the update they would produce matches the one the client sent
(DLG, Zhu et al. 2019; Inverting Gradients, Geiping et al. 2020: cosine distance, a total-variation prior on
images). Several local steps are simulated as Dimitrov et al. (2022) do: the scenario's optimizer (SGD, momentum
or Adam), learning rate, batch size and local epochs, unrolled and differentiated through (the batches in a fixed
order). The dummy records' labels come from the output bias's change (the rule of :mod:`fedaudit.inferences.labels`
for one step: LLG). The cost per round is bounded by ``[audit] reconstruction_clients`` (a seeded sample of the
round's clients) and ``reconstruction_iterations``, and reported.

Every reconstruction is scored against the client's real records by best matching (the assignment that maximises
the total PSNR): PSNR and SSIM for images, the share of features within 10% of the data range for tabular records,
beside the baseline of the population records' class means (matched the same way). The figure is the share of the
client's records reconstructed above a stated threshold (20 dB PSNR for images, 90% feature agreement for tabular
records); a reconstruction no better than the class means is reported as a failure. TensorFlow is loaded when run.
"""

from __future__ import annotations

import time

import numpy as np

from fedaudit.inferences.base import Inference, register_inference

PSNR_THRESHOLD = 20.0        # dB: an image counts as reconstructed above it
AGREEMENT_THRESHOLD = 0.9    # share of a tabular record's features within 10% of the data range
MAX_RECORDS = 256            # a client with more records is not inverted (the cost grows with them)
TV_WEIGHT = 1e-3
_STREAM = 29


# ---- scoring (NumPy) ----------------------------------------------------------------------------------------

def psnr_matrix(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """(len(a), len(b)) PSNR in dB between every pair of flattened records."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    mse = ((a[:, None, :] - b[None, :, :]) ** 2).mean(-1)
    return 10 * np.log10(data_range ** 2 / np.maximum(mse, 1e-12))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float, window: int = 3) -> float:
    """Mean SSIM of two images (H, W[, C]) over ``window`` x ``window`` uniform windows (Wang et al. 2004)."""
    a, b = np.atleast_3d(a).astype(np.float64), np.atleast_3d(b).astype(np.float64)
    from numpy.lib.stride_tricks import sliding_window_view as windows

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    wa, wb = windows(a, (window, window), axis=(0, 1)), windows(b, (window, window), axis=(0, 1))
    ma, mb = wa.mean((-1, -2)), wb.mean((-1, -2))
    va, vb = wa.var((-1, -2)), wb.var((-1, -2))
    cov = ((wa - ma[..., None, None]) * (wb - mb[..., None, None])).mean((-1, -2))
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return float(s.mean())


def agreement_matrix(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """(len(a), len(b)) share of features within 10% of the data range."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (np.abs(a[:, None, :] - b[None, :, :]) <= 0.1 * data_range).mean(-1)


def match(guesses: np.ndarray, real: np.ndarray, image: bool, data_range: float) -> dict:
    """Best matching of guessed to real records (maximal total similarity); per real record its match's PSNR
    (and SSIM) for images, feature agreement for tabular records, and the share above the threshold."""
    from scipy.optimize import linear_sum_assignment

    sim = psnr_matrix(guesses, real, data_range) if image else agreement_matrix(guesses, real, data_range)
    rows, cols = linear_sum_assignment(-sim)
    best = np.full(len(real), -np.inf if image else 0.0)
    best[cols] = sim[rows, cols]
    if image:
        best = np.where(np.isfinite(best), best, 0.0)
        ssims = [ssim(guesses[r].reshape(real.shape[1:]), real[c], data_range) for r, c in zip(rows, cols)]
        return {"psnr": float(best.mean()), "ssim": float(np.mean(ssims)) if ssims else None,
                "reconstructed": float(np.mean(best >= PSNR_THRESHOLD)), "threshold": f"PSNR >= {PSNR_THRESHOLD} dB"}
    return {"agreement": float(best.mean()), "reconstructed": float(np.mean(best >= AGREEMENT_THRESHOLD)),
            "threshold": f"feature agreement >= {AGREEMENT_THRESHOLD}"}


# ---- labels of the dummy records ------------------------------------------------------------------------------

def label_counts(bias_step: np.ndarray, prior: np.ndarray, n: int, learning_rate: float, steps: int) -> np.ndarray:
    """Integer class counts summing to ``n`` from the output bias's change (``lr`` times the sum over steps of the
    batch mean of onehot - softmax): count_c = n * (prior_c + change_c / (lr * steps)), clipped at 0, rounded by
    largest remainder."""
    raw = np.clip(n * (prior + np.asarray(bias_step, float) / (learning_rate * steps)), 0, None)
    if raw.sum() <= 0:
        raw = np.clip(np.asarray(bias_step, float), 0, None) + 1e-9
    raw = raw / raw.sum() * n
    counts = np.floor(raw).astype(int)
    for c in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[c] += 1
    return counts


# ---- the inversion (TensorFlow) -------------------------------------------------------------------------------

def simulated_update(model, weights, xs, ys, optimizer: str, learning_rate: float, batch_size: int, epochs: int):
    """The update (new - old weights, as tensors) of local training on (xs, ys), differentiable in xs."""
    import tensorflow as tf

    w = list(weights)
    n = int(xs.shape[0])
    m = [tf.zeros_like(v) for v in w]
    v2 = [tf.zeros_like(v) for v in w]
    t = 0
    b1, b2, eps = 0.9, 0.999, 1e-7
    for _ in range(epochs):
        for start in range(0, n, batch_size):
            xb, yb = xs[start:start + batch_size], ys[start:start + batch_size]
            with tf.GradientTape() as tape:
                tape.watch(w)
                logits, _ = model.stateless_call(w, [], xb, training=True)
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(yb, logits, from_logits=True))
            g = tape.gradient(loss, w)
            t += 1
            if optimizer == "sgd":
                w = [wi - learning_rate * gi for wi, gi in zip(w, g)]
            elif optimizer == "momentum":
                m = [0.9 * mi - learning_rate * gi for mi, gi in zip(m, g)]
                w = [wi + mi for wi, mi in zip(w, m)]
            else:   # adam (rmsprop is read as adam without momentum)
                beta1 = b1 if optimizer == "adam" else 0.0
                m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
                v2 = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v2, g)]
                mh = [mi / (1 - beta1 ** t) for mi in m] if beta1 else m
                vh = [vi / (1 - b2 ** t) for vi in v2]
                w = [wi - learning_rate * mi / (tf.sqrt(vi + 1e-16) + eps) for wi, mi, vi in zip(w, mh, vh)]
    return [wi - w0 for wi, w0 in zip(w, weights)]


def total_variation(x):
    import tensorflow as tf

    return tf.reduce_mean(tf.abs(x[:, 1:, :, :] - x[:, :-1, :, :])) + tf.reduce_mean(tf.abs(x[:, :, 1:, :] - x[:, :, :-1, :]))


_COMPILED: dict = {}


def _inversion(model, optimizer: str, learning_rate: float, batch_size: int, epochs: int, image: bool):
    """The compiled inversion loop (Adam on the dummy records, clipped to the data's range), one per model and
    training setting (traced again only for a new number of records)."""
    import tensorflow as tf

    key = (id(model), optimizer, float(learning_rate), int(batch_size), int(epochs), bool(image))
    if key in _COMPILED:
        return _COMPILED[key]

    def objective(x, y, w0, target):
        update = simulated_update(model, w0, x, y, optimizer, learning_rate, batch_size, epochs)
        flat = tf.concat([tf.reshape(u, [-1]) for u in update], 0)
        loss = 1 - tf.reduce_sum(flat * target) / (tf.norm(flat) * tf.norm(target) + 1e-12)
        return loss + TV_WEIGHT * total_variation(x) if image else loss

    @tf.function(reduce_retracing=True)
    def run(x, y, w0, target, iterations, low, high, lr):
        m, v = tf.zeros_like(x), tf.zeros_like(x)
        for t in tf.range(1, iterations + 1):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = objective(x, y, w0, target)
            g = tape.gradient(loss, x)
            step = tf.cast(t, tf.float32)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            x = tf.clip_by_value(x - lr * (m / (1 - 0.9 ** step)) / (tf.sqrt(v / (1 - 0.999 ** step)) + 1e-8),
                                 low, high)
        return x

    _COMPILED.clear()            # one model at a time
    _COMPILED[key] = run
    return run


def invert(model, previous, observed, labels, input_shape, *, optimizer: str, learning_rate: float, batch_size: int,
           epochs: int, iterations: int, low: float, high: float, seed: int, image: bool) -> np.ndarray:
    """Dummy records (len(labels), *input_shape) whose simulated update matches ``observed`` in cosine distance."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    run = _inversion(model, optimizer, learning_rate, batch_size, epochs, image)
    w0 = [tf.constant(np.asarray(w, np.float32)) for w in previous]
    target = tf.constant(np.concatenate([(np.asarray(o, np.float32) - np.asarray(p, np.float32)).ravel()
                                         for o, p in zip(observed, previous)]))
    x = tf.constant(rng.uniform(low, high, size=(len(labels), *input_shape)).astype(np.float32))
    out = run(x, tf.constant(np.asarray(labels, np.int64)), w0, target, tf.constant(int(iterations)),
              tf.constant(low, tf.float32), tf.constant(high, tf.float32), tf.constant(0.1 * (high - low), tf.float32))
    return out.numpy()


@register_inference
class ReconstructionInference(Inference):
    name = "reconstruction"
    title = "Reconstruction"
    family = "reconstruction"
    description = ("a sample of clients' training records recovered from their updates by gradient inversion, "
                   "beside the population's class means")
    needs_features = True

    def run(self, core, ctx) -> dict | None:
        from fedaudit.auditor.runtime import materialize

        a, f = core.scenario.audit, core.scenario.federation
        if not ctx.clients:
            return {"not_applicable": "the server sees no client's update (secure aggregation)"
                    if ctx.secure_aggregation else "no client replied this round"}
        if ctx.previous is None:
            return None
        r = core.records
        x, _ = core.inference_data()
        sim = core.inference_simulator()
        model = sim.trainer.model
        if model.non_trainable_variables:
            return {"not_applicable": "the model has non-trainable weights (e.g. normalisation statistics)"}
        image = x.ndim == 4
        pop = r.population_sample
        low, high = float(x.min()), float(x.max())
        data_range = max(high - low, 1e-6)
        rng = np.random.default_rng(np.random.SeedSequence([core.seed, _STREAM, ctx.round]))
        ids = [k for k in sorted(ctx.clients) if int(k) not in ctx.non_finite]
        chosen = sorted(rng.choice(ids, size=min(int(a.reconstruction_clients), len(ids)), replace=False).tolist())
        from fedaudit.inferences.labels import output_bias

        bias = output_bias(ctx.previous, core.num_classes)
        prior = sim.probs(ctx.previous, x[pop[: 256]]).mean(0)
        means = np.stack([x[pop][r.label[pop] == c].mean(0) if np.any(r.label[pop] == c) else x[pop].mean(0)
                          for c in range(core.num_classes)])
        clients = []
        for k in chosen:
            mine = np.flatnonzero(r.owner == int(k))
            entry = {"client": int(k), "records": int(mine.size)}
            if mine.size > MAX_RECORDS:
                entry["skipped"] = f"{mine.size} records, above the {MAX_RECORDS} this inversion handles"
                clients.append(entry)
                continue
            theta = materialize(ctx.clients[k])
            started = time.perf_counter()
            steps = sim.steps(mine.size)
            counts = label_counts(np.asarray(theta[bias]) - np.asarray(ctx.previous[bias]), prior, mine.size,
                                  f.learning_rate, steps)
            labels = np.repeat(np.arange(core.num_classes), counts)
            guesses = invert(model, ctx.previous, theta, labels, x.shape[1:], optimizer=f.optimizer,
                             learning_rate=f.learning_rate, batch_size=f.batch_size, epochs=f.local_epochs,
                             iterations=a.reconstruction_iterations, low=low, high=high,
                             seed=int(rng.integers(2 ** 31)), image=image)
            entry["seconds"] = round(time.perf_counter() - started, 3)
            entry["labels_right"] = float(np.minimum(counts, np.bincount(r.label[mine], minlength=core.num_classes))
                                          .sum() / mine.size)
            entry["attack"] = match(guesses, x[mine], image, data_range)
            entry["baseline"] = match(means[labels], x[mine], image, data_range)
            clients.append(entry)
        done = [c for c in clients if "attack" in c]
        out = {"clients": clients, "iterations": int(a.reconstruction_iterations), "image": bool(image),
               "seconds": round(sum(c.get("seconds", 0) for c in clients), 3)}
        if done:
            out["reconstructed"] = float(np.mean([c["attack"]["reconstructed"] for c in done]))
            out["baseline_reconstructed"] = float(np.mean([c["baseline"]["reconstructed"] for c in done]))
            key = "psnr" if image else "agreement"
            out[key] = float(np.mean([c["attack"][key] for c in done]))
            out["baseline_" + key] = float(np.mean([c["baseline"][key] for c in done]))
        return out

    def summarize(self, rounds: list[dict]) -> dict:
        done = [c for r in rounds for c in r.get("clients") or [] if "attack" in c]
        reasons = sorted({r["not_applicable"] for r in rounds if r.get("not_applicable")})
        out: dict = {"rounds": len(rounds), "client_rounds": len(done),
                     "seconds_per_round": float(np.mean([r.get("seconds", 0) for r in rounds])) if rounds else None,
                     "iterations": rounds[-1].get("iterations") if rounds else None}
        if reasons:
            out["not_applicable"] = reasons
        if not done:
            return out
        image = "psnr" in done[0]["attack"]
        key = "psnr" if image else "agreement"
        out.update(image=image, threshold=done[0]["attack"]["threshold"],
                   reconstructed=float(np.mean([c["attack"]["reconstructed"] for c in done])),
                   baseline_reconstructed=float(np.mean([c["baseline"]["reconstructed"] for c in done])),
                   **{key: float(np.mean([c["attack"][key] for c in done])),
                      "baseline_" + key: float(np.mean([c["baseline"][key] for c in done]))})
        if image:
            out["ssim"] = float(np.mean([c["attack"]["ssim"] for c in done if c["attack"]["ssim"] is not None]))
        out["fails"] = out["reconstructed"] <= out["baseline_reconstructed"] and \
            out[key] <= out["baseline_" + key] + (1.0 if image else 0.02)
        return out

    def finding(self, m: dict) -> str:
        if not m.get("client_rounds"):
            return "no client's update was inverted" + (f" ({'; '.join(m['not_applicable'])})"
                                                        if m.get("not_applicable") else "")
        key, unit = ("psnr", " dB") if m.get("image") else ("agreement", "")
        text = (f"{m['client_rounds']} client updates inverted ({m.get('iterations')} iterations, "
                f"{m.get('seconds_per_round', 0):.1f} s per round): {m['reconstructed']:.0%} of their records "
                f"reconstructed ({m.get('threshold')}), mean {key} {m[key]:.2f}{unit}, against "
                f"{m['baseline_reconstructed']:.0%} and {m['baseline_' + key]:.2f}{unit} for the population's class "
                "means.")
        if m.get("fails"):
            text += " Reconstruction fails here: no better than the class means."
        return text
