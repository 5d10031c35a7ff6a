"""Audit your own Flower App: your ServerApp, your ClientApp's training loop and your Keras model, unchanged.

Three additions, one per side of the app and one for the data:

- ClientApp: ``ClientApp(mods=[partition_id_mod])`` tags each train reply with the client's partition id
  (:mod:`fedaudit.flower.mod`);
- ServerApp: ``audit_strategy(FedAvg(...), data=data, model=model)`` wraps your strategy; its ``start`` runs
  your federation and writes the run directory and report.html that ``fedaudit run`` writes
  (:mod:`fedaudit.flower.strategy`);
- data: :class:`FederatedData` says which records each partition holds and which are the population (never
  trained on), like Flower Datasets' ``load_partition`` (:mod:`fedaudit.flower.data`).

``simulations/flower_app`` is a complete app (``flwr run simulations/flower_app``). Importing this package
imports Flower but not TensorFlow.
"""

from fedaudit.flower.data import FederatedData
from fedaudit.flower.mod import partition_id_mod
from fedaudit.flower.strategy import AuditStrategy, audit_strategy

__all__ = ["audit_strategy", "AuditStrategy", "partition_id_mod", "FederatedData"]
