"""`fedaudit bench attacks --peer art`: fedaudit's attacks beside IBM ART's black-box attack, on the same records.

The target is ML Privacy Meter's tutorial target (``simulations/meminf_tutorial.py``): ``purchase-fcn`` (600 ->
1024-512-256-128-20, tanh) trained on 600 ``synthetic-purchase`` records of 600 features and 20 classes, 40 epochs.
The split is :class:`fedaudit.data.attack_data`'s (``attack_percentage=50``): every attack, fedaudit's and ART's,
trains on the same 300 known members and 300 known non-members and is scored on the other 300 members and 300
further non-members; the reference attacks' models train on the population records left over (none of them
audited). Scores are pooled over several targets (seeds) so that TPR at 0.1% FPR becomes measurable.
``meminf ... (network only)`` is ``meminf.initialize`` as ML Privacy Meter's tutorial calls it (layers [5],
gradients [3, 4, 5] for the whitebox attack; the last layer only for the blackbox one; learning rate 1e-4, 30
epochs, batch 64); ``(network + forest)`` is the same attack with ``stack="forest"`` (a random forest beside the
network: :mod:`fedaudit.attacks.nasr.stacking`; one training gives both).

Peer: ART's ``MembershipInferenceBlackBox`` (``attack_model_type`` "rf" and "gb": scikit-learn's random forest and
gradient boosting with ART's default settings, seeded here), fed the target's softmax outputs (``pred=``) so that no
ART estimator wrapper of the Keras model is needed. Install it with ``pip install "fedaudit[bench]"``.
Seconds per target are wall-clock on this machine: compare them as ratios within one run.

``--targets N --seed S --family F``: instead of the fixed targets (seeds 0-3, which the attacks were developed on),
N targets drawn with seed S from a family of configurations (:func:`draw_targets`); long-tailed ones also run
LiRA and RMIA, offline and online. Besides the pooled table, each attack's TPR at 1% FPR is compared per target
with the loss threshold's and the best ART attack's. Pooling concatenates the targets' scores, so an attack whose
scores mean different things on different targets loses there what it wins on each: the per-target counts (and
``per_target`` in the JSON) show both.
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


#: ``--family``: which targets ``--targets N`` draws (each with its own data, model and split seeds)
FAMILIES = ("tutorial", "purchase", "longtail", "mixed")

#: the long tail of the RMIA/LiRA comparisons: 8 Zipf subgroups per class, 5% of labels flipped
LONGTAIL = {"subgroups": 8, "label_noise": 0.05}

#: the long tail's class counts, dealt in turn from a drawn start: any two long-tail targets differ in classes
#: (an independent draw per target gave four of four targets 10 classes)
LONGTAIL_CLASSES = (10, 20, 50)


def draw_targets(n: int, seed: int, family: str = "mixed") -> list[dict]:
    """``n`` target configurations drawn from ``family`` with ``seed``: the tutorial's shape (600 features,
    20 classes, 600 members, purchase-fcn, 40 epochs) with fresh seeds only; ``purchase``: other feature and class
    counts, bit-flip noise, hidden widths and training lengths around it; ``longtail``: synthetic-purchase with
    Zipf subgroups and label noise (:data:`LONGTAIL`), class counts dealt in turn (:data:`LONGTAIL_CLASSES`),
    1,000 members; ``mixed``: half purchase, half long tail.
    Every target gets its own seed, so no two draws share data, model or split. Only long-tail targets train
    reference models (LiRA and RMIA, offline and online, 4 models each)."""
    if family not in FAMILIES:
        raise ConfigError(f"--family: unknown target family {family!r}; allowed: {', '.join(FAMILIES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--targets: must be a positive integer; got {n!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A6]))
    # the long tail's first class count from a stream of its own: the other families' draws stay as they were
    start = int(np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A7])).integers(len(LONGTAIL_CLASSES)))
    out, tails = [], 0
    for i in range(n):
        kind = family if family != "mixed" else ("purchase", "longtail")[i % 2]
        # reference models (LiRA, RMIA) only on the long tail, where they are compared with the loss threshold
        base = dict(workload(False), targets=1, seed=int(rng.integers(0, 2 ** 31 - 1)), kind=kind, options={},
                    widths=None, reference_models=4 if kind == "longtail" else 0)
        if kind == "purchase":
            scale = float(rng.choice([0.5, 1.0]))
            base.update(features=int(rng.choice([300, 600, 1000])), classes=int(rng.choice([10, 20, 50])),
                        flip=float(rng.choice([0.2, 0.3, 0.4])), epochs=int(rng.choice([20, 40, 60])),
                        widths=None if scale == 1.0 else [int(w * scale) for w in (1024, 512, 256, 128)])
        elif kind == "longtail":
            rng.integers(0, 2)          # the former class draw: mixed families keep their purchase draws
            classes = LONGTAIL_CLASSES[(start + tails) % len(LONGTAIL_CLASSES)]
            tails += 1
            base.update(features=int(rng.choice([300, 600])), classes=classes, members=1000,
                        records=4000, options=dict(LONGTAIL), epochs=int(rng.choice([30, 40])))
        out.append(base)
    return out


def describe(cfg: dict) -> str:
    widths = "" if not cfg.get("widths") else f" widths {'-'.join(map(str, cfg['widths']))},"
    tail = "" if not cfg.get("options") else " " + ", ".join(f"{k} {v}" for k, v in cfg["options"].items()) + ","
    return (f"{cfg.get('kind', 'tutorial')} seed {cfg.get('seed', 0)}: {cfg['features']} features, {cfg['classes']} "
            f"classes, flip {cfg['flip']},{tail}{widths} {cfg['members']} members, {cfg['epochs']} epochs")


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


#: the tutorial's whitebox attack: layers_to_exploit and gradients_to_exploit of purchase-fcn
WHITEBOX = ([5], [3, 4, 5])


def train_target(w: dict, t: int, timings: dict | None = None):
    """Target ``t`` of the workload ``w``, trained: (dataset, model, its attack_data handler, model options)."""
    from fedaudit.data import load_dataset
    from fedaudit.data.handler import attack_data
    from fedaudit.models import build_model, train_model

    d = load_dataset("synthetic-purchase", seed=t, records=w["records"], features=w["features"], classes=w["classes"],
                     flip=w["flip"], **w.get("options", {}))
    nm = w["members"]
    model_options = {"widths": w["widths"]} if w.get("widths") else {}
    t0 = time.perf_counter()
    model = build_model("purchase-fcn", d.input_shape, d.num_classes, seed=t, **model_options)
    train_model(model, d.x[:nm], d.y[:nm], epochs=w["epochs"], batch_size=64, seed=t)
    if timings is not None:
        timings.setdefault("target training", []).append(time.perf_counter() - t0)
    handler = attack_data.from_arrays(d.x[:nm], d.y[:nm], d.x[nm:], d.y[nm:], batch_size=64, attack_percentage=50,
                                      seed=t)
    return d, model, handler, model_options


def meminf_attack(model, handler, w: dict, seed: int, logs, layers, gradients, **options):
    """The meminf attack as the tutorial sets it up (learning rate 1e-4, batch 64, the workload's epochs),
    trained on the handler's known records; ``options`` go to WhiteBoxAttack (``stack="forest"``: the forest
    beside the network)."""
    from fedaudit.attacks.whitebox import WhiteBoxAttack

    attack = WhiteBoxAttack(model, model, handler, handler, layers_to_exploit=layers, gradients_to_exploit=gradients,
                            learning_rate=1e-4, epochs=w["attack_epochs"], batch_size=64,
                            min_steps=w["attack_min_steps"], seed=seed, log_dir=logs, **options)
    attack.train_attack()
    return attack


#: the attacks with reference models that long-tailed targets run
REFERENCE_ATTACKS = ("lira-offline", "rmia-offline", "lira-online", "rmia-online")


def reference_audit(model, handler, w: dict, t: int, model_options: dict, refit: bool = True):
    """:func:`fedaudit.attacks.scoring.prepare_audit` of the handler's held-out records for
    :data:`REFERENCE_ATTACKS`: ``w["reference_models"]`` reference models of each kind,
    trained as the target was on the population records no attack split uses."""
    from fedaudit.attacks.scoring import prepare_audit

    held = handler.test_split()
    spare = handler.population_x[2 * handler.attack_size:], handler.population_y[2 * handler.attack_size:]
    return prepare_audit(model, held.members_x, held.members_y, held.nonmembers_x, held.nonmembers_y,
                         x_population=spare[0], y_population=spare[1], attacks=REFERENCE_ATTACKS,
                         reference_models=w["reference_models"], model_name="purchase-fcn",
                         model_options=model_options, epochs=w["epochs"], batch_size=64, seed=t, parallel=False,
                         train_size=w["members"], refit=refit)


def one_target(w: dict, t: int, timings: dict, logs) -> dict:
    """Scores of every attack on target ``t``'s held-out records: {attack: (member scores, non-member scores)}."""
    from fedaudit.attacks.audit import score_all
    from fedaudit.attacks.reference_models import logits_function
    from fedaudit.attacks.threshold import loss_scores

    d, model, handler, model_options = train_target(w, t, timings)
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

    for name, layers, grads in (("whitebox", *WHITEBOX), ("blackbox", [len(model.layers)], [])):
        def run_meminf(layers=layers, grads=grads):
            attack = meminf_attack(model, handler, w, t, logs, layers, grads, stack="forest")
            feats = attack.features(model, held.x, held.y, "attack_datahandler")
            return attack.predict(feats), attack.fitted.predict(feats)

        stacked, network = timed(f"meminf {name} (network + forest)", run_meminf)
        out[f"meminf {name} (network + forest)"] = stacked
        out[f"meminf {name} (network only)"] = network
    out["loss threshold"] = timed("loss threshold", lambda: loss_scores(zh, held.y))
    if w["reference_models"]:
        def reference():
            return score_all(reference_audit(model, handler, w, t, model_options), REFERENCE_ATTACKS)

        ref = timed(f"lira/rmia ({w['reference_models']} + {w['reference_models']} reference models)", reference)
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


