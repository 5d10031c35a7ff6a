"""The whitebox attack's per-example inputs: :func:`whitebox_features` (outputs of the exploited layers, loss,
label, kernel gradients, dense ones as their two factors) and :func:`blackbox_features`, computed once with
:func:`fedaudit.signals.extract`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedaudit.errors import AttackError
from fedaudit.signals import extract
from fedaudit.signals.extract import check_model
from fedaudit.signals.layers import kernel_layers, resolve_gradient_layers


@dataclass(frozen=True)
class Component:
    """One input signal of the attack network.

    kind: ``output_dense`` (n, units), ``output_conv`` (n, H, W, C), ``label`` (n, classes) one-hot,
    ``loss`` (n, 2) loss and log-loss, ``grad_factors`` (n, in) and (n, out) factors of a dense kernel
    gradient, ``grad_full`` (n, in, out) a materialised 2-D kernel gradient, ``grad_conv`` (n, *kernel)
    a convolutional kernel gradient.
    """

    kind: str
    name: str
    shape: tuple
    layer: str | None = None
    layer_index: int | None = None

    def keys(self) -> tuple[str, ...]:
        return (f"{self.name}/a", f"{self.name}/d") if self.kind == "grad_factors" else (self.name,)


@dataclass
class WhiteboxFeatures:
    """The attack's per-example inputs on n records (raw: standardisation happens in the fitted attack)."""

    components: list[Component]
    arrays: dict[str, np.ndarray]
    labels: np.ndarray
    loss: np.ndarray
    logits: np.ndarray
    gradient_norm: np.ndarray      # (n,) norm over all exploited kernel gradients together
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "WhiteboxFeatures":
        index = np.asarray(index)
        return WhiteboxFeatures(self.components, {k: v[index] for k, v in self.arrays.items()}, self.labels[index],
                                self.loss[index], self.logits[index], self.gradient_norm[index], self.num_classes)

    @staticmethod
    def concatenate(parts: list["WhiteboxFeatures"]) -> "WhiteboxFeatures":
        first = parts[0]
        for p in parts[1:]:
            if [(c.kind, c.name, c.shape) for c in p.components] != [(c.kind, c.name, c.shape) for c in first.components]:
                raise AttackError("features: cannot concatenate features of different attack configurations")
        cat = lambda attr: np.concatenate([getattr(p, attr) for p in parts])  # noqa: E731
        return WhiteboxFeatures(first.components, {k: np.concatenate([p.arrays[k] for p in parts]) for k in first.arrays},
                                cat("labels"), cat("loss"), cat("logits"), cat("gradient_norm"), first.num_classes)


def _log_loss(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loss, log loss) from logits in float64; log loss stays finite where the loss underflows."""
    z = np.asarray(logits, np.float64)
    zy = z[np.arange(len(z)), labels]
    other = z.copy()
    other[np.arange(len(z)), labels] = -np.inf
    omax = other.max(axis=1)
    m = omax + np.log(np.exp(other - omax[:, None]).sum(axis=1)) - zy  # = -phi
    loss = np.logaddexp(0.0, m)
    with np.errstate(divide="ignore"):
        log_loss = np.where(m < -30, m, np.log(np.maximum(loss, 1e-300)))
    return loss, log_loss


def whitebox_features(model, x, y, *, layers=(), gradients=(), exploit_loss: bool = True,
                      exploit_label: bool = True, batch_size: int | None = None,
                      layers_option: str = "layers", gradients_option: str = "gradients") -> WhiteboxFeatures:
    """The whitebox attack's inputs for ``model`` on records ``x`` with labels ``y``.

    ``layers``: layers whose outputs the attack reads (1-based indices into ``model.layers`` or names);
    ``gradients``: layers whose kernel gradients it reads (1-based among layers with a kernel, or names).
    Dense gradients stay factored (``extract(..., factorize=True)``). The gradient norm over the
    exploited layers (over the last layer with a kernel when none is exploited) is kept for plots.
    """
    resolved_grads = resolve_gradient_layers(model, gradients, gradients_option)
    with_kernel = kernel_layers(model)
    norm_layers = [r.name for r in resolved_grads] or ([with_kernel[-1].name] if with_kernel else [])
    sig = extract(model, x, y, layers=layers, gradients=gradients, loss=True, logits=True, gradient_norms=norm_layers,
                  factorize=True, batch_size=batch_size, layers_option=layers_option,
                  gradients_option=gradients_option)
    num_classes = int(sig.logits.shape[1])
    components, arrays = [], {}
    for index, name in sig.output_layers:
        value = sig.layer_outputs[name].astype(np.float32)
        if value.ndim == 3:
            value = value[:, :, None, :]
        if value.ndim == 4:
            kind = "output_conv"
        else:
            kind, value = "output_dense", value.reshape(len(value), -1)
        comp = Component(kind, f"output/{name}", tuple(value.shape[1:]), name, index)
        components.append(comp)
        arrays[comp.name] = value
    if exploit_label:
        comp = Component("label", "label", (num_classes,))
        components.append(comp)
        arrays["label"] = np.eye(num_classes, dtype=np.float32)[sig.labels]
    loss, log_loss = _log_loss(sig.logits, sig.labels)
    if exploit_loss:
        comp = Component("loss", "loss", (2,))
        components.append(comp)
        arrays["loss"] = np.stack([loss, log_loss], axis=1).astype(np.float32)
    for index, name in sig.gradient_layers:
        if name in sig.factors:
            f = sig.factors[name]
            comp = Component("grad_factors", f"grad/{name}", f.kernel_shape, name, index)
            arrays[f"{comp.name}/a"], arrays[f"{comp.name}/d"] = f.inputs, f.output_grads
        else:
            g = sig.gradients[name]
            kind = "grad_full" if g.ndim == 3 else "grad_conv"
            comp = Component(kind, f"grad/{name}", tuple(g.shape[1:]), name, index)
            arrays[comp.name] = g
        components.append(comp)
    if not components:
        raise AttackError("attack: nothing to exploit; allowed: at least one of layers_to_exploit, "
                          "gradients_to_exploit, exploit_loss=True, exploit_label=True")
    return WhiteboxFeatures(components, arrays, sig.labels, loss, sig.logits.astype(np.float64),
                            sig.total_gradient_norm(), num_classes)


def blackbox_features(model, x, y, *, exploit_loss: bool = True, exploit_label: bool = True,
                      batch_size: int | None = None) -> WhiteboxFeatures:
    """The black-box attack's inputs: the last layer's output, the loss and the label only."""
    check_model(model)
    return whitebox_features(model, x, y, layers=[len(model.layers)], gradients=(), exploit_loss=exploit_loss,
                             exploit_label=exploit_label, batch_size=batch_size)

