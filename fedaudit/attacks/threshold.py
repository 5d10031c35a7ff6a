"""Threshold attacks that need no training: scores from a model's logits on the audited records.

Pure NumPy functions of ``(logits, labels)`` returning one score per record, higher = more likely a
member (threshold the score to attack):

- ``loss_scores``: minus the cross-entropy loss (Yeom et al. 2018);
- ``confidence_scores``: the softmax probability of the true class;
- ``entropy_scores``: minus the entropy of the softmax (members get confident predictions);
- ``modified_entropy_scores``: minus Song and Mittal's (2021) modified entropy
  ``-(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)``, which also uses the label.

All are computed from log-softmax in float64, so records the model fits to within float32 rounding
(a loss that rounds to 0) still get distinct scores.
"""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.scores import checked_logit_confidence, check_logits, log_softmax, logit_confidence


def _log_one_minus_softmax(lp: np.ndarray) -> np.ndarray:
    """log(1 - p_j) for every class from log-softmax ``lp``, exact even where p_j rounds to 1.

    For p_j < 1/2, log1p(-p_j); for the largest class, log of the sum of the other probabilities.
    """
    with np.errstate(divide="ignore"):
        out = np.log1p(-np.exp(np.minimum(lp, -np.log(2.0))))
    top = np.argmax(lp, axis=1)
    others = lp.copy()
    np.put_along_axis(others, top[:, None], -np.inf, axis=1)
    omax = others.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = omax[:, 0] + np.log(np.exp(others - omax).sum(axis=1))
    np.put_along_axis(out, top[:, None], lse[:, None], axis=1)
    return out


def loss_scores(logits, labels) -> np.ndarray:
    """Minus the cross-entropy loss of each record (loss = softplus(-phi), exact for tiny losses)."""
    phi = logit_confidence(logits, labels)
    return -np.logaddexp(0.0, -phi)


def confidence_scores(logits, labels) -> np.ndarray:
    """Softmax probability of the true class."""
    z, y = check_logits(logits, labels)
    return np.exp(np.take_along_axis(log_softmax(z), y[:, None], axis=1)[:, 0])


def entropy_scores(logits, labels=None) -> np.ndarray:
    """Minus the entropy of the softmax (the label is not used)."""
    z, _ = check_logits(logits, labels)
    lp = log_softmax(z)
    return np.sum(np.exp(lp) * lp, axis=1)


def modified_entropy_scores(logits, labels) -> np.ndarray:
    """Minus Song and Mittal's modified entropy of the softmax given the true label."""
    z, y = check_logits(logits, labels)
    lp = log_softmax(z)
    return _neg_mentropy(lp, np.exp(lp), checked_logit_confidence(z, y), y)


def _neg_mentropy(lp: np.ndarray, p: np.ndarray, phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Minus the modified entropy from the log-softmax ``lp``, its exp ``p`` and phi (for 1 - p_y without
    cancellation)."""
    lp_y = np.take_along_axis(lp, y[:, None], axis=1)[:, 0]
    others = p * _log_one_minus_softmax(lp)
    np.put_along_axis(others, y[:, None], 0.0, axis=1)
    return (1.0 / (1.0 + np.exp(phi))) * lp_y + others.sum(axis=1)


def logit_statistics(logits, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(phi, loss, neg_entropy, neg_mentropy) of every record in one pass: the same values as
    :func:`~fedaudit.attacks.scores.logit_confidence`, minus :func:`loss_scores`, :func:`entropy_scores` and
    :func:`modified_entropy_scores`, with the log-softmax and phi computed once (the per-round features read all
    four for every model and record)."""
    z, y = check_logits(logits, labels)
    phi = checked_logit_confidence(z, y)
    lp = log_softmax(z)
    p = np.exp(lp)
    return phi, np.logaddexp(0.0, -phi), np.sum(p * lp, axis=1), _neg_mentropy(lp, p, phi, y)


#: name -> score function, for callers that choose attacks by name
THRESHOLD_ATTACKS = {
    "loss": loss_scores,
    "confidence": confidence_scores,
    "entropy": entropy_scores,
    "modified-entropy": modified_entropy_scores,
}


def threshold_scores(logits, labels) -> dict[str, np.ndarray]:
    """Every threshold attack's scores on the same records, by name."""
    return {name: fn(logits, labels) for name, fn in THRESHOLD_ATTACKS.items()}


__all__ = ["loss_scores", "confidence_scores", "entropy_scores", "modified_entropy_scores", "logit_statistics",
           "THRESHOLD_ATTACKS", "threshold_scores"]
