"""The run's curves (curves.png) as drawn from metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_rgba

from vikhr.curves import lone_points
from vikhr.train.monitor import curves_figure


def marked_points(line: Any) -> list[int]:
    """Indices of the points of a matplotlib line that carry a marker."""
    if line.get_marker() in (None, "None", "", " "):
        return []
    every = line.get_markevery()
    return list(range(len(line.get_xdata()))) if every is None else list(every)


def _write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")


def _lines(run_dir: Path) -> dict[str, Any]:
    fig = curves_figure(run_dir)
    lines = {f"{i}:{line.get_label()}": line for i, ax in enumerate(fig.axes) for line in ax.get_lines()}
    plt.close(fig)
    return lines


def test_a_one_step_run_draws_its_points(tmp_path: Path) -> None:
    """A line needs two points: each series of a one-step run is a marker."""
    _write_metrics(tmp_path, [{"step": 1, "kind": "train", "loss": 5.0, "ce": 4.9, "kl": 0.2}])
    lines = _lines(tmp_path)
    assert len(lines) == 3 and all(marked_points(line) == [0] for line in lines.values())


def test_a_value_between_nonfinite_steps_is_marked(tmp_path: Path) -> None:
    """A skipped step's NaN loss cuts the line: the finite value before it, alone, gets a marker."""
    losses = [6.0, math.nan, 5.0, 5.5]
    _write_metrics(
        tmp_path,
        [{"step": s, "kind": "train", "loss": v, "ce": 4.0} for s, v in enumerate(losses, start=1)],
    )
    lines = _lines(tmp_path)
    assert marked_points(lines["0:train loss"]) == [0]  # not the CE: the NaN step differs
    assert marked_points(lines["0:train CE"]) == []  # a line of four
    assert lone_points([math.nan, 1.0, math.nan, 2.0, 3.0, math.inf, 4.0]) == [1, 6]


def test_a_run_without_kl_has_no_kl_panel(tmp_path: Path) -> None:
    """kl.weight 0 logs no KL (none is computed): the curves show the losses alone."""
    _write_metrics(tmp_path, [{"step": s, "kind": "train", "loss": 5.0 - s, "ce": 5.0 - s} for s in (1, 2)])
    fig = curves_figure(tmp_path)
    plt.close(fig)
    assert len(fig.axes) == 1 and {line.get_label() for line in fig.axes[0].get_lines()} == {
        "train loss (CE)"
    }


@pytest.mark.parametrize("steps", [4, 18])  # left to itself the axis reads 0.5, 1.5, … and 2.5, 7.5, …
def test_a_loss_that_is_the_ce_is_one_line_and_steps_are_whole(tmp_path: Path, steps: int) -> None:
    """At λ = 0 the loss is the CE: one line, not two lying one on the other; a short run's step
    axis reads whole steps, not 2.5, 7.5, …"""
    rows = [
        {"step": s, "kind": "train", "loss": 6.0 - 0.1 * s, "ce": 6.0 - 0.1 * s} for s in range(1, steps + 1)
    ]
    rows[3]["loss"] = rows[3]["ce"] = math.nan  # a skipped step: NaN in both is still the same series
    _write_metrics(tmp_path, rows)
    fig = curves_figure(tmp_path)
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    plt.close(fig)
    assert labels == ["train loss (CE)"]
    assert len(ticks) >= 2 and all(float(tick).is_integer() for tick in ticks), ticks


def test_a_run_with_kl_keeps_the_loss_and_the_ce_apart(tmp_path: Path) -> None:
    """With KL in the loss the two differ: both lines, and the KL panel's steps are whole too."""
    rows = [
        {"step": s, "kind": "train", "loss": 6.0 - 0.1 * s + 0.02, "ce": 6.0 - 0.1 * s, "kl": 0.2}
        for s in range(1, 6)
    ]
    _write_metrics(tmp_path, rows)
    fig = curves_figure(tmp_path)
    fig.canvas.draw()
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    kl_ticks = fig.axes[1].get_xticks()
    plt.close(fig)
    assert labels == ["train loss", "train CE"]
    assert all(float(tick).is_integer() for tick in kl_ticks), kl_ticks


def test_many_validation_sets_each_have_their_colour_and_the_legend_covers_no_line(tmp_path: Path) -> None:
    """A run validating on a dozen datasets: past ten lines the default colour cycle gave two
    datasets one colour, and the legend inside the axes lay over the lines."""
    rows: list[dict[str, Any]] = []
    for s in range(1, 6):
        rows.append(
            {"step": s, "kind": "train", "loss": 6.0 - 0.1 * s + 0.02, "ce": 6.0 - 0.1 * s, "kl": 0.2}
        )
        rows.append(
            {"step": s, "kind": "valid", **{f"loss_set{k:02d}": 5.0 + 0.1 * k - 0.1 * s for k in range(12)}}
        )
    _write_metrics(tmp_path, rows)
    fig = curves_figure(tmp_path)
    fig.canvas.draw()
    ax_loss, ax_kl = fig.axes
    colours = [line.get_color() for line in ax_loss.get_lines()]
    legend = ax_loss.get_legend().get_window_extent()
    loss_box, kl_box = ax_loss.get_window_extent(), ax_kl.get_window_extent()
    plt.close(fig)
    assert len(colours) == 14 and len({tuple(to_rgba(c)) for c in colours}) == 14
    assert legend.x0 >= loss_box.x1 and not legend.overlaps(kl_box), (legend, loss_box, kl_box)
