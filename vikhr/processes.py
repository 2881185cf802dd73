"""Processes a command starts that end with it, however it ends.

A command killed at once (`kill -9`, the out-of-memory killer, a job scheduler's hard stop) runs no
clean-up of its own: its worker processes lived on, holding memory and the command's stderr open
(so whoever read that never saw it end). Each is now ended by the kernel when its parent dies.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.resource_tracker
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# The signals that stop a command: a pool's process gets them only once its initializer, which may set
# them aside (the command stops the pool itself), has run (`_PoolProcess.start`).
_STOPS = {signal.SIGINT, signal.SIGTERM}


def end_with_parent(parent_pid: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel send this process `signum` once its parent, process `parent_pid`, has died
    (Linux; elsewhere nothing is done). Call it first thing in the child: had the parent died before
    the request, the child was adopted already and ends here at once.

    The kernel watches the thread that started the child: start it from one that lives as long as
    the child is needed (the main thread)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)


def process_pool(
    workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of `workers` processes, each running `initializer(*initargs)` as it starts and ending
    when this process dies (`end_with_parent`). Create it and submit to it from the main thread.
    SIGINT and SIGTERM reach a process only once `initializer` has run, as it has set them.

    The processes are spawned: a forked copy of this process would share its open files (a dataset
    being written) and the threads of its libraries (a tokenizer's)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return ProcessPoolExecutor(
        workers, _SpawnContext(), _start_worker, (os.getpid(), blocked, initializer, initargs)
    )


class _PoolProcess(multiprocessing.context.SpawnProcess):
    """A pool's process, which the pool's `terminate` kills: the pool stops the others so when one
    ended abruptly, and then waits for them; a process that ignores SIGTERM (meant for the command,
    which stops the pool itself) would have been waited for without end."""

    def terminate(self) -> None:
        self.kill()

    def start(self) -> None:
        """Start the process with SIGINT and SIGTERM blocked, as a spawned process keeps them until
        `_start_worker` has run the initializer: one sent to the whole process group (a scheduler's
        stop, Ctrl-C) while the process started ended it before the initializer could set the signal
        aside, and the command said a process "ended abruptly" instead of stopping. Blocked, it waits,
        then meets the initializer's setting (one ignored is dropped)."""
        # Started first if need be: the tracker unblocks these signals once its own process is started.
        multiprocessing.resource_tracker.ensure_running()
        before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


class _SpawnContext(multiprocessing.context.SpawnContext):
    Process = _PoolProcess


def _start_worker(
    parent_pid: int, blocked: set[signal.Signals], initializer: Callable[..., None], initargs: tuple[Any, ...]
) -> None:
    end_with_parent(parent_pid)
    initializer(*initargs)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a stop sent meanwhile comes now, as set
