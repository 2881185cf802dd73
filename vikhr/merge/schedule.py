"""Which t each tensor is merged at: mergekit's scalar-or-gradient `t` with filters.

A value is one number or a gradient — a list interpolated linearly over the decoder layers
(`[0, 0.5, 1]`: layer 0 at 0, the middle layer at 0.5, the last layer at 1). Layer i of L sits
at position i / (L − 1) along the list (position 1 when L = 1). Tensors outside the layers
take the list's ends, as mergekit's planner does: the input embedding (`embed_tokens`) the
first value, the others (final norm, LM head) the last. Filters (`self_attn`, `mlp`) are tried
in the order given; the first that is a substring of the tensor's name chooses its value,
otherwise the default applies (a filter that earlier ones leave no tensor to is refused).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from vikhr.errors import VikhrError

LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
INPUT_EMBEDDING = "embed_tokens"

Gradient = tuple[float, ...]


def parse_gradient(text: str, what: str = "--t") -> Gradient:
    """`0.5`, `0,0.5,1` or `[0, 0.5, 1]` as a gradient; VikhrError unless every value is in [0, 1]
    (its message begins with `what` and the text, or with the text alone for an empty `what`)."""
    given = f"{what} {text!r}".lstrip()
    items = [s.strip() for s in text.strip().removeprefix("[").removesuffix("]").split(",")]
    try:
        values = tuple(float(s) + 0.0 for s in items)  # + 0.0: -0 is 0 (it was printed and recorded as -0)
    except ValueError:
        raise VikhrError(
            f"{given} is not a number or a comma-separated list of numbers (e.g. 0.5 or 0,0.5,1)"
        ) from None
    for v in values:
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise VikhrError(f"{given}: t = {v:g} is outside [0, 1] (0 keeps model A, 1 takes model B)")
    return values


def parse_filter(text: str) -> tuple[str, Gradient]:
    """`self_attn=0,0.5,1` as (filter, gradient)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise VikhrError(f"--t-for {text!r} is not FILTER=T (e.g. self_attn=0,0.5,1 or mlp=0.3)")
    return name.strip(), parse_gradient(value, f"--t-for {name.strip()}")


def gradient_value(values: Gradient, position: float) -> float:
    """The gradient at `position` in [0, 1]: linear between its neighbouring entries."""
    scaled = position * (len(values) - 1)
    lo = int(scaled)
    hi = min(len(values) - 1, lo + 1)
    frac = scaled - lo
    return (1.0 - frac) * values[lo] + frac * values[hi]


def layer_position(name: str, num_layers: int) -> float:
    """Where the tensor `name` sits along a gradient: its layer's i / (L − 1), or an end (module doc)."""
    match = LAYER_INDEX.search(name)
    if match is None:
        return 0.0 if INPUT_EMBEDDING in name else 1.0
    index = int(match.group(1))
    if index >= num_layers:
        raise VikhrError(
            f"tensor {name} is in layer {index} but config.json has num_hidden_layers={num_layers} "
            "(broken checkpoint)"
        )
    return index / (num_layers - 1) if num_layers > 1 else 1.0


@dataclass(frozen=True)
class Schedule:
    """t for every tensor: `filters` tried in order, then `default`."""

    default: Gradient
    filters: tuple[tuple[str, Gradient], ...] = ()

    def t_for(self, name: str, num_layers: int) -> float:
        values = next((g for f, g in self.filters if f in name), self.default)
        return gradient_value(values, layer_position(name, num_layers))

    def check_filters(self, names: list[str]) -> None:
        """VikhrError naming a filter that matches no tensor name (a typo would merge silently
        with the default t), or whose every tensor an earlier filter takes (the first match wins:
        `mlp` before `mlp.up_proj` left the latter's t unused without a word)."""
        for i, (f, _) in enumerate(self.filters):
            matched = [name for name in names if f in name]
            if not matched:
                example = next(iter(sorted(names)), "")
                raise VikhrError(
                    f"--t-for {f}=...: no tensor name contains {f!r} (names look like {example!r}); check "
                    "the filter's spelling"
                )
            earlier = [e for e, _ in self.filters[:i]]
            if f in earlier:
                raise VikhrError(f"--t-for {f}=... is given twice (the first wins); give it once")
            if all(any(e in name for e in earlier) for name in matched):
                taken_by = ", ".join(f"--t-for {e}=..." for e in earlier if any(e in n for n in matched))
                raise VikhrError(
                    f"--t-for {f}=...: every tensor it names is taken by the earlier {taken_by} (the first "
                    "match wins); give the narrower filter first"
                )

    def describe(self) -> dict[str, object]:
        """The schedule as JSON values (for the merge summary)."""
        return {"default": list(self.default), "filters": [[f, list(g)] for f, g in self.filters]}
