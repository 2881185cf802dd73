"""One curve on matplotlib axes with every value visible.

A line joins neighbouring finite values only, so a series of one point, or a value between NaN
gaps (a step whose loss was not finite), draws nothing on its own; such lone points get a marker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def lone_points(values: Sequence[float]) -> list[int]:
    """Indices of the finite values with no finite neighbour in `values`."""
    finite = [math.isfinite(v) for v in values]
    last = len(values) - 1
    return [
        i
        for i, ok in enumerate(finite)
        if ok and (i == 0 or not finite[i - 1]) and (i == last or not finite[i + 1])
    ]


def plot_curve(ax: Any, xs: Sequence[float], ys: Sequence[float], **kwargs: Any) -> Any:
    """`ax.plot(xs, ys, **kwargs)`; unless `kwargs` give a marker, the lone points get one."""
    if kwargs.get("marker") is None:
        kwargs.pop("marker", None)
        lone = lone_points(ys)
        if lone:
            kwargs.update(marker="o", markersize=4, markevery=lone)
    return ax.plot(xs, ys, **kwargs)


def whole_steps(ax: Any) -> None:
    """Step ticks at whole numbers only (a short run's axis would otherwise read 2.5, 7.5, …)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def same_values(a: Sequence[tuple[int, float]], b: Sequence[tuple[int, float]]) -> bool:
    """Whether two (step, value) series are one: the same steps and values (NaN matching NaN)."""
    if len(a) != len(b):
        return False
    return all(
        sa == sb and (va == vb or (math.isnan(va) and math.isnan(vb)))
        for (sa, va), (sb, vb) in zip(a, b, strict=True)
    )
