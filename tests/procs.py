"""Ports and processes for tests that start servers of their own: a free port on 127.0.0.1, and stopping
exactly the processes a test started (by what their command lines name), never anybody else's."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of every process (Linux /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace").split("\0")
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(entry)] = (ppid, cmd)
    return out


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"     # a zombie has exited; its parent has not collected it


def stop_processes(matches: Callable[[list[str]], bool], timeout: float = 20.0) -> int:
    """Terminate every process whose command line ``matches`` and every process under it (SIGTERM, then
    SIGKILL after ``timeout``); returns how many there were."""
    procs = _processes()
    roots = [pid for pid, (_, cmd) in procs.items() if pid != os.getpid() and matches(cmd)]
    family, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == parent and pid not in family:
                family.add(pid)
                frontier.append(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in family:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(pid) for pid in family):
            time.sleep(0.2)
        if not any(_alive(pid) for pid in family):
            break
    return len(family)