def _pooled_rows(pooled: dict, label: str = "") -> tuple[list, dict]:
    """One row per attack: AUC with its interval, TPR at 1% and 0.1% FPR with Clopper-Pearson intervals, over
    the concatenated scores of the targets in ``pooled`` ({attack: ([member scores], [non-member scores])})."""
    from fedaudit.metrics import auc_interval, summarize

    rows, attacks = [], {}
    for name, (m, n) in pooled.items():
        s = summarize(np.concatenate(m), np.concatenate(n))
        lo, hi = auc_interval(s.auc, s.n_members, s.n_nonmembers)
        attacks[name] = {**s.to_dict(), "auc_ci": [lo, hi]}
        rows.append((f"{label}{name}", f"AUC {s.auc:.3f} [{lo:.3f}, {hi:.3f}]  TPR@1% "
                                       f"{rate(s.tpr_at_1pct, s.tpr_at_1pct_ci)}  TPR@0.1% "
                                       f"{rate(s.tpr_at_0_1pct, s.tpr_at_0_1pct_ci)}"))
    return rows, attacks


def compare_variants(configs: list[dict], scores_of, names: list[str], command: str) -> dict:
    """Score variants of an attack side by side on drawn targets (``simulations/attack_network_*.py``):
    ``scores_of(cfg, logs)`` -> ({name: scores of the target's held-out records}, their membership). Prints each
    target's AUC and TPR at 1% FPR per variant, then the pooled table (:func:`_pooled_rows`), each variant's mean TPR
    at 1% FPR over the targets and on how many targets it names at least as many members there as the first,
    ``names[0]``."""
    from fedaudit.metrics import summarize

    pooled = {name: ([], []) for name in names}
    wins, tprs = dict.fromkeys(names[1:], 0), {name: [] for name in names}
    for i, cfg in enumerate(configs):
        with tempfile.TemporaryDirectory() as logs:
            scores, member = scores_of(cfg, Path(logs))
        got = {}
        for name in names:
            s = np.asarray(scores[name], np.float64)
            pooled[name][0].append(s[member])
            pooled[name][1].append(s[~member])
            m = summarize(s[member], s[~member])
            got[name] = (m.auc, float(np.nan_to_num(m.tpr_at_1pct, nan=0.0)))
            tprs[name].append(got[name][1])
        for name in names[1:]:
            wins[name] += int(got[name][1] >= got[names[0]][1])
        print(f"  target {i + 1}/{len(configs)} {describe(cfg)}: AUC / TPR@1% "
              + ", ".join(f"{k} {auc:.3f} / {100 * tpr:.1f}%" for k, (auc, tpr) in got.items()), flush=True)
    rows, attacks = _pooled_rows(pooled)
    rows += [(f"TPR@1% per target: {name}", f"mean {100 * np.mean(tprs[name]):.1f}%"
              + (f"; >= {names[0]} on {wins[name]}/{len(configs)}" if name in wins else "")) for name in names]
    return report(command, rows, {"attacks": attacks, "wins": wins}, None)


