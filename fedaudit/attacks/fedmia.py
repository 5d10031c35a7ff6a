"""FedMIA (Zhu et al. 2024): the other clients' models of a round as the null distribution of a record.

In horizontal federated learning the clients' training sets are disjoint, so for a record x that client k may
hold, every other client's model of the same round did not train on x. Their values of a low-dimensional
statistic of x give its distribution under the null hypothesis "x is not a member" for free, per record and per
round, without training a reference model; the test is one-tailed (training raises the record's confidence
under its owner's model). Here the statistic is LiRA's logit-scaled confidence phi = z_y - logsumexp of the
other logits, the null a Gaussian fitted to x's phi under M other clients' models, and the per-round score
the z of the one-tailed test, ``(phi_k(x) - mu_null(x)) / sigma_null``; Phi(z) is its p-value and z ranks the
same without saturating. Across rounds the auditor averages each record's per-round z over the rounds it was
scored in (Stouffer's combination, up to the square root of the number of rounds).

``fixed_variance`` (default, as LiRA advises with fewer than about 64 models): one within-record variance
pooled over the records of the call, around each record's own null mean; False: each record's own variance
(at least two null values per record needed).

Headline rank 15: above every other score attack, below the trained ``whitebox`` (10). Measured on
``scenarios/overfit.toml`` (server view, 989 members, 449 non-members, rounds 1-5): FedMIA has the highest
TPR at 1% FPR of every attack in 4 of 5 rounds (5.9-11.7%, whitebox 5.2-7.4%, loss 0.7-5.3%) and the best AUC
among the score attacks but RMIA offline in some rounds, while whitebox (which reads the update cosines as well)
keeps the higher AUC from round 2 on (0.77-0.83 against 0.72-0.79). So FedMIA heads the server view whenever
no trained attack runs, and is reported beside the headline in every round's ``attacks`` and, across rounds,
in ``summary.json`` (``attacks_across_rounds``).

Inputs: ``null_phi`` (M, n), NaN where a record has fewer than M null models. The per-round auditor fills it
with M other replying clients per record (``[audit]`` attack ``fedmia``, server view); a single-model audit
(:func:`fedaudit.model_audit.audit`) with its offline reference models, which did not train on any audited
record either (the test is then LiRA offline with a pooled variance).
"""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.base import AttackInputs, register_score_attack
from fedaudit.attacks.gaussian import record_gaussians, z_score
from fedaudit.attacks.scores import logit_confidence
from fedaudit.errors import AttackError

#: other clients per record and round in the per-round auditor (a fixed number: the audit stays linear)
NULL_CLIENTS = 8


def null_test(phi: np.ndarray, null_phi: np.ndarray, fixed_variance: bool = True) -> np.ndarray:
    """z of the one-tailed test of ``phi`` (n,) against the per-record Gaussian of ``null_phi`` (M, n), NaN
    where a record has no null value (or, without ``fixed_variance``, fewer than two)."""
    mean, sd = record_gaussians(null_phi, variance="pooled" if fixed_variance else "record", few="nan",
                                pooled_fallback=1.0)
    return z_score(phi, mean, sd)


@register_score_attack("fedmia", needs=("null",), rank=15, views=("server",))
def fedmia_attack(inputs: AttackInputs, fixed_variance: bool = True) -> np.ndarray:
    """FedMIA (Zhu et al. 2024): one-tailed test against the record's phi under models that did not train on it."""
    phi = logit_confidence(inputs.target_logits, inputs.labels)
    scores = null_test(phi, inputs.null_phi, fixed_variance)
    if np.isnan(scores).any():     # only without fixed_variance: a record with one null value
        raise AttackError("attack 'fedmia' with fixed_variance=False needs at least 2 null models per record")
    return scores
