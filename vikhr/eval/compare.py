"""`vikhr eval compare`: results of several models side by side (Markdown, CSV and a PNG bar chart).

Rows are models, columns benchmarks: first those of the Vikhr paper's comparison table (En-MMLU,
Ru-MMLU, CheGeKa, Russian SuperGLUE total), then the main metric of every other task found.
Reference rows (the paper's Table 6 as bundled, published numbers typed into a CSV, or an earlier
compare.csv) can sit beside them; one named like a model adds to its row (say, the MERA total
MERA's site gave the model's submission), except a row of the paper's table: a results row named
like one is refused, measured and published figures never share a row.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.atomic import temporary_paths
from vikhr.charts import legend_beside, markdown_cell, series_colours
from vikhr.errors import VikhrError, split_label

Row = list[float | None]  # one model's values, in the table's column order


def _value(results: dict[str, Any], task: str, metric: str) -> float | None:
    """A metric of the results: a finite number, or None (NaN, ±inf: not known)."""
    value = results["tasks"].get(task, {}).get("metrics", {}).get(metric)
    return value if value is not None and math.isfinite(value) else None


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


_RESULTS_LAYOUT = (
    "expected the output of 'vikhr eval --output' "
    '({"model": ..., "tasks": {name: {"metrics": {metric: number}}}, "groups": {...}})'
)


def _number(value: Any, where: str) -> float | None:
    """A metric value: a finite number, or None (null, NaN or ±inf: a score not known, as MERA's
    hidden test answers give); VikhrError naming `where` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VikhrError(f"{where} is {type(value).__name__} {value!r}, not a number; {_RESULTS_LAYOUT}")
    try:
        return float(value) if math.isfinite(value) else None
    except OverflowError:  # an integer too large for a float
        return None


def _clean_results(path: Path, results: Any) -> dict[str, Any]:
    """The parts of a results file compare reads — tasks' metrics, groups' scores, the model —
    checked (one-line VikhrError naming the file and key) and with unknown scores as None."""
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
        raise VikhrError(f"{path} has no 'tasks' object: {_RESULTS_LAYOUT}")
    tasks: dict[str, Any] = {}
    for task, entry in results["tasks"].items():
        metrics = entry.get("metrics", {}) if isinstance(entry, dict) else None
        if not isinstance(metrics, dict):
            raise VikhrError(f"{path}: tasks.{task} has no 'metrics' object; {_RESULTS_LAYOUT}")
        tasks[task] = {
            "metrics": {m: _number(v, f"{path}: tasks.{task}.metrics.{m}") for m, v in metrics.items()}
        }
    groups = results.get("groups", {})
    if not isinstance(groups, dict) or not all(isinstance(g, dict) for g in groups.values()):
        raise VikhrError(f"{path}: 'groups' is not an object of objects; {_RESULTS_LAYOUT}")
    scores = {g: {"score": _number(v.get("score"), f"{path}: groups.{g}.score")} for g, v in groups.items()}
    known = [v for t in tasks.values() for v in t["metrics"].values()] + [g["score"] for g in scores.values()]
    if all(v is None for v in known):  # a row of dashes: not what a results file is for
        raise VikhrError(f"{path} holds no score (no task metric, no group score); {_RESULTS_LAYOUT}")
    prompt = results.get("prompt")
    chat = isinstance(prompt, dict) and prompt.get("chat_template") is True
    limit = results.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise VikhrError(f"{path}: 'limit' is {limit!r}, not a positive integer or null; {_RESULTS_LAYOUT}")
    version = results.get("vikhr_version")  # absent before vikhr recorded it
    return {
        "model": results.get("model"),
        "tasks": tasks,
        "groups": scores,
        "chat": chat,
        "limit": limit,
        "vikhr_version": version if isinstance(version, str) else None,
    }


