"""`fedaudit bench attacks --peer art`: fedaudit's attacks beside IBM ART's black-box attack, on the same records.

The target is ML Privacy Meter's tutorial target (``simulations/meminf_tutorial.py``): ``purchase-fcn`` (600 ->
1024-512-256-128-20, tanh) trained on 600 ``synthetic-purchase`` records of 600 features and 20 classes, 40 epochs.
The split is :class:`fedaudit.data.attack_data`'s (``attack_percentage=50``): every attack, fedaudit's and ART's,
trains on the same 300 known members and 300 known non-members and is scored on the other 300 members and 300
further non-members; the reference attacks' models train on the population records left over (none of them
audited). Scores are pooled over several targets (seeds) so that TPR at 0.1% FPR becomes measurable.
``meminf ... (network only)`` is ``meminf.initialize`` as ML Privacy Meter's tutorial calls it (layers [5],
gradients [3, 4, 5] for the whitebox attack; the last layer only for the blackbox one; learning rate 1e-4, 30
epochs, batch 64); ``(stacked)`` is the same attack with ``stack="boosting"`` (one training gives both).

Peer: ART's ``MembershipInferenceBlackBox`` (``attack_model_type`` "rf" and "gb": scikit-learn's random forest and
gradient boosting with ART's default settings, seeded here), fed the target's softmax outputs (``pred=``) so that no
ART estimator wrapper of the Keras model is needed. Install it with ``pip install "fedaudit[bench]"``.
Seconds per target are wall-clock on this machine: compare them as ratios within one run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from fedaudit.bench.common import report
from fedaudit.errors import ConfigError

PEERS = ("art",)
EXTRA = 'ART is not installed; install the bench extra: pip install "fedaudit[bench]"'


def workload(quick: bool) -> dict:
    if quick:
        return {"records": 800, "features": 60, "classes": 8, "flip": 0.4, "members": 200, "epochs": 40, "targets": 1,
                "reference_models": 0, "attack_epochs": 5, "attack_min_steps": 100}
    return {"records": 2400, "features": 600, "classes": 20, "flip": 0.3, "members": 600, "epochs": 40, "targets": 4,
            "reference_models": 4, "attack_epochs": 30, "attack_min_steps": 2000}


def import_art():
    """ART's black-box attack and estimator wrapper, or a one-line ConfigError naming the extra."""
    try:
        from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
        from art.estimators.classification import BlackBoxClassifier
    except ImportError:
        raise ConfigError(EXTRA) from None
    return MembershipInferenceBlackBox, BlackBoxClassifier


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def art_scores(kind: str, num_classes: int, input_shape, known_probs, known_y, known_member, held_probs, held_y,
               seed: int = 0) -> np.ndarray:
    """ART's MembershipInferenceBlackBox (``kind`` "rf" or "gb") trained on the known records' softmax outputs
    and labels; its membership probability for each held-out record."""
    attack_cls, wrapper = import_art()

    def no_queries(x):   # every prediction is passed in: ART never has to query the model
        raise RuntimeError("the ART estimator is given its predictions; it must not query the model")

    estimator = wrapper(no_queries, tuple(input_shape), int(num_classes))
    attack = attack_cls(estimator, input_type="prediction", attack_model_type=kind)
    attack.attack_model.set_params(random_state=int(seed))   # ART leaves its default models unseeded
    m = np.asarray(known_member, bool)
    attack.fit(None, known_y[m], None, known_y[~m], pred=known_probs[m], test_pred=known_probs[~m])
    p = np.asarray(attack.infer(None, held_y, pred=held_probs, probabilities=True))
    return p[:, 1] if p.ndim == 2 and p.shape[1] == 2 else p.ravel()


