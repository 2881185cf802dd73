"""The one way vikhr shows a progress bar: on stderr, and only when stderr is a terminal.

A bar in a log or a captured stderr is noise at best, and at worst a `0%` line beside a one-line error
(the rule every verb follows; `--no-progress` turns the bar off on a terminal too)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

_all_off = False  # inside `bars_off()`


def progress_bar(iterable: Any = None, *, show: bool = True, **options: Any) -> Any:
    """A tqdm bar over `iterable` (or updated by hand), drawn only when `show` and stderr is a terminal.

    tqdm's `disable=None` is its own check of the stream's isatty(), made when the bar is created."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None if show and not _all_off else True, **options)


def bars_shown() -> bool:
    """Whether a bar would show now: stderr is a terminal and no `bars_off` is in force (for code
    that hands a library its own switch)."""
    return not _all_off and sys.stderr.isatty()


@contextlib.contextmanager
def bars_off() -> Iterator[None]:
    """No vikhr bar shows inside (a verb whose other bars are a library's turns its own off with them)."""
    global _all_off
    was_off, _all_off = _all_off, True
    try:
        yield
    finally:
        _all_off = was_off


@contextlib.contextmanager
def transformers_bars(show: bool) -> Iterator[None]:
    """transformers' own bars (over the weights it loads or writes) under the same rule: none inside
    unless `show` and `bars_shown()`; its setting is restored after. For code that uses transformers
    anyway (importing it takes a second or more)."""
    if show and bars_shown():
        yield
        return
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def add_no_progress(parser: argparse.ArgumentParser | Any, *hidden_aliases: str) -> None:
    """Every verb's `--no-progress` (into `args.progress`, True by default): the bar still shows only
    where stderr is a terminal. `hidden_aliases`: older names of the same flag, accepted for the
    scripts that use them but left out of --help, so each verb shows the one name."""
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    if hidden_aliases:
        parser.add_argument(*hidden_aliases, dest="progress", action="store_false", help=argparse.SUPPRESS)
