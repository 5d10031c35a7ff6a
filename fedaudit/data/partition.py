"""Split records among federated clients: iid, Dirichlet label skew, or label shards.

A partitioner is ``fn(labels, num_clients, param, rng, min_size) -> list of position arrays``
registered with ``@register_partitioner(name)``; :func:`partition` checks the common inputs,
calls it, and returns each client's positions sorted, as int64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedaudit.data.loaders import check_int
from fedaudit.errors import DataError

PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {}

DIRICHLET_TRIES = 100  # draws before a Dirichlet split that starves a client is declared hopeless


def register_partitioner(name: str):
    """Decorator: register ``fn(labels, num_clients, param, rng, min_size)`` under ``name``."""

    def decorator(function):
        if name in PARTITIONERS:
            raise ValueError(f"partitioner {name!r} is registered twice")
        PARTITIONERS[name] = function
        return function

    return decorator


def _known() -> str:
    return ", ".join(sorted(PARTITIONERS))


def partition(labels: np.ndarray, num_clients: int, method: str = "iid", param: float | None = None,
              rng: np.random.Generator | None = None, min_size: int = 1) -> list[np.ndarray]:
    """Split positions ``0..len(labels)-1`` among ``num_clients`` clients.

    Returns one sorted int64 array of positions into ``labels`` per client; the arrays are
    disjoint, and every client gets at least ``min_size`` positions. ``rng`` defaults to
    ``np.random.default_rng(0)`` so that a missing generator still gives a reproducible split.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"partition: labels must be 1-D (one per record); got shape {labels.shape}")
    num_clients = check_int("num_clients", num_clients, minimum=1)
    min_size = check_int("min_size", min_size, minimum=0)
    if method not in PARTITIONERS:
        raise DataError(f"unknown partition method {method!r}; allowed: {_known()}")
    if num_clients > len(labels):
        raise DataError(f"partition: more clients (num_clients={num_clients}) than records ({len(labels)})")
    if num_clients * min_size > len(labels):
        raise DataError(
            f"partition: {num_clients} clients with at least min_size={min_size} records each need "
            f"{num_clients * min_size} records; only {len(labels)} available"
        )
    rng = np.random.default_rng(0) if rng is None else rng
    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in
             PARTITIONERS[method](labels, num_clients, param, rng, min_size)]
    smallest = min(range(num_clients), key=lambda k: len(parts[k]))
    if len(parts[smallest]) < min_size:
        raise DataError(
            f"partition {method!r} gave client {smallest} {len(parts[smallest])} records, fewer than "
            f"min_size={min_size}; use fewer clients or another parameter"
        )
    return parts


def parse_partition(spec: str) -> tuple[str, float | None]:
    """Parse ``"METHOD"`` or ``"METHOD:PARAM"``: ``"dirichlet:0.1"`` -> ``("dirichlet", 0.1)``."""
    form = f"'METHOD' or 'METHOD:PARAM' with METHOD one of {_known()}"
    if not isinstance(spec, str):
        raise DataError(f"partition spec must be a string, {form}; got {spec!r}")
    method, colon, value = spec.strip().partition(":")
    method = method.strip()
    if method not in PARTITIONERS:
        raise DataError(f"partition spec {spec!r}: unknown method {method!r}; allowed: {_known()}")
    if not colon:
        return method, None
    try:
        return method, float(value)
    except ValueError:
        raise DataError(f"partition spec {spec!r}: parameter {value.strip()!r} is not a number; "
                        f"expected {form}") from None


@register_partitioner("iid")
def _iid(labels, num_clients, param, rng, min_size) -> list[np.ndarray]:
    """Shuffle and cut into ``num_clients`` near-equal parts (sizes differ by at most one)."""
    if param is not None:
        raise DataError(f"partition 'iid' takes no parameter; got {param!r}")
    return np.array_split(rng.permutation(len(labels)), num_clients)


@register_partitioner("dirichlet")
def _dirichlet(labels, num_clients, param, rng, min_size) -> list[np.ndarray]:
    """Label skew: each class is split among clients by proportions ~ Dirichlet(alpha).

    ``param`` = alpha > 0 (default 0.5; smaller is more skewed). Redraws until every client
    holds ``min_size`` records, up to ``DIRICHLET_TRIES`` times.
    """
    alpha = 0.5 if param is None else param
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) \
            or not np.isfinite(alpha) or alpha <= 0:
        raise DataError(f"partition 'dirichlet' parameter alpha must be a number > 0; got {param!r}")
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(DIRICHLET_TRIES):
        parts = _dirichlet_draw(classes, num_clients, float(alpha), rng)
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise DataError(
        f"partition 'dirichlet' with alpha={alpha} left some client with fewer than min_size={min_size} "
        f"records in {DIRICHLET_TRIES} draws ({len(labels)} records, {len(classes)} classes, "
        f"{num_clients} clients); alpha is too small or there are too many clients: "
        "raise alpha or use fewer clients"
    )


def _dirichlet_draw(classes: list[np.ndarray], num_clients: int, alpha: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """One Dirichlet split: per class, shuffle its positions and cut them by drawn proportions."""
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for positions in classes:
        shuffled = rng.permutation(positions)
        cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(shuffled)).astype(int)[:-1]
        for k, piece in enumerate(np.split(shuffled, cuts)):
            pieces[k].append(piece)
    return [np.concatenate(p) for p in pieces]


@register_partitioner("shards")
def _shards(labels, num_clients, param, rng, min_size) -> list[np.ndarray]:
    """Sort by label, cut into ``num_clients * param`` shards, give each client ``param`` random shards.

    ``param`` = shards per client, an integer >= 1 (default 2), as in McMahan et al. (2017).
    """
    try:
        per_client = check_int("shards", 2 if param is None else param, minimum=1)
    except DataError:
        raise DataError(f"partition 'shards' parameter (shards per client) must be an integer >= 1; "
                        f"got {param!r}") from None
    num_shards = num_clients * per_client
    if num_shards > len(labels):
        raise DataError(
            f"partition 'shards': {num_clients} clients x {per_client} shards = {num_shards} shards, "
            f"more than the {len(labels)} records; use fewer clients or fewer shards per client"
        )
    shuffled = rng.permutation(len(labels))  # random order within each label
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owners = rng.permutation(num_shards).reshape(num_clients, per_client)
    return [np.concatenate([shards[s] for s in row]) for row in owners]
