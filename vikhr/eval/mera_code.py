"""ruHumanEval (MERA): running model-written Python functions on the task's test inputs, and pass@k.

Each completion is appended to the record's function header and run in its own `python -I`
subprocess: an empty temporary working directory, an empty environment, a wall-clock timeout,
and resource limits (1 GiB of address space, CPU time, file size 0 — files can be created but
get no content —, no new processes where the user is not root). The subprocess and whatever
processes the code starts end with its run (timed out or not) and with the evaluating process,
however that ends (`kill -9` too). This contains runaway and careless code; it is not a security
sandbox (the code can still read files, create empty ones, open sockets and leave its process
group), so run `mera_ruhumaneval` only on models you would let run code on the machine.

As in the release, a test's result is `str()` of the returned value (None when it raised or
returned None), a program that fails to define the function gives None for every test, and one
that runs out of time gives the string "timed out"; a completion passes when every result equals
the expected one.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

TIMEOUT_S = 3.0  # per completion, as in the release
PASS_KS = (1, 5, 10)
_MEMORY_BYTES = 1 << 30

# Runs in the child: reads {"program", "entry_point", "tests"} (a Python literal: a list of keyword
# arguments) from stdin, writes the results as JSON to the original stdout; the program's own
# output goes to /dev/null. First it forks a watchdog that ends the child's process group once
# the lifeline (argv[1], a pipe's read end whose write end only the evaluating process holds) reads
# end of file: the evaluating process has died, even by SIGKILL, which ends nothing of its own.
# The process limit comes after that fork: the watchdog is the one process the child may start.
_CHILD = r"""
import ast, json, os, resource, signal, sys
lifeline = int(sys.argv[1])
if os.fork() == 0:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the pipes stay the child's alone: its results' end of file is its exit
        os.dup2(null, fd)
    os.read(lifeline, 1)
    os.killpg(0, signal.SIGKILL)
    os._exit(0)
os.close(lifeline)
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
payload = json.loads(sys.stdin.read())
tests = ast.literal_eval(payload["tests"])
out = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
os.dup2(null, 2)
namespace = {}
try:
    exec(payload["program"], namespace)
    function = namespace[payload["entry_point"]]
except BaseException:
    results = [None] * len(tests)
else:
    results = []
    for kwargs in tests:
        try:
            value = function(**kwargs)
            results.append(None if value is None else str(value))
        except BaseException:
            results.append(None)
out.write(json.dumps(results))
out.flush()
"""


def _limit_resources() -> None:  # runs in the child before exec
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_BYTES, _MEMORY_BYTES))
    cpu = math.ceil(TIMEOUT_S) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_tests(
    program: str, entry_point: str, tests: str, timeout: float = TIMEOUT_S
) -> list[str | None] | str:
    """The results of `entry_point(**kwargs)` for each keyword-argument dict of `tests` (a Python
    literal, as the records store it), as MERA records them (see the module doc)."""
    count = len(ast.literal_eval(tests))
    payload = json.dumps({"program": program, "entry_point": entry_point, "tests": tests})
    lifeline, lifeline_held = os.pipe()  # the write end stays here: the child's watchdog reads the other
    try:
        with tempfile.TemporaryDirectory(prefix="vikhr-ruhumaneval-") as workdir:
            try:
                # A new session: the child and what it starts form one process group, ended as one.
                child = subprocess.Popen(
                    [sys.executable, "-I", "-c", _CHILD, str(lifeline)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    cwd=workdir,
                    env={},
                    pass_fds=(lifeline,),
                    preexec_fn=_limit_resources,
                    start_new_session=True,
                )
            finally:
                os.close(lifeline)
            try:
                stdout, _ = child.communicate(payload, timeout=timeout)
            except subprocess.TimeoutExpired:
                stdout = None
            finally:
                _end_group(child)
    finally:
        os.close(lifeline_held)
    if stdout is None:
        return "timed out"
    try:
        results = json.loads(stdout)
    except json.JSONDecodeError:  # killed by a resource limit before writing
        return [None] * count
    return results if isinstance(results, list) and len(results) == count else [None] * count


def _end_group(child: subprocess.Popen[str]) -> None:
    """Ends the process group `child` leads (its watchdog, processes the code left running) and reaps
    the child. No other group is hit: the id is no other process's while one of the group lives, and
    the watchdog lives until this kill."""
    with contextlib.suppress(ProcessLookupError):  # the whole group has ended
        os.killpg(child.pid, signal.SIGKILL)
    child.communicate()


def passes(expected: list[str], results: list[str | None] | str) -> bool:
    """Whether every test result equals the expected one (the release's `check_solution`)."""
    if not results or len(results) != len(expected) or not isinstance(results[0], type(expected[0])):
        return False
    return all(e == r for e, r in zip(expected, results, strict=True))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of n samples of which c pass: 1 − C(n−c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def unfenced(completion: str) -> str:
    """The code inside a Markdown fence wrapping the whole completion (a chat model's habit, e.g.
    "```python\n...\n```"; also with another fence character), as the release cuts it; a
    completion opening with whitespace (the function's body) is kept as it is."""
    if not completion or completion[0] in " \n\t":
        return completion
    fence = completion[0] * 3
    opening = fence + "python"
    if completion.startswith(opening) and completion.endswith(fence):
        return completion[len(opening) : -len(fence)]
    return completion


def execute_completions(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[Any]]:
    """lm-eval filter: each document's completions -> the test results of each completion."""
    from vikhr.progress_bar import progress_bar

    out = []
    for completions, doc in progress_bar(
        list(zip(resps, docs, strict=True)), desc="ruHumanEval tests", leave=False
    ):
        scoring = json.loads(doc["scoring"])
        out.append(
            [
                run_tests(scoring["function"] + unfenced(c), scoring["entry_point"], scoring["tests"])
                for c in completions
            ]
        )
    return out
