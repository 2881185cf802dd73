"""`vikhr eval compare`: results of several models side by side (Markdown, CSV and a PNG bar chart).

Rows are models, columns benchmarks: first those of the Vikhr paper's comparison table (En-MMLU,
Ru-MMLU, CheGeKa, Russian SuperGLUE total), then the main metric of every other task found.
Reference rows (the paper's Table 6 as bundled, published numbers typed into a CSV, or an earlier
compare.csv) can sit beside them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.atomic import temporary_path, write_text
from vikhr.errors import VikhrError

Row = list[float | None]  # one model's values, in the table's column order


def _value(results: dict[str, Any], task: str, metric: str) -> float | None:
    value = results["tasks"].get(task, {}).get("metrics", {}).get(metric)
    return None if value is None or value != value else value  # NaN: a score MERA keeps hidden


@dataclass(frozen=True)
class Column:
    """A column of the paper's table: the first of `sources` ((task, metric), in order of
    preference) a results file has a value for, or `group`'s total."""

    label: str
    sources: tuple[tuple[str, str], ...] = ()
    group: str | None = None

    def pick(self, results: dict[str, Any]) -> tuple[float | None, str | None]:
        """(value, the task it came from; None for a group total or no value)."""
        if self.group is not None:
            return results.get("groups", {}).get(self.group, {}).get("score"), None
        for task, metric in self.sources:
            if (value := _value(results, task, metric)) is not None:
                return value, task
        return None, None


# The paper's columns, in its order. Ru-MMLU is the translated MMLU, else MERA's ruMMLU; CheGeKa the
# local set, else MERA's. The RSG tasks keep their own columns beside the total.
TABLE_COLUMNS = [
    Column("En-MMLU", (("mmlu_en", "acc"),)),
    Column("Ru-MMLU", (("mmlu_ru", "acc"), ("mera_rummlu", "acc"))),
    Column("CheGeKa (F1)", (("chegeka", "f1"), ("mera_chegeka", "f1"))),
    Column("Russian SuperGLUE", group="rsg"),
]


def load_results(spec: str) -> tuple[str, dict[str, Any]]:
    """`NAME=FILE` or `FILE` (named after the model directory) -> (name, results of `vikhr eval --output`)."""
    name, _, file = spec.rpartition("=")
    path = Path(file)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VikhrError(
            f"results file not found: {path} (pass the JSON written by 'vikhr eval --output')"
        ) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise VikhrError(
            f"{path} is not a JSON file ({e}); expected the output of 'vikhr eval --output'"
        ) from e
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
        raise VikhrError(
            f"{path} has no 'tasks' object: expected the output of 'vikhr eval --output' "
            '({"model": ..., "tasks": {name: {"metrics": {...}}}})'
        )
    return name or Path(str(results.get("model", path.stem))).name or path.stem, results


def comparison_table(named: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[Row]]:
    """(column names, one row of values per model); only columns some model has a value for.

    A task behind a paper column loses its own column only when every file with a value for it gave
    the paper column that value (e.g. `mera_chegeka` stays beside a CheGeKa column from `chegeka`)."""
    labels: list[str] = []
    cells: list[list[float | None]] = []  # by column, then by model
    covered: set[str] = set()
    for column in TABLE_COLUMNS:
        picked = [column.pick(r) for _, r in named]
        if all(value is None for value, _ in picked):
            continue
        labels.append(column.label)
        cells.append([value for value, _ in picked])
        for task, metric in column.sources:
            pairs = zip(picked, named, strict=True)
            having = [used for (_, used), (_, r) in pairs if _value(r, task, metric) is not None]
            if all(used == task for used in having):
                covered.add(task)
    # Every other task: its main (first) metric, as `vikhr eval` orders them.
    for task in dict.fromkeys(t for _, r in named for t in r["tasks"]):
        if task in covered:
            continue
        metrics = next(r["tasks"][task].get("metrics") or {} for _, r in named if task in r["tasks"])
        if metrics:
            metric = next(iter(metrics))
            labels.append(f"{task} ({metric})")
            cells.append([r["tasks"].get(task, {}).get("metrics", {}).get(metric) for _, r in named])
    rows = [list(row) for row in zip(*cells, strict=True)] if cells else [[] for _ in named]
    return labels, rows


