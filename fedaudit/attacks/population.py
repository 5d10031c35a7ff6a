"""The threshold attacks (loss, confidence, entropy, modified entropy) and attack P, population (Ye et al. 2022).

``loss``: score = -loss, a global threshold on the target's loss (Yeom et al. 2018); ``confidence``,
``entropy`` and ``modified-entropy`` likewise on other statistics of the softmax (the functions of
:mod:`fedaudit.attacks.threshold`).

``population``: the threshold comes from the target's own statistics on population records (records it
did not train on): a record is flagged at level alpha when its loss is below the alpha-quantile of the
population losses. Per class (the default) the quantile is taken over population records of the same
class, which calibrates for classes that are easier or harder than others; with one global quantile P
ranks records exactly as ``loss`` does. The score is where the record falls in that distribution:
``gaussian`` (default) fits a Gaussian to the logit-scaled confidence phi of the class's population records
and returns the z-score of the record's phi (Phi(z) is its one-sided p-value; z ranks the same and does
not saturate); ``empirical`` returns minus the fraction of the class's population records whose phi is at
least the record's (the literal quantile test; records beyond every population record tie).
"""

from __future__ import annotations

import numpy as np

from fedaudit.attacks.base import AttackInputs, register_score_attack
from fedaudit.attacks.gaussian import MIN_STD
from fedaudit.attacks.scores import logit_confidence
from fedaudit.attacks.threshold import THRESHOLD_ATTACKS
from fedaudit.errors import AttackError


def _threshold_attack(name: str, fn, doc: str, rank: int) -> None:
    def attack(inputs: AttackInputs) -> np.ndarray:
        return fn(inputs.target_logits, inputs.labels)

    attack.__doc__ = doc
    attack.__name__ = f"{name.replace('-', '_')}_attack"
    register_score_attack(name, rank=rank)(attack)


# The threshold attacks of fedaudit.attacks.threshold, as score attacks (no reference models, no population).
for _name, _doc, _rank in (
    ("loss", "Loss threshold (Yeom et al. 2018): score = -cross-entropy loss of the target on the record.", 120),
    ("confidence", "Confidence threshold: score = the target's softmax probability of the true class.", 130),
    ("entropy", "Entropy threshold: score = -entropy of the target's softmax.", 140),
    ("modified-entropy", "Modified-entropy threshold (Song and Mittal 2021): score = -modified entropy.", 110),
):
    _threshold_attack(_name, THRESHOLD_ATTACKS[_name], _doc, _rank)


@register_score_attack("population", needs=("population",), rank=100)
def population_attack(inputs: AttackInputs, per_class: bool = True, method: str = "gaussian",
                      min_class_records: int = 10) -> np.ndarray:
    """Attack P (Ye et al. 2022): the target's loss against its own population losses, per class."""
    if method not in ("gaussian", "empirical"):
        raise AttackError(f"attack 'population': method must be 'gaussian' or 'empirical', got {method!r}")
    phi = logit_confidence(inputs.target_logits, inputs.labels)
    phi_pop = logit_confidence(inputs.population_logits, inputs.population_labels)
    if phi_pop.size == 0:
        raise AttackError("attack 'population' needs at least one population record; got none")
    scores = np.empty_like(phi)
    groups = [(np.ones(phi.size, dtype=bool), phi_pop)]
    if per_class:
        groups = []
        covered = np.zeros(phi.size, dtype=bool)
        for c in np.unique(inputs.labels):
            ref = phi_pop[inputs.population_labels == c]
            if ref.size >= max(int(min_class_records), 2):
                sel = inputs.labels == c
                groups.append((sel, ref))
                covered |= sel
        if not covered.all():
            groups.append((~covered, phi_pop))   # classes with too few population records: global threshold
    for sel, ref in groups:
        if method == "gaussian":
            mu, sd = ref.mean(), max(ref.std(), MIN_STD)
            scores[sel] = (phi[sel] - mu) / sd
        else:
            ordered = np.sort(ref)
            at_least = ref.size - np.searchsorted(ordered, phi[sel], side="left")
            scores[sel] = -at_least / ref.size
    return scores
