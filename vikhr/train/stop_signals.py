"""Stop a run cleanly on a signal: finish the step, save it, exit (a cluster's notice of the end).

SLURM sends SIGTERM at a job's time limit or on preemption (and, with `--signal=USR1@120`,
SIGUSR1 a while before), then SIGKILL after its grace time; torchrun passes a SIGTERM it gets on to
its ranks and kills them 30 s later. A rank that gets one of `checkpoint.save_on_signals` only
notes it; after each step the ranks agree (one all-reduce of one integer), so all of them save the
same step and stop together, whichever of them was signalled.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist


class StopSignals:
    """While entered, the given signals are recorded instead of ending the process."""

    def __init__(self, names: list[str]) -> None:
        self.signals = [signal.Signals[name] for name in names]
        self.received = 0  # the first signal's number; 0: none yet
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
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
        self.received = self.received or signum

    def agreed(self, device: torch.device) -> signal.Signals | None:
        """The signal some rank received, on every rank (collective); None while none has."""
        if not self.signals:
            return None
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return signal.Signals(int(flag.item())) if int(flag.item()) else None


def exit_status(sig: signal.Signals) -> int:
    """The shell's status for a process ended by `sig` (143 for SIGTERM): the run did not finish."""
    return 128 + int(sig)
