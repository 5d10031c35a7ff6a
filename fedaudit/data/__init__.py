"""Data for audits: datasets by name, client partitions, and the Ledger of who holds which record.

NumPy only (scikit-learn for the bundled digits); no TensorFlow here. ``attack_data`` (ML Privacy
Meter's data handler API) lives in :mod:`fedaudit.data.handler` and is imported on first access.

Note: the function :func:`partition` shadows the submodule of the same name as an attribute of
this package; import the submodule's other names with ``from fedaudit.data.partition import ...``.
"""

from fedaudit.data.datasets import DATASETS, Dataset, load_dataset, register_dataset, validate_arrays
from fedaudit.data.ledger import POPULATION, TEST, Ledger, build_ledger
from fedaudit.data.loaders import read_privacy_meter_txt, write_privacy_meter_txt
from fedaudit.data.partition import PARTITIONERS, parse_partition, partition, register_partitioner

__all__ = [
    "DATASETS", "Dataset", "load_dataset", "register_dataset", "validate_arrays",
    "PARTITIONERS", "partition", "parse_partition", "register_partitioner",
    "Ledger", "build_ledger", "POPULATION", "TEST",
    "read_privacy_meter_txt", "write_privacy_meter_txt",
]


def __getattr__(name: str):
    """Import ``attack_data`` from :mod:`fedaudit.data.handler` on first access."""
    if name == "attack_data":
        from fedaudit.data.handler import attack_data

        globals()["attack_data"] = attack_data
        return attack_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "attack_data"])