def variants_parser(description: str, targets: int = 8, seed: int = 1):
    """The command line the ``simulations/attack_network_*.py`` scripts share: ``--targets``, ``--seed``,
    ``--family`` (see :func:`run_variants`)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--targets", type=int, default=targets)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--family", default="tutorial", choices=FAMILIES)
    return parser


def run_variants(args, scores_of, names: list[str], script: str, extra: str = "") -> dict:
    """:func:`compare_variants` on the targets ``args`` (from :func:`variants_parser`) draws, titled with the
    command that reruns ``simulations/<script>`` (``extra``: its own options)."""
    return compare_variants(draw_targets(args.targets, args.seed, args.family), scores_of, names,
                            f"python simulations/{script} --targets {args.targets} --seed {args.seed} "
                            f"--family {args.family}{extra}")


def _wins(per_target: list[dict]) -> dict:
    """Per attack, on how many targets its TPR at 1% FPR is at least the loss threshold's and at least the best
    ART attack's, and its AUC at least the loss threshold's (each target's own held-out records); and its mean TPR
    at 1% FPR over the targets (each on its own scale: an audit reads one model at a time, while the pooled table
    also asks that scores of different targets be comparable)."""
    out = {}
    for t in per_target:
        tpr, auc = t["tpr_at_1pct"], t.get("auc", {})
        art = max(v for k, v in tpr.items() if k.startswith("ART"))
        for name, v in tpr.items():
            w = out.setdefault(name, {"targets": 0, "ge_loss": 0, "ge_art": 0, "auc_ge_loss": 0, "mean_tpr": 0.0})
            w["targets"] += 1
            w["ge_loss"] += int(v >= tpr["loss threshold"])
            w["ge_art"] += int(v >= art)
            w["auc_ge_loss"] += int(auc.get(name, np.nan) >= auc.get("loss threshold", np.nan))
            w["mean_tpr"] += (v - w["mean_tpr"]) / w["targets"]
    return out


def run(json_path: str | None = None, quick: bool = False, peer: str = "art", targets: int | None = None,
        seed: int = 0, family: str = "mixed") -> dict:
    """Every attack and ART's beside each other, pooled over the targets; prints the table.

    Without ``targets``: the workload's fixed targets (seeds 0, 1, ...). With ``targets`` N: N targets drawn from
    ``family`` with ``seed`` (:func:`draw_targets`), so that the figures come from targets nobody tuned on."""
    from fedaudit.metrics import summarize

    if peer not in PEERS:
        raise ConfigError(f"--peer: unknown peer {peer!r}; allowed: {', '.join(PEERS)}")
    if targets is not None:
        configs = draw_targets(targets, seed, family)
        if quick:
            configs = [dict(c, **{k: v for k, v in workload(True).items() if k not in ("targets",)},
                            options={}, widths=None) for c in configs]
    else:
        w = workload(quick)
        configs = [dict(w, seed=t, kind="tutorial", options={}, widths=None) for t in range(w["targets"])]
    import_art()   # before any training: a missing extra fails at once
    pooled, by_kind, timings, accuracy, per_target = {}, {}, {}, [], []
    for cfg in configs:
        with tempfile.TemporaryDirectory() as logs:   # the attack's TensorBoard curves: not kept
            target = one_target(cfg, cfg["seed"], timings, Path(logs))
        accuracy.append(target["accuracy"])
        tpr, auc = {}, {}
        for name, (m, n) in target["scores"].items():
            for bucket in (pooled, by_kind.setdefault(cfg["kind"], {})):
                bucket.setdefault(name, ([], []))
                bucket[name][0].append(m)
                bucket[name][1].append(n)
            s = summarize(m, n)
            tpr[name], auc[name] = float(np.nan_to_num(s.tpr_at_1pct, nan=0.0)), float(s.auc)
        per_target.append({"target": describe(cfg), "accuracy": target["accuracy"], "tpr_at_1pct": tpr, "auc": auc})
        print(f"  target {len(per_target)}/{len(configs)} {describe(cfg)}; train/test accuracy "
              f"{target['accuracy'][0]:.2f}/{target['accuracy'][1]:.2f}", flush=True)
        if cfg["reference_models"]:      # the comparison the long tail is for, as each target ends
            print("    AUC / TPR@1%: " + ", ".join(f"{k} {auc[k]:.3f}/{100 * tpr[k]:.1f}%" for k in tpr
                                                  if k == "loss threshold" or "refs" in k), flush=True)
    rows = [("targets", f"{len(configs)} x purchase-fcn on synthetic-purchase"
                        + (f", drawn from family {family!r} with seed {seed}" if targets is not None else "")
                        + f"; train/test accuracy {np.mean([a for a, _ in accuracy]):.2f}/"
                          f"{np.mean([b for _, b in accuracy]):.2f}")]
    pooled_rows, attacks = _pooled_rows(pooled)
    rows += pooled_rows
    kinds = {}
    if len(by_kind) > 1:
        for kind, bucket in by_kind.items():
            kind_rows, kinds[kind] = _pooled_rows(bucket, f"[{kind}] ")
            rows += kind_rows
    wins = _wins(per_target)
    for name, w in wins.items():
        rows.append((f"TPR@1% per target: {name}", f"mean {100 * w['mean_tpr']:.1f}%; "
                                                  f">= loss threshold on {w['ge_loss']}/{w['targets']}, "
                                                  f">= best ART on {w['ge_art']}/{w['targets']}; AUC >= loss "
                                                  f"threshold on {w['auc_ge_loss']}/{w['targets']}"))
    first = next(iter(pooled.values()))
    rows.append(("scored", f"{sum(map(len, first[0]))} held-out members, {sum(map(len, first[1]))} non-members"))
    seconds = {k: float(np.mean(v)) for k, v in timings.items()}
    base = seconds["target training"]
    for name, value in seconds.items():
        rows.append((f"seconds: {name}", f"{value:.1f} s per target ({value / base:.2f}x the target's training)"))
    figures = {"configs": configs, "family": family if targets is not None else None, "seed": seed, "peer": peer,
               "attacks": attacks, "by_kind": kinds, "per_target": per_target, "wins_at_1pct": wins,
               "seconds_per_target": seconds, "accuracy": accuracy}
    title = f"fedaudit bench attacks --peer {peer}" + (f" --targets {targets} --seed {seed} --family {family}"
                                                       if targets is not None else "")
    return report(title, rows, figures, json_path)
