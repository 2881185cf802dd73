"""What vikhr's charts and reports share: a colour per series, the legend beside the axes, and a
label as a Markdown table cell.

matplotlib's default cycle repeats after ten: the 11th model or tokenizer would take the 1st's colour.
Beyond ten, tab20's dark shades come first and its light ones after, so that neighbours do not look
paired. A legend inside the axes covers bars, curve ends or points as soon as there are many series."""

from __future__ import annotations

from typing import Any


def markdown_cell(label: str) -> str:
    """A label (a model's, a tokenizer's) as a Markdown table cell: a '|' or a line break in it
    would break the table's row."""
    return " ".join(label.splitlines()).replace("|", "\\|")


def series_colours(count: int) -> list[tuple[float, float, float]]:
    """`count` colours, distinct up to 20 (then repeating)."""
    import matplotlib.pyplot as plt

    if count <= 10:
        base = list(plt.get_cmap("tab10").colors)
    else:
        tab20 = list(plt.get_cmap("tab20").colors)
        base = tab20[0::2] + tab20[1::2]
    return [base[i % len(base)] for i in range(count)]


def legend_beside(ax: Any, fontsize: Any = 7, **kwargs: Any) -> Any:
    """The legend to the right of the axes, where it covers no data (save with bbox_inches="tight"
    so that the image widens for it)."""
    return ax.legend(
        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=fontsize, **kwargs
    )
