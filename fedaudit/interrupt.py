"""SIGINT and SIGTERM: stop a run cleanly, keep what it wrote, exit 130 / 143.

Inside :func:`graceful_stop` (a federation run) the first signal only sets an event: the ServerApp stops
waiting for replies, the runtime finishes the messages in flight, Ray is shut down, and the run directory
records where it stopped. A second signal, or a graceful stop that takes longer than ``GRACE_SECONDS``,
raises :class:`Interrupted` in the main thread at once. Outside a federation (inside :func:`signals_raise`)
a signal raises :class:`Interrupted` straight away. Only the main thread can install handlers; elsewhere
these are no-ops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 6.0


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal. ``exit_code`` is 128 + the signal's number (130 SIGINT, 143 SIGTERM);
    ``round`` is the round that was in progress (when known), ``detail`` the rest of the message."""

    def __init__(self, signum: int, detail: str = "", forced: bool = False, round_: int | None = None):
        super().__init__(detail)
        self.signum = int(signum)
        self.detail = detail
        self.forced = forced
        self.round = round_

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class GracefulStop:
    """Set by the first signal inside :func:`graceful_stop`; the federation polls ``event``."""

    def __init__(self):
        self.event = threading.Event()
        self.signum: int | None = None
        self.requested_at: float | None = None
        self._timer: threading.Timer | None = None

    def request(self, signum: int) -> None:
        self.signum = signum
        self.requested_at = time.monotonic()
        self.event.set()
        # If the messages in flight take too long, the same signal again stops at once.
        self._timer = threading.Timer(GRACE_SECONDS, os.kill, (os.getpid(), signum))
        self._timer.daemon = True
        self._timer.start()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    @property
    def requested(self) -> bool:
        return self.event.is_set()


_graceful: list[GracefulStop] = []


def _handler(signum, frame) -> None:
    stop = _graceful[-1] if _graceful else None
    if stop is not None and not stop.requested:
        log.warning("%s: stopping after the messages in flight; the rounds written so far are kept "
                    "(send it again to stop at once)", signal_name(signum))
        stop.request(signum)
        return
    if stop is not None:
        log.warning("%s: stopping at once", signal_name(signum))
    raise Interrupted(signum, forced=stop is not None)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def reinstall() -> None:
    """Install the handlers again where a library replaced them (``ray.init`` sets its own SIGTERM handler)."""
    if _in_main_thread() and _installed:
        for s in SIGNALS:
            signal.signal(s, _handler)


_installed: list[bool] = []


@contextlib.contextmanager
def signals_raise():
    """SIGINT / SIGTERM raise :class:`Interrupted` in the main thread while the block runs."""
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    _installed.append(True)
    try:
        yield
    finally:
        _installed.pop()
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def graceful_stop():
    """The first SIGINT / SIGTERM sets the yielded :class:`GracefulStop` instead of raising."""
    stop = GracefulStop()
    _graceful.append(stop)
    try:
        with signals_raise():
            yield stop
    finally:
        stop.cancel_timer()
        _graceful.remove(stop)


__all__ = ["GRACE_SECONDS", "GracefulStop", "Interrupted", "graceful_stop", "reinstall", "signal_name",
           "signals_raise"]
