"""Inferences beyond membership: what the adversary learns about a client's labels, records and attributes.

Each inference is one module that subclasses :class:`~fedaudit.inferences.base.Inference` and registers itself
with :func:`~fedaudit.inferences.base.register_inference`; ``[audit] inferences`` names the ones a run audits
(validated against the registry). The per-round auditor (:mod:`fedaudit.auditor.core`) runs them on the round it
was handed, after the membership attacks, and merges their results into the round's line under ``inferences``;
the aggregation (:mod:`fedaudit.auditor.aggregate`) combines the rounds into ``summary.json``'s ``inferences``.

Built in: ``labels`` (the class histogram of each client's records, from its update: Wainakh et al. 2022,
Dimitrov et al. 2022), ``reconstruction`` (gradient inversion of a client's update: Zhu et al. 2019, Geiping et al.
2020) and ``attributes`` (a record's sensitive attribute through the model, against imputation: Jayaraman and
Evans 2022). Importing this package imports no TensorFlow; the inferences that optimise or train load it when run.
"""

from fedaudit.inferences.base import (FAMILIES, Inference, get_inference, inference_names, inferences,
                                      register_inference)

__all__ = ["FAMILIES", "Inference", "get_inference", "inference_names", "inferences", "register_inference"]