def one_target(w: dict, t: int, timings: dict, logs) -> dict:
    """Scores of every attack on target ``t``'s held-out records: {attack: (member scores, non-member scores)}."""
    from fedaudit.attacks.audit import prepare_audit, score_all
    from fedaudit.attacks.reference_models import logits_function
    from fedaudit.attacks.threshold import loss_scores
    from fedaudit.attacks.whitebox import WhiteBoxAttack
    from fedaudit.data import load_dataset
    from fedaudit.data.handler import attack_data
    from fedaudit.models import build_model, train_model

    d = load_dataset("synthetic-purchase", seed=t, records=w["records"], features=w["features"], classes=w["classes"],
                     flip=w["flip"])
    nm = w["members"]
    t0 = time.perf_counter()
    model = build_model("purchase-fcn", d.input_shape, d.num_classes, seed=t)
    train_model(model, d.x[:nm], d.y[:nm], epochs=w["epochs"], batch_size=64, seed=t)
    timings.setdefault("target training", []).append(time.perf_counter() - t0)
    handler = attack_data.from_arrays(d.x[:nm], d.y[:nm], d.x[nm:], d.y[nm:], batch_size=64, attack_percentage=50,
                                      seed=t)
    known, held = handler.train_split(), handler.test_split()
    member = held.membership == 1
    logits = logits_function(model)
    zk, zh = logits(known.x), logits(held.x)
    accuracy = (float((zk.argmax(1) == known.y)[known.membership == 1].mean()),
                float((zh.argmax(1) == held.y)[~member].mean()))
    out = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        scores = fn()
        timings.setdefault(name, []).append(time.perf_counter() - t0)
        return scores

    for name, layers, grads in (("whitebox", [5], [3, 4, 5]), ("blackbox", [len(model.layers)], [])):
        def run_meminf(layers=layers, grads=grads):
            attack = WhiteBoxAttack(model, model, handler, handler, layers_to_exploit=layers,
                                    gradients_to_exploit=grads, learning_rate=1e-4, epochs=w["attack_epochs"],
                                    batch_size=64, min_steps=w["attack_min_steps"], seed=t, log_dir=logs,
                                    stack="boosting")
            attack.train_attack()
            feats = attack.features(model, held.x, held.y, "attack_datahandler")
            return attack.predict(feats), attack.fitted.predict(feats)

        stacked, network = timed(f"meminf {name} (stacked)", run_meminf)
        out[f"meminf {name} (stacked)"] = stacked
        out[f"meminf {name} (network only)"] = network
    out["loss threshold"] = timed("loss threshold", lambda: loss_scores(zh, held.y))
    if w["reference_models"]:
        spare = handler.population_x[2 * handler.attack_size:], handler.population_y[2 * handler.attack_size:]
        names = ("lira-offline", "rmia-offline")

        def reference():
            data = prepare_audit(model, held.members_x, held.members_y, held.nonmembers_x, held.nonmembers_y,
                                 x_population=spare[0], y_population=spare[1], attacks=names,
                                 reference_models=w["reference_models"], model_name="purchase-fcn", model_options={},
                                 epochs=w["epochs"], batch_size=64, seed=t, parallel=False, train_size=nm)
            return score_all(data, names)

        ref = timed(f"lira/rmia-offline ({w['reference_models']} reference models)", reference)
        out.update({f"{k} ({w['reference_models']} refs)": v for k, v in ref.items()})
    for kind in ("rf", "gb"):
        out[f"ART {kind}"] = timed(f"ART {kind}", lambda kind=kind: art_scores(
            kind, d.num_classes, d.input_shape, softmax(zk), known.y, known.membership == 1, softmax(zh), held.y,
            seed=t))
    return {"scores": {k: (v[member], v[~member]) for k, v in out.items()}, "accuracy": accuracy}


def rate(value: float, ci) -> str:
    if not np.isfinite(value):
        return "not measurable"
    return f"{100 * value:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def run(json_path: str | None = None, quick: bool = False, peer: str = "art") -> dict:
    """Every attack and ART's beside each other, pooled over the workload's targets; prints the table."""
    from fedaudit.metrics import auc_interval, summarize

    if peer not in PEERS:
        raise ConfigError(f"--peer: unknown peer {peer!r}; allowed: {', '.join(PEERS)}")
    import_art()   # before any training: a missing extra fails at once
    w = workload(quick)
    pooled, timings, accuracy = {}, {}, []
    for t in range(w["targets"]):
        with tempfile.TemporaryDirectory() as logs:   # the attack's TensorBoard curves: not kept
            target = one_target(w, t, timings, Path(logs))
        accuracy.append(target["accuracy"])
        for name, (m, n) in target["scores"].items():
            pooled.setdefault(name, ([], []))
            pooled[name][0].append(m)
            pooled[name][1].append(n)
    rows = [("target", f"purchase-fcn on synthetic-purchase ({w['features']} features, {w['classes']} classes), "
                       f"{w['members']} members, {w['epochs']} epochs, {w['targets']} target(s); train/test accuracy "
                       f"{np.mean([a for a, _ in accuracy]):.2f}/{np.mean([b for _, b in accuracy]):.2f}")]
    attacks = {}
    for name, (m, n) in pooled.items():
        s = summarize(np.concatenate(m), np.concatenate(n))
        lo, hi = auc_interval(s.auc, s.n_members, s.n_nonmembers)
        attacks[name] = {**s.to_dict(), "auc_ci": [lo, hi]}
        rows.append((name, f"AUC {s.auc:.3f} [{lo:.3f}, {hi:.3f}]  TPR@1% {rate(s.tpr_at_1pct, s.tpr_at_1pct_ci)}  "
                           f"TPR@0.1% {rate(s.tpr_at_0_1pct, s.tpr_at_0_1pct_ci)}"))
    first = next(iter(pooled.values()))
    rows.append(("scored", f"{sum(map(len, first[0]))} held-out members, {sum(map(len, first[1]))} non-members"))
    seconds = {k: float(np.mean(v)) for k, v in timings.items()}
    base = seconds["target training"]
    for name, value in seconds.items():
        rows.append((f"seconds: {name}", f"{value:.1f} s per target ({value / base:.2f}x the target's training)"))
    figures = {"workload": w, "peer": peer, "attacks": attacks, "seconds_per_target": seconds,
               "accuracy": accuracy}
    return report(f"fedaudit bench attacks --peer {peer}", rows, figures, json_path)
