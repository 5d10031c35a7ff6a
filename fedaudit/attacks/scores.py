"""Per-record statistics of a model's logits, computed stably in NumPy (no TensorFlow).

The score attacks read these: the cross-entropy loss, the true-class probability, and LiRA's
logit-scaled confidence ``phi = log(p / (1 - p))`` computed as ``z_y - logsumexp(z_{!=y})`` so that it
stays finite where ``p`` rounds to 0 or 1 in floating point.
"""

from __future__ import annotations

import numpy as np

from fedaudit.errors import AttackError


def check_logits(logits, labels=None, name: str = "logits") -> tuple[np.ndarray, np.ndarray | None]:
    """Validate logits of shape (..., n, C) and integer labels of shape (n,) in [0, C)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim < 2:
        raise AttackError(f"{name}: expected logits of shape (records, classes), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise AttackError(f"{name}: logits must be finite; {int((~np.isfinite(z)).sum())} entries are not")
    if labels is None:
        return z, None
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != z.shape[-2]:
        raise AttackError(f"labels for {name}: expected shape ({z.shape[-2]},), got {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[-1]):
        raise AttackError(f"labels for {name}: must be integers in [0, {z.shape[-1]}), got {y.dtype} "
                          f"in [{y.min()}, {y.max()}]")
    return z, y.astype(np.int64)


def log_softmax(logits) -> np.ndarray:
    """log softmax along the last axis."""
    z = np.asarray(logits, dtype=np.float64)
    zmax = z.max(axis=-1, keepdims=True)
    return z - zmax - np.log(np.exp(z - zmax).sum(axis=-1, keepdims=True))


def softmax(logits) -> np.ndarray:
    return np.exp(log_softmax(logits))


def _true_class(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """values[..., i, labels[i]] for values of shape (..., n, C)."""
    idx = np.broadcast_to(labels[:, None], values.shape[:-1] + (1,))
    return np.take_along_axis(values, idx, axis=-1)[..., 0]


def loss(logits, labels) -> np.ndarray:
    """Cross-entropy loss of each record, shape (..., n): softplus(-phi), exact even for losses below 1e-16."""
    return np.logaddexp(0.0, -logit_confidence(logits, labels))


def true_class_log_prob(logits, labels) -> np.ndarray:
    z, y = check_logits(logits, labels)
    return _true_class(log_softmax(z), y)


def true_class_prob(logits, labels) -> np.ndarray:
    """Softmax probability of the true class, shape (..., n)."""
    return np.exp(true_class_log_prob(logits, labels))


def logit_confidence(logits, labels) -> np.ndarray:
    """LiRA's statistic phi = log(p_y / (1 - p_y)) = z_y - logsumexp of the other logits, shape (..., n)."""
    return checked_logit_confidence(*check_logits(logits, labels))


def checked_logit_confidence(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`logit_confidence` of logits and labels that :func:`check_logits` has already validated."""
    zy = _true_class(z, y)
    other = z.copy()
    np.put_along_axis(other, np.broadcast_to(y[:, None], z.shape[:-1] + (1,)), -np.inf, axis=-1)
    omax = other.max(axis=-1, keepdims=True)
    lse = omax[..., 0] + np.log(np.exp(other - omax).sum(axis=-1))
    return zy - lse


def correct(logits, labels) -> np.ndarray:
    """Whether the arg-max class is the label, shape (..., n)."""
    z, y = check_logits(logits, labels)
    return np.argmax(z, axis=-1) == y
