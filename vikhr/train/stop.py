"""Stop a run cleanly: save what is consistent, exit — on a signal, or at a time limit.

SLURM sends SIGTERM at a job's time limit or on preemption (and, with `--signal=USR1@600`,
SIGUSR1 a while before), then SIGKILL after its grace time; torchrun passes a SIGTERM it gets on to
its ranks and kills them 30 s later. A rank that gets one of `checkpoint.save_on_signals` only
notes it. Where no signal comes before the end, `checkpoint.stop_after_minutes` (Megatron-LM's
`--exit-duration-in-mins`) stops the run itself. After each step (and after a validation pass or
a save) the ranks agree (one all-reduce of two integers), so all of them save the same step and
stop together, whichever of them was signalled or ran out of time first; a stop agreed after a
step skips the validation pass due there. One process needs no agreement: it drops the step it
is in at the next micro-batch (the state is still the previous step's) and cuts a validation pass
short. Before the first step (setup, the step-0 evaluation) there is nothing new to save: such a
signal ends the run at once, with the same status. A Ctrl-C while a stop is pending (SIGINT among
the signals, pressed twice) ends the run at once, unsaved.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

# sysexits.h's EX_TEMPFAIL ("try again later"): the run stopped at its own time limit, unfinished.
TIME_LIMIT_STATUS = 75


class Stop(NamedTuple):
    reason: str  # "on SIGTERM", "at the time limit (...)"
    status: int  # the process's exit status: 128 + the signal's number, or TIME_LIMIT_STATUS


class SignalledInSetup(BaseException):
    """A stop signal before the first step: there is nothing new to save, so the run ends at once
    (a setup can take minutes, longer than a cluster's grace time). A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunStop:
    """While entered, the given signals are recorded instead of ending the process; while
    `in_setup`, the first one raises SignalledInSetup where the run is. A SIGINT once a stop is
    pending raises KeyboardInterrupt: a second Ctrl-C does not wait for the save."""

    def __init__(
        self,
        signals: list[str],
        minutes: float | None = None,
        started: float | None = None,
        in_setup: bool = False,
    ) -> None:
        """`minutes`: the time limit, counted from `started` (time.monotonic(); default: now)."""
        self.signals = [signal.Signals[name] for name in signals]
        self.minutes = minutes
        self.started = time.monotonic() if started is None else started
        self.received = 0  # the first signal's number; 0: none yet
        self.in_setup = in_setup
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> RunStop:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python runs handlers in the main thread only: signals keep their action
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.received and signum == signal.SIGINT:
            # Not SIGTERM: SLURM signals every process of a job step and torchrun passes its own
            # signal on, so a rank may get the same SIGTERM twice.
            raise KeyboardInterrupt
        self.received = self.received or signum
        if self.in_setup:
            self.in_setup = False  # raised once; a second signal while unwinding is only noted
            raise SignalledInSetup(signum)

    def agreed(self, device: torch.device) -> Stop | None:
        """Whether to stop now and why, the same on every rank (collective); None to go on."""
        if not self.signals and self.minutes is None:
            return None
        out_of_time = self.minutes is not None and time.monotonic() - self.started >= self.minutes * 60
        flags = torch.tensor([self.received, int(out_of_time)], dtype=torch.int64, device=device)
        if dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, out_of_time = (int(x) for x in flags.tolist())
        if signum:
            return Stop(f"on {signal.Signals(signum).name}", 128 + signum)
        if out_of_time:
            return Stop(
                f"at the time limit (checkpoint.stop_after_minutes = {self.minutes:g})", TIME_LIMIT_STATUS
            )
        return None