def load_results(spec: str) -> tuple[str, Path, dict[str, Any]]:
    """`NAME=FILE` or `FILE` (named after the model directory) -> (name, FILE, the checked results
    of `vikhr eval --output`: tasks' metrics and groups' scores, unknown ones None)."""
    name, file = split_label(spec, "FILE")
    path = Path(file)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VikhrError(
            f"results file not found: {path} (pass the JSON written by 'vikhr eval --output')"
        ) from None
    except IsADirectoryError:
        raise VikhrError(f"{path} is a directory, not a results file; {_RESULTS_LAYOUT}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise VikhrError(f"{path} is not a JSON file ({e}); {_RESULTS_LAYOUT}") from e
    results = _clean_results(path, raw)
    model = results["model"] if isinstance(results["model"], str) else path.stem
    # The same model prompted plainly and in its chat template: two rows told apart.
    default = (Path(model).name or path.stem) + (" (chat)" if results["chat"] else "")
    if results["limit"]:  # scores of a few documents: not to be read beside full runs unmarked
        default += f" (limit {results['limit']})"
    return name or default, path, results


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
            values = [_value(r, task, metric) for _, r in named]
            if all(v is None for v in values):  # MERA's hidden test answers: named below the table
                continue
            labels.append(f"{task} ({metric})")
            cells.append(values)
    rows = [list(row) for row in zip(*cells, strict=True)] if cells else [[] for _ in named]
    return labels, rows


def load_reference(path: Path) -> list[tuple[str, dict[str, float | None]]]:
    """Rows of a reference CSV: header `model,<column>,...` (the columns as compare.csv names them,
    e.g. `En-MMLU`, or any other such as `MERA`), one model per line, values as numbers or empty.
    A UTF-8 byte-order mark (a spreadsheet's export) is allowed."""
    layout = "expected a CSV with the header model,<column>,... and numbers or empty cells (as compare.csv)"
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            lines = list(csv.reader(f, strict=True))
    except FileNotFoundError:
        raise VikhrError(f"reference file not found: {path} ({layout})") from None
    except IsADirectoryError:
        raise VikhrError(f"{path} is a directory, not a reference CSV ({layout})") from None
    except UnicodeDecodeError as e:
        raise VikhrError(f"{path} is not UTF-8 text ({e}); {layout}") from e
    except csv.Error as e:
        raise VikhrError(f"{path}: not a readable CSV ({e}); {layout}") from None
    if not lines or not lines[0] or lines[0][0].strip() != "model" or len(lines[0]) < 2:
        raise VikhrError(f"{path}: the first line is not model,<column>,...; {layout}")
    columns = [c.strip() for c in lines[0][1:]]
    bad = next((c for i, c in enumerate(columns) if not c or c == "model" or c in columns[:i]), None)
    if bad is not None:
        what = "an empty column name" if not bad else f"the column {bad!r} twice"
        raise VikhrError(f"{path}:1: {what}; {layout}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in line):
            continue
        if len(line) != len(columns) + 1:
            raise VikhrError(
                f"{path}:{number}: {len(line)} cells, the header has {len(columns) + 1}; {layout}"
            )
        if not line[0].strip():
            raise VikhrError(f"{path}:{number}: the model name is empty; {layout}")
        values: dict[str, float | None] = {}
        for column, cell in zip(columns, line[1:], strict=True):
            try:
                value = float(cell) if cell.strip() else None
            except ValueError:
                raise VikhrError(f"{path}:{number}: {column} = {cell!r} is not a number; {layout}") from None
            # nan/inf (a score not known, as an earlier compare.csv may hold it): an empty cell.
            values[column] = value if value is not None and math.isfinite(value) else None
        if all(
            v is None for v in values.values()
        ):  # a row of dashes with no bar, as a scoreless results file
            raise VikhrError(
                f"{path}:{number}: the row {line[0].strip()!r} has no score (every cell empty or NaN): fill "
                f"in its numbers or drop the line; {layout}"
            )
        rows.append((line[0].strip(), values))
    if not rows:
        raise VikhrError(f"{path}: no model row below the header; {layout}")
    return rows


# compare.csv keeps six decimals: a reference value within half of its last digit agrees.
_AGREE = 5e-7


def add_reference(
    columns: list[str],
    rows: list[Row],
    names: list[str],
    reference: list[tuple[Path, str, dict[str, float | None]]],
) -> tuple[list[str], list[Row]]:
    """The table with the reference rows ((file, model, values)) below the models' rows. A column
    only the reference has is added: among the paper's columns in their place, any other at the end
    (the models' cells there are empty). A reference row named like a model fills that model's row
    instead (e.g. the MERA total MERA's site gave its submission); a value it gives where the
    results file has another is a VikhrError."""
    paper = [column.label for column in TABLE_COLUMNS]
    named = dict.fromkeys(columns + [c for _, _, values in reference for c in values])
    ordered = [c for c in paper if c in named] + [c for c in named if c not in paper]
    index = {c: i for i, c in enumerate(columns)}
    rows = [[row[index[c]] if c in index else None for c in ordered] for row in rows]
    below = []
    for path, name, values in reference:
        if name not in names:
            below.append([values.get(c) for c in ordered])
            continue
        row = rows[names.index(name)]
        for column, value in values.items():
            i = ordered.index(column)
            if value is not None and row[i] is not None and abs(row[i] - value) > _AGREE:
                raise VikhrError(
                    f"{path}: the row {name!r} gives {column} = {value:g}, its results file {row[i]:g} "
                    "(give the reference row another name to show both)"
                )
            if row[i] is None:  # an agreeing value keeps the measured one, unrounded
                row[i] = value
    return ordered, rows + below


def to_markdown(names: list[str], columns: list[str], rows: list[list[float | None]]) -> str:
    def cell(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    lines = ["| Model | " + " | ".join(map(markdown_cell, columns)) + " |", "|---|" + "---:|" * len(columns)]
    lines += [
        f"| {markdown_cell(name)} | " + " | ".join(cell(v) for v in row) + " |"
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


# Metrics where a smaller value is better (bits, perplexities): charted on an axis of their own, as
# their scale (bpc ≈ 1–13) would flatten the accuracies beside them.
LOWER_IS_BETTER = frozenset({"bpc", "bits_per_byte", "byte_perplexity", "word_perplexity", "perplexity"})


def lower_is_better(column: str) -> bool:
    """Whether a column (`task (metric)`, or a paper column) holds a metric where less is better."""
    return column.endswith(")") and column.rpartition(" (")[2][:-1] in LOWER_IS_BETTER


def _panel_of(column: str) -> str:
    """Which axis of the chart a column's bars go on: score, bits or perplexity."""
    if not lower_is_better(column):
        return "score"
    return "perplexity" if column.rpartition(" (")[2][:-1].endswith("perplexity") else "bits"


def chart_figure(
    names: list[str], columns: list[str], rows: list[list[float | None]], reference_rows: int = 0
) -> Any:
    """The figure of `bar_chart`: scores on one axis; bits and perplexities, if any, each on an axis
    of their own beside it (a perplexity of hundreds beside a bpc of 1 would flatten the bits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = [
        (title, [c for c, column in enumerate(columns) if _panel_of(column) == kind])
        for kind, title in (
            ("score", "score (higher is better)"),
            ("bits", "bits (lower is better)"),
            ("perplexity", "perplexity (lower is better)"),
        )
    ]
    panels = [(title, cs) for title, cs in panels if cs]
    width = 0.8 / len(names)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(6.0, (0.9 + 0.1 * len(names)) * len(columns) + 2), 4.5),
        gridspec_kw={"width_ratios": [len(cs) for _, cs in panels]},
        squeeze=False,
    )
    styles = _bar_styles(len(names), reference_rows)
    for ax, (title, cs) in zip(axes[0], panels, strict=True):
        _bars(ax, names, [[row[c] for c in cs] for row in rows], width, styles)
        ax.set_xticks(range(len(cs)), [columns[c] for c in cs], rotation=20, ha="right")
        ax.set_ylabel(title if len(panels) > 1 else "score")
        ax.grid(axis="y", alpha=0.3)
    # The legend's keys are drawn, not taken from the last panel's bars: a model with no score there
    # has no bar to take its colour from (its key came out in the default blue).
    keys = [
        Patch(facecolor=s["color"], hatch=s["hatch"], edgecolor=s["edgecolor"], linewidth=0, label=name)
        for name, s in zip(names, styles, strict=True)
    ]
    legend_beside(axes[0][-1], fontsize="small", ncol=1 + len(names) // 8, handles=keys)
    fig.tight_layout()
    return fig


def _bar_styles(count: int, reference_rows: int) -> list[dict[str, Any]]:
    """Each model's bar style: its colour; the last `reference_rows` rows are published figures,
    hatched so they stand apart from measured ones."""
    published = {"hatch": "//", "edgecolor": "white"}
    measured = {"hatch": None, "edgecolor": None}
    return [
        {"color": colour, "linewidth": 0, **(published if i >= count - reference_rows else measured)}
        for i, colour in enumerate(series_colours(count))
    ]


def _bars(
    ax: Any, names: list[str], rows: list[list[float | None]], width: float, styles: list[dict[str, Any]]
) -> None:
    """One bar per model and column, in its style (`_bar_styles`); a missing value is an upright
    `n/a` in the model's colour where its bar would stand (a bare gap reads as a score of 0), and a
    score of exactly 0 (a bar of no height, itself a bare gap) an upright `0`."""
    for i, (name, row, style) in enumerate(zip(names, rows, styles, strict=True)):
        offset = (i - (len(names) - 1) / 2) * width
        ax.bar(
            [c + offset for c, v in enumerate(row) if v is not None],
            [v for v in row if v is not None],
            width,
            label=name,
            **style,
        )
        for c, v in enumerate(row):
            if v is None or v == 0:
                mark = "n/a" if v is None else "0"
                ax.text(
                    c + offset,
                    0,
                    mark,
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color=style["color"],
                )
    # Every model's slot in the view: the axes fit the bars drawn, and an `n/a` at a group's edge
    # (the last model's last score) would stand outside them.
    ax.set_xlim(-0.5, len(rows[0]) - 0.5)


def bar_chart(
    names: list[str], columns: list[str], rows: list[list[float | None]], out: Path, reference_rows: int = 0
) -> None:
    """Grouped bars as a PNG: one group per benchmark, one bar per model (a missing value marked `n/a`);
    the last `reference_rows` rows are published figures, hatched so they stand apart from measured
    ones. Bits and perplexities (lower is better) get an axis of their own."""
    import matplotlib.pyplot as plt

    fig = chart_figure(names, columns, rows, reference_rows)
    try:
        fig.savefig(out, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def _refuse_twice(names: list[str], fix: str, files: list[Path] | None = None) -> None:
    """One line for names given to more than one row (`files`: where each name comes from)."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        where = ""
        if files is not None:
            found = dict.fromkeys(str(f) for f, n in zip(files, names, strict=True) if n in twice)
            where = f" in {', '.join(found)}"
        raise VikhrError(f"two rows are named {', '.join(map(repr, twice))}{where}: {fix}")


def _refuse_paper_names(
    loaded: list[tuple[str, Path, dict[str, Any]]],
    reference_rows: list[tuple[Path, str, dict[str, float | None]]],
) -> None:
    """A results row named like a row of the bundled Table 6: the paper's published numbers would fill
    its empty cells (a reference row named like a model adds to its row), measured and published
    figures merged into one row under a name that says "paper"."""
    from vikhr.assets import PAPER_TABLE6

    paper = {name for path, name, _ in reference_rows if path.resolve() == PAPER_TABLE6.resolve()}
    for name, path, _ in loaded:
        if name in paper:
            mine = name.removesuffix(" (paper)").removesuffix(" (closed-source; paper)")
            raise VikhrError(
                f"the results row {name!r} ({path}) is named like the row of the paper's Table 6 that "
                "--paper adds, whose published numbers would fill its empty cells: name your row "
                f"otherwise, e.g. {shlex.join([f'{mine} (measured)={path}'])}"
            )


def _versions_note(loaded: list[tuple[str, Path, dict[str, Any]]]) -> str:
    """A line under the table when the files come from different vikhr versions, whose prompts and
    scoring may differ; none when they agree."""
    by_version: dict[str, list[str]] = {}
    for name, _, results in loaded:
        by_version.setdefault(results["vikhr_version"] or "not recorded", []).append(name)
    if len(by_version) < 2:
        return ""
    each = "; ".join(f"{version}: {', '.join(names)}" for version, names in by_version.items())
    return f"\nThe files come from different vikhr versions ({each}): prompts and scoring may differ.\n"


def compare(specs: list[str], out_dir: Path, references: Sequence[Path] = ()) -> tuple[str, list[Path]]:
    """Write compare.md, compare.csv and compare.png to `out_dir` (with the rows of each reference
    CSV below the models', or in a model's row when named like it); returns (Markdown, paths). The
    three appear together or not at all."""
    if out_dir.is_file():
        raise VikhrError(f"--out {out_dir} is a file: give a directory")
    loaded = [load_results(s) for s in specs]
    named = [(name, results) for name, _, results in loaded]
    models = [n for n, _ in named]
    reference_rows = [(path, *row) for path in references for row in load_reference(path)]
    _refuse_twice(models, "label results files NAME=FILE")
    _refuse_paper_names(loaded, reference_rows)
    _refuse_twice(
        [n for _, n, _ in reference_rows],
        "give reference rows other names",
        [f for f, _, _ in reference_rows],
    )
    columns, rows = add_reference(*comparison_table(named), models, reference_rows)
    names = models + [n for _, n, _ in reference_rows if n not in models]
    if not columns:
        raise VikhrError("the results files have no metric values to compare")
    markdown, table = to_markdown(names, columns, rows), to_csv(names, columns, rows)
    unscored = [
        task
        for task in dict.fromkeys(t for _, r in named for t in r["tasks"])
        if all(v is None for _, r in named for v in r["tasks"].get(task, {}).get("metrics", {}).values())
    ]
    if unscored:
        markdown += f"\nNo score in any file (hidden test answers, or NaN): {', '.join(unscored)}.\n"
    for name, path, results in loaded:
        if results["limit"]:
            markdown += (
                f"\n{name}: run with --limit {results['limit']} ({path}), each task "
                "scored on its first documents only: not comparable with full runs or the paper's rows.\n"
            )
    markdown += _versions_note(loaded)
    paths = [out_dir / "compare.md", out_dir / "compare.csv", out_dir / "compare.png"]
    blocked = [p for p in paths if p.is_dir()]
    if blocked:
        raise VikhrError(f"{blocked[0]} is a directory: move it away, or give another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with temporary_paths(paths) as temps:
            temps[0].write_text(markdown, encoding="utf-8")
            temps[1].write_text(table, encoding="utf-8")
            bar_chart(names, columns, rows, temps[2], reference_rows=len(names) - len(models))
    except OSError as e:
        raise VikhrError(f"cannot write {out_dir}: {e.strerror or e} (give a writable --out)") from None
    return markdown, paths
