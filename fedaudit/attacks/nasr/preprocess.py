"""The attack network's inputs from raw :class:`~fedaudit.attacks.nasr.features.WhiteboxFeatures`,
standardised with statistics of the training split only."""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.nasr.features import Component, WhiteboxFeatures


def _safe_std(values: np.ndarray, axis) -> np.ndarray:
    std = values.std(axis=axis)
    return np.where(std > 1e-12, std, 1.0)


def _direction_and_lognorm(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = g.reshape(len(g), -1).astype(np.float64)
    norm = np.linalg.norm(flat, axis=1)
    unit = (flat / np.maximum(norm, 1e-30)[:, None]).reshape(g.shape).astype(np.float32)
    return unit, np.log(np.maximum(norm, 1e-30))


class Preprocessor:
    """Turns raw :class:`WhiteboxFeatures` into the network's inputs (a list of float32 arrays).

    output layers: standardised per unit (dense) or per channel (conv); label: one-hot as is; loss:
    loss and log-loss standardised; dense gradient factors: the input ``a`` centred per unit and divided
    by one overall scale, the output gradient ``d`` as its direction, plus the log of the gradient's norm
    ``|a| |d|`` standardised; materialised gradients: direction plus log-norm. Statistics come from the
    training split only.
    """

    def __init__(self, components: list[Component]):
        self.components = components
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _raw(self, comp: Component, f: WhiteboxFeatures):
        """Per component: (main inputs before standardisation, scalar side input or None)."""
        if comp.kind == "grad_factors":
            a, d = f.arrays[f"{comp.name}/a"], f.arrays[f"{comp.name}/d"]
            dn = np.linalg.norm(d.astype(np.float64), axis=1)
            an = np.linalg.norm(a.astype(np.float64), axis=1)
            d_unit = (d / np.maximum(dn, 1e-30)[:, None]).astype(np.float32)
            lognorm = np.log(np.maximum(an * dn, 1e-30))
            return [a.astype(np.float32), d_unit], lognorm
        if comp.kind in ("grad_full", "grad_conv"):
            g = f.arrays[comp.name]
            unit, lognorm = _direction_and_lognorm(g)
            if comp.kind == "grad_conv":
                shape = comp.shape
                if len(shape) == 3:        # Conv1D kernel (k, c_in, c_out)
                    image = (shape[0], 1, shape[1] * shape[2])
                elif len(shape) == 4:      # Conv2D / depthwise kernel (kh, kw, c_in, c_out)
                    image = (shape[0], shape[1], shape[2] * shape[3])
                else:                      # Conv3D and others: fold the leading spatial axes
                    image = (int(np.prod(shape[:-3])), shape[-3], shape[-2] * shape[-1])
                unit = unit.reshape(len(unit), *image)
            return [unit], lognorm
        return [f.arrays[comp.name].astype(np.float32)], None

    def fit(self, f: WhiteboxFeatures) -> "Preprocessor":
        for comp in self.components:
            main, side = self._raw(comp, f)
            if comp.kind in ("output_dense", "loss"):
                v = main[0].astype(np.float64)
                self.stats[comp.name] = (v.mean(axis=0), _safe_std(v, 0))
            elif comp.kind == "output_conv":
                v = main[0].astype(np.float64)
                self.stats[comp.name] = (v.mean(axis=(0, 1, 2)), _safe_std(v, (0, 1, 2)))
            elif comp.kind == "grad_factors":  # centred per unit, scaled by one number: quiet units stay quiet
                v = main[0].astype(np.float64)
                self.stats[comp.name] = (v.mean(axis=0), np.array(max(float((v - v.mean(axis=0)).std()), 1e-12)))
            if side is not None:
                self.stats[comp.name + "/norm"] = (np.array(side.mean()), _safe_std(side, 0))
        return self

    def transform(self, f: WhiteboxFeatures) -> list[np.ndarray]:
        out = []
        for comp in self.components:
            main, side = self._raw(comp, f)
            if comp.name in self.stats:
                mean, std = self.stats[comp.name]
                main[0] = ((main[0] - mean) / std).astype(np.float32)
            out.extend(main)
            if side is not None:
                mean, std = self.stats[comp.name + "/norm"]
                out.append(((side - mean) / std).astype(np.float32)[:, None])
        return out


def _input_shapes(components: list[Component]) -> list[tuple]:
    shapes = []
    for comp in components:
        if comp.kind == "grad_factors":
            shapes += [(comp.shape[0],), (comp.shape[1],), (1,)]
        elif comp.kind == "grad_full":
            shapes += [comp.shape, (1,)]
        elif comp.kind == "grad_conv":
            s = comp.shape
            image = ((s[0], 1, s[1] * s[2]) if len(s) == 3 else (s[0], s[1], s[2] * s[3]) if len(s) == 4
                     else (int(np.prod(s[:-3])), s[-3], s[-2] * s[-1]))
            shapes += [image, (1,)]
        else:
            shapes.append(comp.shape)
    return shapes

