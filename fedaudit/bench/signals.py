"""``fedaudit bench signals``: per-example gradients and layer outputs, three ways, in one run.

For ``purchase-fcn`` (Purchase100's shape, ML Privacy Meter's tutorial layers: outputs of layer 5,
gradients of kernels 3, 4, 5) and ``cnn`` (digits' 8x8x1 images as this project trains it, outputs and
gradients of every layer with a kernel; the full run adds the same model on 32x32x3 images):

- ``loop``: one GradientTape per example, eagerly, as ML Privacy Meter computed them;
- ``extract``: :func:`fedaudit.signals.extract` with full per-example gradients, and
  ``extract (factors)``, what the whitebox attack consumes (dense gradients as their two factors,
  convolutional ones in full);
- ``batched``: one gradient of the batch's mean loss with the same layer outputs: the floor no
  per-example method can beat.

Prints examples per second and the ratios; ``run(json_path=...)`` also writes them as JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    "purchase-fcn": dict(model="purchase-fcn", input_shape=(600,), classes=100, layers=[5], gradients=[3, 4, 5]),
    "cnn": dict(model="cnn", input_shape=(8, 8, 1), classes=10, layers=[1, 3, 6, 7], gradients=[1, 2, 3, 4]),
    "cnn-32x32x3": dict(model="cnn", input_shape=(32, 32, 3), classes=10, layers=[1, 3, 6, 7],
                        gradients=[1, 2, 3, 4]),
}


def _best_rate(fn, n: int, repeats: int) -> float:
    """Examples per second of the fastest of ``repeats`` runs of ``fn`` (other load only slows a run)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def _bench_model(name: str, cfg: dict, n: int, n_loop: int, batch: int, repeats: int) -> dict:
    import keras
    import tensorflow as tf

    from fedaudit.models import build_model
    from fedaudit.signals import extract
    from fedaudit.signals.layers import resolve_gradient_layers, resolve_output_layers

    model = build_model(cfg["model"], cfg["input_shape"], cfg["classes"], seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((n, *cfg["input_shape"]), dtype=np.float32)
    if cfg["model"] == "purchase-fcn":
        x = (x < 0.3).astype(np.float32)
    y = rng.integers(0, cfg["classes"], n)
    kernels = [r.layer.kernel for r in resolve_gradient_layers(model, cfg["gradients"])]
    outputs = [r.layer.output for r in resolve_output_layers(model, cfg["layers"])]
    probe = keras.Model(model.inputs[0], [*outputs, model.outputs[0]])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    chosen = {id(k) for k in kernels}

    def loop():  # the old tool: one eager tape per example over all variables, the chosen kernels to NumPy
        for i in range(n_loop):
            with tf.GradientTape() as tape:
                loss = loss_fn(y[i:i + 1], model(x[i:i + 1], training=False))
            grads = tape.gradient(loss, model.trainable_variables)
            [g.numpy() for g, v in zip(grads, model.trainable_variables) if id(v) in chosen]
        probe(x[:n_loop], training=False)  # layer outputs, batched as the old tool computed them

    spec = [tf.TensorSpec((None, *cfg["input_shape"]), tf.float32), tf.TensorSpec((None,), tf.int64)]

    @tf.function(input_signature=spec)
    def batched_step(xb, yb):
        with tf.GradientTape() as tape:
            outs = probe(xb, training=False)
            loss = tf.reduce_mean(loss_fn(yb, outs[-1]))
        return tape.gradient(loss, kernels), outs

    def batched():
        for s in range(0, n, batch):
            grads, outs = batched_step(x[s:s + batch], y[s:s + batch])
            [g.numpy() for g in grads], [o.numpy() for o in outs]

    def make_extract(factorize):
        return lambda: extract(model, x, y, layers=cfg["layers"], gradients=cfg["gradients"], factorize=factorize,
                               batch_size=batch)

    result = {"examples": n, "loop_examples": n_loop, "batch_size": batch,
              "layers": cfg["layers"], "gradients": cfg["gradients"]}
    loss_fn(y[:1], model(x[:1]))  # warm the eager path
    result["loop"] = _best_rate(loop, n_loop, 1)
    batched()  # trace
    result["batched"] = _best_rate(batched, n, repeats)
    variants = [("extract", False), ("extract_factors", True)]
    for key, factorize in variants:
        fn = make_extract(factorize)
        start = time.perf_counter()
        extract(model, x[:batch], y[:batch], layers=cfg["layers"], gradients=cfg["gradients"], factorize=factorize,
                batch_size=batch)
        result[f"{key}_trace_seconds"] = time.perf_counter() - start
        result[key] = _best_rate(fn, n, repeats)
        result[f"{key}_vs_loop"] = result[key] / result["loop"]
        result[f"{key}_vs_batched"] = result["batched"] / result[key]
    return result


def _table(results: dict) -> str:
    lines = [f"{'model':<14}{'method':<18}{'examples/s':>12}{'x loop':>10}{'batched / it':>14}"]
    for model, r in results["models"].items():
        for key in ("loop", "extract", "extract_factors", "batched"):
            if key not in r:
                continue
            vs_loop = r[key] / r["loop"]
            vs_batched = r["batched"] / r[key]
            label = {"extract_factors": "extract (factors)"}.get(key, key)
            lines.append(f"{model:<14}{label:<18}{r[key]:>12.0f}{vs_loop:>10.1f}{vs_batched:>14.2f}")
    return "\n".join(lines)


def run(json_path=None, quick: bool = False) -> dict:
    """Run the benchmark, print the table, return the figures (and write them to ``json_path``)."""
    import tensorflow as tf

    n, n_loop, repeats = (512, 48, 2) if quick else (4096, 200, 3)
    names = ["purchase-fcn", "cnn"] if quick else list(CONFIGS)
    results = {"quick": quick, "devices": [d.name for d in tf.config.list_logical_devices()],
               "models": {name: _bench_model(name, CONFIGS[name], n, n_loop, 256, repeats) for name in names}}
    print(_table(results))
    if json_path:
        from fedaudit.rundir import atomic_write_text, json_safe

        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(json_safe(results), indent=2) + "\n")
    return results


if __name__ == "__main__":  # pragma: no cover
    import sys

    run(sys.argv[1] if len(sys.argv) > 1 else None, quick="--quick" in sys.argv)
