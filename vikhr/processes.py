"""Processes a command starts that end with it, however it ends.

A command killed at once (`kill -9`, the out-of-memory killer, a job scheduler's hard stop) runs no
clean-up of its own: its worker processes lived on, holding memory and the command's stderr open
(so whoever read that never saw it end). Each is now ended by the kernel when its parent dies.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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

    The processes are spawned: a forked copy of this process would share its open files (a dataset
    being written) and the threads of its libraries (a tokenizer's)."""
    return ProcessPoolExecutor(workers, _SpawnContext(), _start_worker, (os.getpid(), initializer, initargs))


class _PoolProcess(multiprocessing.context.SpawnProcess):
    """A pool's process, which the pool's `terminate` kills: the pool stops the others so when one
    ended abruptly, and then waits for them; a process that ignores SIGTERM (meant for the command,
    which stops the pool itself) would have been waited for without end."""

    def terminate(self) -> None:
        self.kill()


class _SpawnContext(multiprocessing.context.SpawnContext):
    Process = _PoolProcess


def _start_worker(parent_pid: int, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    end_with_parent(parent_pid)
    initializer(*initargs)
