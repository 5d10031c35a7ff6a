"""Signal handling without a federation: what the first and the second SIGINT / SIGTERM do."""

import os
import signal

import pytest

from fedaudit.interrupt import Interrupted, graceful_stop, signals_raise


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_raises_interrupted_with_the_exit_code(sig, code):
    before = signal.getsignal(sig)
    with pytest.raises(Interrupted) as info:
        with signals_raise():
            os.kill(os.getpid(), sig)
    assert info.value.exit_code == code and info.value.signal_name == sig.name and not info.value.forced
    assert signal.getsignal(sig) is before      # the previous handler is back


def test_in_a_federation_the_first_signal_asks_and_the_second_stops_at_once(monkeypatch):
    monkeypatch.setattr("fedaudit.interrupt.GRACE_SECONDS", 60.0)
    with graceful_stop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM      # asked, nothing raised
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signal.SIGINT)
    assert info.value.forced and info.value.exit_code == 130


def test_a_stop_that_takes_too_long_becomes_a_stop_at_once(monkeypatch):
    import time

    monkeypatch.setattr("fedaudit.interrupt.GRACE_SECONDS", 0.2)
    with pytest.raises(Interrupted) as info:
        with graceful_stop() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:      # the messages in flight never finish
                time.sleep(0.05)
    assert stop.requested and info.value.forced
