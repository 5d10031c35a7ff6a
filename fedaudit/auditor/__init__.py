"""The auditor: plays the adversary every round of a federation and aggregates membership risk.

- :mod:`~fedaudit.auditor.records`: which records are audited, folds, the adversary's known records;
- :mod:`~fedaudit.auditor.features`: compact per-record signals of a model (TensorFlow);
- :mod:`~fedaudit.auditor.attack`: cross-fitted attacks on those features (scikit-learn);
- :mod:`~fedaudit.auditor.core`: :class:`AuditCore`, one round as the server and as a participant;
- :mod:`~fedaudit.auditor.aggregate`: :func:`aggregate_run`, risk across rounds, per record/client/class;
- :mod:`~fedaudit.auditor.actor`: the named, restartable Ray actor and :func:`auditor_sink`.

Importing this package imports neither TensorFlow nor Ray.
"""

from fedaudit.auditor.actor import Auditor, AuditorSink, auditor_sink
from fedaudit.auditor.aggregate import aggregate_run
from fedaudit.auditor.core import AuditCore
from fedaudit.auditor.records import AuditRecords, audit_records

__all__ = ["AuditCore", "AuditRecords", "Auditor", "AuditorSink", "aggregate_run", "audit_records", "auditor_sink"]
