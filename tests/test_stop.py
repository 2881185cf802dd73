"""RunStop: signals noted during the steps, raised at once during the setup."""

from __future__ import annotations

import os
import signal
import time

import pytest

from vikhr.train.stop import RunStop, SignalledInSetup


def test_a_signal_in_the_setup_raises_there_and_no_except_exception_swallows_it() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with RunStop(["SIGUSR1"], in_setup=True) as run_stop:
        with pytest.raises(SignalledInSetup) as raised:
            try:  # setup code that falls back on any error
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(5)
            except Exception:
                pass
        assert raised.value.signum == signal.SIGUSR1
        run_stop.in_setup = False  # the steps: a signal is only noted, the step saved
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert run_stop.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_second_ctrl_c_ends_a_stopping_run_at_once_and_a_second_sigterm_does_not() -> None:
    """With SIGINT among the signals a run saves on, a second Ctrl-C was noted like the first: the
    user waited for the step and the save. It now raises KeyboardInterrupt. A SIGTERM may come twice
    (SLURM signals every process of the job step, torchrun passes its own on): only noted."""
    with RunStop(["SIGINT", "SIGTERM"]) as run_stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert run_stop.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    with RunStop(["SIGINT"]) as run_stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first: noted, the run saves and stops
        time.sleep(0.05)
        assert run_stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
