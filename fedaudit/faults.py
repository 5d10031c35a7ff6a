"""Fault injection for tests: clients that fail, die or return NaN weights, and an auditor that dies.

A test installs a :class:`FaultPlan` with :func:`injected`; the plan travels as JSON in one environment variable
(:data:`ENV`), so the processes started while it is installed see it too: the Ray workers of a local
``ray.init`` (client actors, the auditor) and a ``fedaudit run`` subprocess given that environment
(``env={**os.environ, **plan.environ()}``). The federation and the auditor ask :func:`client_fault` and
:func:`auditor_should_die` at the points where a fault acts; with no plan installed both answer "no fault".
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

from fedaudit.errors import FedAuditError

ENV = "FEDAUDIT_FAULTS"

RAISE = "raise"    # the client raises in that round (Flower records a failed reply)
KILL = "kill"      # the client's actor process is killed mid-round (Ray starts a new one)
NAN = "nan"        # the auditor receives NaN weights for that client (the federation itself is unaffected)


@dataclass(frozen=True)
class FaultPlan:
    """Which faults happen where: ``{partition id: round}`` per kind of client fault, and the round after which
    the auditor actor is killed (Ray restarts it) once the earlier rounds are written."""

    fail_clients: dict = field(default_factory=dict)
    kill_clients: dict = field(default_factory=dict)
    nan_clients: dict = field(default_factory=dict)
    kill_auditor_after_round: int | None = None

    def to_json(self) -> str:
        return json.dumps({"fail_clients": _pairs(self.fail_clients), "kill_clients": _pairs(self.kill_clients),
                           "nan_clients": _pairs(self.nan_clients),
                           "kill_auditor_after_round": self.kill_auditor_after_round})

    @classmethod
    def from_json(cls, text: str) -> "FaultPlan":
        try:
            raw = json.loads(text)
            after = raw.get("kill_auditor_after_round")
            return cls(fail_clients=_pairs(raw.get("fail_clients", {})),
                       kill_clients=_pairs(raw.get("kill_clients", {})),
                       nan_clients=_pairs(raw.get("nan_clients", {})),
                       kill_auditor_after_round=None if after is None else int(after))
        except (ValueError, TypeError, AttributeError) as exc:
            raise FedAuditError(f"{ENV}: not a fault plan ({exc}); expected the JSON of FaultPlan.to_json()") from None

    def environ(self) -> dict:
        """The environment variable that installs this plan in a process started with it."""
        return {ENV: self.to_json()}

    def client_fault(self, partition_id: int, server_round: int) -> str | None:
        for kind, plan in ((RAISE, self.fail_clients), (KILL, self.kill_clients), (NAN, self.nan_clients)):
            if plan.get(int(partition_id)) == int(server_round):
                return kind
        return None


def _pairs(plan: dict) -> dict:
    return {int(k): int(v) for k, v in dict(plan).items()}


_NONE = FaultPlan()


def current() -> FaultPlan:
    """The plan installed in this process's environment (an empty plan when none is)."""
    text = os.environ.get(ENV, "").strip()
    return FaultPlan.from_json(text) if text else _NONE


@contextlib.contextmanager
def injected(plan: FaultPlan):
    """Install ``plan`` for this process and every process it starts until the block ends."""
    before = os.environ.get(ENV)
    os.environ[ENV] = plan.to_json()
    try:
        yield plan
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def client_fault(partition_id: int, server_round: int) -> str | None:
    """:data:`RAISE`, :data:`KILL` or :data:`NAN` when the installed plan has that fault for this client in this
    round; None otherwise."""
    return current().client_fault(partition_id, server_round)


def auditor_should_die(server_round: int) -> bool:
    """Whether the installed plan kills the auditor actor after this round is handed to it."""
    after = current().kill_auditor_after_round
    return after is not None and int(server_round) == after


def kill_this_process() -> None:
    """The process dies at once, as on an out-of-memory kill or a lost node."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
