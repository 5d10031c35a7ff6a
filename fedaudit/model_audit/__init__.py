"""Audit one trained Keras model: :func:`audit` (Python) and ``fedaudit audit-model MODEL.keras`` (files).

Modules: ``settings`` (:class:`ModelAuditSettings`, the defaults), ``core`` (:func:`audit`), ``run_dir`` (the
files in, the run directory out: :func:`run_model_audit`).

:func:`audit` is the single-model audit: a model, its members, non-members and (optionally) population records,
and a :class:`ModelAuditSettings` in; a :class:`ModelAudit` (every attack's summary and scores, the headline
attack and each record's membership probability) out. ``fedaudit audit-model`` (:func:`run_model_audit`) reads
the files, calls it and writes a run directory; :func:`fedaudit.attacks.audit_model` builds the settings from
keywords and calls it. The attacks are named as in a scenario's ``[audit]`` table, with the same defaults:

- ``whitebox`` and ``blackbox``: logistic regression, cross-fitted, on the per-record features the federated
  auditor computes (:mod:`fedaudit.auditor.features`; ``blackbox`` reads the output features only, ``whitebox``
  adds the per-layer gradient norms). The adversary knows ``attack_fraction`` of the members and as many
  non-members (:mod:`fedaudit.auditor.records`), and every record is scored by an attack fitted without it;
- ``loss``, ``confidence``, ``entropy``, ``modified-entropy``: threshold attacks (nothing to fit);
- ``population``, ``qmia``: calibrated on the population records, or (without any) cross-fitted on the known
  non-members;
- ``reference``, ``lira-*``, ``rmia-*``, ``fedmia``: reference models of the audited architecture
  (:func:`fedaudit.attacks.audit.prepare_audit`), trained on the population records.

The membership probability is the headline attack's: the trained attacks' log-odds through a sigmoid, a score
attack's scores calibrated by a cross-fitted logistic regression on the known records.

What ``audit-model`` writes: ``summary.json`` (``"kind": "model-audit"``, every attack's metrics with intervals,
the headline attack), ``records.csv`` (per record: its file and row, membership, label, loss, the membership
probability ``risk`` and each attack's score ``score_<attack>``), ``member_probs.npy`` / ``nonmember_probs.npy``
(the membership probability of the headline attack), ``plots/*.png`` and ``report.html``. Every file is
written atomically. Every check that needs no TensorFlow (files, formats, options) runs first.
"""

from fedaudit.model_audit.core import ModelAudit, audit
from fedaudit.model_audit.run_dir import KIND, Records, load_inputs, resolve_out, run_model_audit, score_column
from fedaudit.model_audit.settings import DEFAULT_ATTACKS, OUTPUTS, ModelAuditSettings

__all__ = ["audit", "ModelAudit", "ModelAuditSettings", "run_model_audit", "load_inputs", "resolve_out", "Records",
           "score_column", "KIND", "DEFAULT_ATTACKS", "OUTPUTS"]