def load_reference(path: Path) -> list[tuple[str, dict[str, float | None]]]:
    """Rows of a reference CSV: header `model,<column>,...` (the columns as compare.csv names them,
    e.g. `En-MMLU`, or any other such as `MERA`), one model per line, values as numbers or empty."""
    layout = "expected a CSV with the header model,<column>,... and numbers or empty cells (as compare.csv)"
    try:
        with path.open(encoding="utf-8", newline="") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        raise VikhrError(f"reference file not found: {path} ({layout})") from None
    except UnicodeDecodeError as e:
        raise VikhrError(f"{path} is not UTF-8 text ({e}); {layout}") from e
    if not lines or not lines[0] or lines[0][0].strip() != "model" or len(lines[0]) < 2:
        raise VikhrError(f"{path}: the first line is not model,<column>,...; {layout}")
    columns = [c.strip() for c in lines[0][1:]]
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in line):
            continue
        if len(line) != len(columns) + 1:
            raise VikhrError(
                f"{path}:{number}: {len(line)} cells, the header has {len(columns) + 1}; {layout}"
            )
        values: dict[str, float | None] = {}
        for column, cell in zip(columns, line[1:], strict=True):
            try:
                values[column] = float(cell) if cell.strip() else None
            except ValueError:
                raise VikhrError(f"{path}:{number}: {column} = {cell!r} is not a number; {layout}") from None
        rows.append((line[0].strip(), values))
    return rows


def add_reference(
    columns: list[str], rows: list[Row], reference: list[tuple[str, dict[str, float | None]]]
) -> tuple[list[str], list[Row]]:
    """The table with the reference rows below the models' rows. A column only the reference has
    is added: among the paper's columns in their place, any other at the end (the models' cells
    there are empty)."""
    paper = [column.label for column in TABLE_COLUMNS]
    named = dict.fromkeys(columns + [c for _, values in reference for c in values])
    ordered = [c for c in paper if c in named] + [c for c in named if c not in paper]
    index = {c: i for i, c in enumerate(columns)}
    rows = [[row[index[c]] if c in index else None for c in ordered] for row in rows]
    rows += [[values.get(c) for c in ordered] for _, values in reference]
    return ordered, rows


def to_markdown(names: list[str], columns: list[str], rows: list[list[float | None]]) -> str:
    def cell(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    lines = ["| Model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [
        f"| {name} | " + " | ".join(cell(v) for v in row) + " |"
        for name, row in zip(names, rows, strict=True)
    ]
    return "\n".join(lines) + "\n"


def to_csv(names: list[str], columns: list[str], rows: list[list[float | None]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", *columns])
    for name, row in zip(names, rows, strict=True):
        writer.writerow([name, *("" if v is None else f"{v:.6f}" for v in row)])
    return buffer.getvalue()


def bar_chart(
    names: list[str], columns: list[str], rows: list[list[float | None]], out: Path, reference_rows: int = 0
) -> None:
    """Grouped bars: one group per benchmark, one bar per model (missing values left out); the last
    `reference_rows` rows are published figures, hatched so they stand apart from measured ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Beyond ten bars the default colour cycle repeats: two models would share a colour. tab20
    # pairs dark and light shades; its dark ones come first so neighbours do not look paired.
    tab20 = plt.get_cmap("tab20").colors
    colours = plt.get_cmap("tab10").colors if len(names) <= 10 else tab20[0::2] + tab20[1::2]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, (0.9 + 0.1 * len(names)) * len(columns) + 2), 4.5))
    for i, (name, row) in enumerate(zip(names, rows, strict=True)):
        xs = [c + (i - (len(names) - 1) / 2) * width for c, v in enumerate(row) if v is not None]
        published = i >= len(names) - reference_rows
        ax.bar(
            xs,
            [v for v in row if v is not None],
            width,
            label=name,
            color=colours[i % len(colours)],
            hatch="//" if published else None,
            edgecolor="white" if published else None,
            linewidth=0,
        )
    ax.set_xticks(range(len(columns)), columns, rotation=20, ha="right")
    ax.set_ylabel("score")
    ax.legend(fontsize="small", ncol=1 + len(names) // 8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with temporary_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def compare(specs: list[str], out_dir: Path, references: Sequence[Path] = ()) -> tuple[str, list[Path]]:
    """Write compare.md, compare.csv and compare.png to `out_dir` (with the rows of each reference
    CSV below the models'); returns (Markdown, paths)."""
    named = [load_results(s) for s in specs]
    reference_rows = [row for path in references for row in load_reference(path)]
    names = [n for n, _ in named] + [n for n, _ in reference_rows]
    if len(set(names)) != len(names):
        raise VikhrError(
            f"two rows have the same model name ({', '.join(names)}): label results files NAME=FILE "
            "and give reference rows other names"
        )
    columns, rows = add_reference(*comparison_table(named), reference_rows)
    if not columns:
        raise VikhrError("the results files have no metric values to compare")
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(names, columns, rows)
    paths = [out_dir / "compare.md", out_dir / "compare.csv", out_dir / "compare.png"]
    write_text(paths[0], markdown)
    write_text(paths[1], to_csv(names, columns, rows))
    bar_chart(names, columns, rows, paths[2], reference_rows=len(reference_rows))
    return markdown, paths
