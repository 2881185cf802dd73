"""`vikhr eval compare`: two results files -> the Table-6-style Markdown, CSV and PNG chart."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from vikhr.cli import main as cli_main
from vikhr.eval.compare import comparison_table
from vikhr.eval.rsg import RSG_SCORE_METRICS


def results(
    model: str, mmlu_en: float, mmlu_ru: float | None, chegeka: float, rsg: float | None
) -> dict[str, Any]:
    """A results file as `vikhr eval --output` writes it."""
    tasks: dict[str, Any] = {
        "mmlu_en": {"metrics": {"acc": mmlu_en}, "stderr": {}, "num_fewshot": 5, "n": 100},
        "chegeka": {
            "metrics": {"exact_match": chegeka / 2, "f1": chegeka},
            "stderr": {},
            "num_fewshot": 4,
            "n": 100,
        },
        "rucola": {"metrics": {"acc": 0.7, "mcc": 0.1}, "stderr": {}, "num_fewshot": 0, "n": 100},
    }
    if mmlu_ru is not None:
        tasks["mera_rummlu"] = {"metrics": {"acc": mmlu_ru}, "stderr": {}, "num_fewshot": 5, "n": 100}
    out: dict[str, Any] = {"model": f"/models/{model}", "limit": None, "tasks": tasks}
    if rsg is not None:
        out["groups"] = {"rsg": {"score": rsg, "tasks": dict.fromkeys(RSG_SCORE_METRICS, rsg)}}
    return out


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_compare_two_models_writes_table_csv_and_chart(tmp_path: Path, capsys: Any) -> None:
    a = write(tmp_path / "a.json", results("mistral-7b", 0.604, None, 0.05, 0.515))
    b = write(tmp_path / "b.json", results("vikhr-7b", 0.597, 0.503, 0.124, 0.544))
    out = tmp_path / "cmp"
    assert cli_main(["eval", "compare", str(a), f"Vikhr={b}", "--out", str(out)]) == 0
    table = (out / "compare.md").read_text(encoding="utf-8")
    assert table.splitlines() == [
        "| Model | En-MMLU | Ru-MMLU | CheGeKa (F1) | Russian SuperGLUE | rucola (acc) |",
        "|---|---:|---:|---:|---:|---:|",
        "| mistral-7b | 0.604 | — | 0.050 | 0.515 | 0.700 |",
        "| Vikhr | 0.597 | 0.503 | 0.124 | 0.544 | 0.700 |",
    ]
    assert table in capsys.readouterr().out
    rows = list(csv.reader((out / "compare.csv").open(encoding="utf-8")))
    assert rows[0] == ["model", "En-MMLU", "Ru-MMLU", "CheGeKa (F1)", "Russian SuperGLUE", "rucola (acc)"]
    assert rows[1][0] == "mistral-7b" and rows[1][2] == "" and float(rows[1][4]) == 0.515
    assert rows[2] == ["Vikhr", "0.597000", "0.503000", "0.124000", "0.544000", "0.700000"]
    png = (out / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    import matplotlib.image

    image = matplotlib.image.imread(out / "compare.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert not list(out.glob(".*tmp*"))


def test_bits_per_character_gets_an_axis_of_its_own() -> None:
    """bpc (about 1 to 13, lower is better) shared the accuracies' axis: their bars were flattened
    to slivers. Now scores and bits each have an axis; a chart of scores only has one."""
    import matplotlib.pyplot as plt

    from vikhr.eval.compare import chart_figure, comparison_table

    named = []
    for name, acc, bpc in (("base", 0.604, 12.9), ("vikhr", 0.597, 0.81)):
        data = results(name, acc, None, 0.1, None)
        data["tasks"]["bpc"] = {"metrics": {"bpc": bpc, "bits_per_byte": bpc / 1.8}, "stderr": {}}
        named.append((name, data))
    columns, rows = comparison_table(named)
    assert columns == ["En-MMLU", "CheGeKa (F1)", "rucola (acc)", "bpc (bpc)"]
    fig = chart_figure(["base", "vikhr"], columns, rows)
    try:
        scores, bits = fig.axes
        assert [t.get_text() for t in scores.get_xticklabels()] == columns[:3]
        assert [t.get_text() for t in bits.get_xticklabels()] == ["bpc (bpc)"]
        assert scores.get_ylim()[1] < 1 and bits.get_ylim()[1] > 12.9
        assert "lower is better" in bits.get_ylabel() and "higher is better" in scores.get_ylabel()
    finally:
        plt.close(fig)
    fig = chart_figure(["base", "vikhr"], columns[:3], [row[:3] for row in rows])
    try:
        assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "score"
    finally:
        plt.close(fig)


def test_a_run_with_limit_is_marked_in_its_row_and_below_the_table(tmp_path: Path, capsys: Any) -> None:
    """A --limit run's scores (a few documents per task) sat beside full runs and the paper's rows
    unmarked."""
    a = write(tmp_path / "a.json", results("mistral-7b", 0.604, None, 0.05, 0.515))
    b = write(tmp_path / "b.json", {**results("vikhr-7b", 0.6, 0.5, 0.1, 0.287), "limit": 3})
    out = tmp_path / "cmp"
    assert cli_main(["eval", "compare", str(a), str(b), f"Named={b}", "--out", str(out)]) == 0
    table = (out / "compare.md").read_text(encoding="utf-8")
    names = [row.split(",")[0] for row in (out / "compare.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert names == ["mistral-7b", "vikhr-7b (limit 3)", "Named"]
    assert f"vikhr-7b (limit 3): run with --limit 3 ({b}), each task scored on its first documents" in table
    assert f"Named: run with --limit 3 ({b})" in table and "mistral-7b:" not in table
    assert table in capsys.readouterr().out


def test_files_of_different_vikhr_versions_are_said_below_the_table(tmp_path: Path, capsys: Any) -> None:
    """Scores of two vikhr versions (their prompts and scoring may differ) sat side by side unmarked."""
    a = write(
        tmp_path / "a.json", {**results("mistral-7b", 0.604, None, 0.05, 0.515), "vikhr_version": "0.3.0"}
    )
    b = write(tmp_path / "b.json", {**results("vikhr-7b", 0.6, 0.5, 0.1, 0.287), "vikhr_version": "0.3.0"})
    old = write(tmp_path / "old.json", results("saiga-7b", 0.6, 0.5, 0.1, 0.287))  # before versions were kept
    out = tmp_path / "cmp"
    assert cli_main(["eval", "compare", str(a), str(b), "--out", str(out)]) == 0
    assert "vikhr versions" not in (out / "compare.md").read_text(encoding="utf-8")
    newer = write(tmp_path / "c.json", {**results("qwen-7b", 0.7, 0.6, 0.2, 0.3), "vikhr_version": "0.4.0"})
    assert cli_main(["eval", "compare", str(a), str(b), str(newer), str(old), "--out", str(out)]) == 0
    line = (
        "The files come from different vikhr versions (0.3.0: mistral-7b, vikhr-7b; 0.4.0: qwen-7b; "
        "not recorded: saiga-7b): prompts and scoring may differ."
    )
    assert line in (out / "compare.md").read_text(encoding="utf-8") and line in capsys.readouterr().out


def test_a_results_path_holding_an_equals_sign_is_a_file_not_a_name(tmp_path: Path) -> None:
    """Sweep directories are named like ``lr=3e-4``: such a path was split into the name "…/lr" and a
    file "3e-4/…" that does not exist."""
    sweep = tmp_path / "lr=3e-4"
    sweep.mkdir()
    a = write(sweep / "results.json", results("mistral-7b", 0.604, None, 0.05, 0.515))
    b = write(tmp_path / "b=c.json", {**results("vikhr-7b", 0.6, 0.5, 0.1, 0.287), "limit": 3})
    out = tmp_path / "cmp"
    argv = ["eval", "compare", str(a), f"Sweep={a}", f"x=y={b}", "--out", str(out)]
    assert cli_main(argv) == 0
    names = [row.split(",")[0] for row in (out / "compare.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert names == ["mistral-7b", "Sweep", "x=y"]
    assert f"x=y: run with --limit 3 ({b})" in (out / "compare.md").read_text(encoding="utf-8")


def test_translated_ru_mmlu_is_preferred_and_empty_columns_dropped() -> None:
    first = results("m", 0.5, 0.4, 0.1, None)
    first["tasks"]["mmlu_ru"] = {"metrics": {"acc": 0.45}}
    columns, rows = comparison_table([("m", first)])
    # No RSG total (not all nine ran); MERA's ruMMLU, not the Ru-MMLU figure here, keeps its column.
    assert columns == ["En-MMLU", "Ru-MMLU", "CheGeKa (F1)", "rucola (acc)", "mera_rummlu (acc)"]
    assert rows == [[0.5, 0.45, 0.1, 0.7, 0.4]]
    # MERA's CheGeKa fills the column when the local set did not run; a NaN score counts as none.
    second = results("n", 0.5, 0.4, 0.1, None)
    del second["tasks"]["chegeka"]
    second["tasks"]["mera_chegeka"] = {"metrics": {"f1": 0.2, "em": 0.1}}
    second["tasks"]["mmlu_ru"] = {"metrics": {"acc": float("nan")}}
    columns, rows = comparison_table([("n", second)])
    assert columns == ["En-MMLU", "Ru-MMLU", "CheGeKa (F1)", "rucola (acc)"] and rows == [
        [0.5, 0.4, 0.2, 0.7]
    ]
    # With both CheGeKa sets in a file, the local one fills the column and MERA's keeps its own.
    second["tasks"]["chegeka"] = {"metrics": {"exact_match": 0.05, "f1": 0.1}}
    del first["tasks"]["mera_rummlu"]
    columns, rows = comparison_table([("n", second), ("m", first)])
    assert columns == ["En-MMLU", "Ru-MMLU", "CheGeKa (F1)", "rucola (acc)", "mera_chegeka (f1)"]
    assert rows == [[0.5, 0.4, 0.1, 0.7, 0.2], [0.5, 0.45, 0.1, 0.7, None]]


def one_line_error(argv: list[str], capsys: Any) -> str:
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    return err


def test_compare_bad_input(tmp_path: Path, capsys: Any) -> None:
    good = write(tmp_path / "good.json", results("m", 0.5, None, 0.1, None))
    out = ["--out", str(tmp_path / "cmp")]
    err = one_line_error(["eval", "compare", str(tmp_path / "missing.json"), *out], capsys)
    assert "results file not found" in err and "missing.json" in err
    not_json = tmp_path / "bad.json"
    not_json.write_text("{oops", encoding="utf-8")
    err = one_line_error(["eval", "compare", str(not_json), *out], capsys)
    assert "bad.json is not a JSON file" in err
    other = write(tmp_path / "other.json", {"results": {}})
    err = one_line_error(["eval", "compare", str(other), *out], capsys)
    assert "other.json has no 'tasks' object" in err and "vikhr eval --output" in err
    err = one_line_error(["eval", "compare", str(good), str(good), *out], capsys)
    assert "two rows are named 'm'" in err and "NAME=FILE" in err
    assert not (tmp_path / "cmp").exists()
    # `vikhr eval` without a verb still needs --model.
    err = one_line_error(["eval", "--tasks", "terra"], capsys)
    assert "--model is required" in err


def test_evaluation_options_before_compare_are_refused(tmp_path: Path, capsys: Any) -> None:
    """`vikhr eval --tasks mmlu_en compare a.json` was taken and the --tasks silently dropped (argparse
    accepts the evaluation's options before the verb): one line names them; nothing is written."""
    good = write(tmp_path / "good.json", results("m", 0.5, None, 0.1, None))
    out = ["--out", str(tmp_path / "cmp")]
    err = one_line_error(["eval", "--tasks", "mmlu_en", "compare", str(good), *out], capsys)
    assert "--tasks is an option of the evaluation" in err and "not of compare" in err
    err = one_line_error(["eval", "--model", "m", "--no-progress", "compare", str(good), *out], capsys)
    assert "--model, --no-progress are options of the evaluation" in err
    assert not (tmp_path / "cmp").exists()
    assert cli_main(["eval", "compare", str(good), *out]) == 0


@pytest.mark.parametrize("models", [1, 3])
def test_compare_any_number_of_models(tmp_path: Path, models: int) -> None:
    files = [
        f"m{i}={write(tmp_path / f'{i}.json', results(f'm{i}', 0.3 + i / 10, 0.2, 0.1, 0.4))}"
        for i in range(models)
    ]
    assert cli_main(["eval", "compare", *files, "--out", str(tmp_path / "cmp")]) == 0
    lines = (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 + models and lines[-1].startswith(
        f"| m{models - 1} | {0.3 + (models - 1) / 10:.3f} |"
    )


def test_reference_rows_sit_beside_the_models(tmp_path: Path, capsys: Any) -> None:
    """Published numbers typed into a CSV: matched to the table's columns by name, a column only
    the reference has (MERA) added at the end, empty cells kept empty; an earlier compare.csv
    works as a reference too."""
    a = write(tmp_path / "a.json", results("vikhr-7b", 0.597, 0.503, 0.124, 0.544))
    reference = tmp_path / "paper.csv"
    reference.write_text(
        "model,En-MMLU,Ru-MMLU,MERA\nPaper model (published),0.62,0.51,0.43\nOther (published),0.55,,\n",
        encoding="utf-8",
    )
    out = tmp_path / "cmp"
    argv = ["eval", "compare", str(a), "--reference", str(reference), "--out", str(out)]
    assert cli_main(argv) == 0
    table = (out / "compare.md").read_text(encoding="utf-8").splitlines()
    assert (
        table[0] == "| Model | En-MMLU | Ru-MMLU | CheGeKa (F1) | Russian SuperGLUE | rucola (acc) | MERA |"
    )
    assert table[2] == "| vikhr-7b | 0.597 | 0.503 | 0.124 | 0.544 | 0.700 | — |"
    assert table[3] == "| Paper model (published) | 0.620 | 0.510 | — | — | — | 0.430 |"
    assert table[4] == "| Other (published) | 0.550 | — | — | — | — | — |"
    # The CSV just written, as the reference of another comparison: the same rows come back.
    b = write(tmp_path / "b.json", results("mistral-7b", 0.604, None, 0.05, 0.515))
    again = tmp_path / "cmp2"
    assert (
        cli_main(["eval", "compare", str(b), "--reference", str(out / "compare.csv"), "--out", str(again)])
        == 0
    )
    assert (again / "compare.md").read_text(encoding="utf-8").splitlines()[3:6] == table[2:5]
    capsys.readouterr()


def test_reference_row_named_like_a_model_fills_its_row(tmp_path: Path, capsys: Any) -> None:
    """The MERA total MERA's site gave a model's submission joins that model's row: no row of its
    own, the measured cells kept (a reference value that agrees to compare.csv's six decimals is
    the same value)."""
    a = write(tmp_path / "a.json", results("vikhr-7b", 0.597, 0.503, 0.124, 0.544))
    b = write(tmp_path / "b.json", results("mistral-7b", 0.604, None, 0.05, 0.515))
    mera = tmp_path / "mera.csv"
    mera.write_text("model,MERA,En-MMLU\nvikhr-7b,0.401,0.5970004\nOther,0.3,\n", encoding="utf-8")
    out = tmp_path / "cmp"
    assert cli_main(["eval", "compare", str(a), str(b), "--reference", str(mera), "--out", str(out)]) == 0
    table = (out / "compare.md").read_text(encoding="utf-8").splitlines()
    assert table[0].endswith("| rucola (acc) | MERA |")
    assert table[2:] == [
        "| vikhr-7b | 0.597 | 0.503 | 0.124 | 0.544 | 0.700 | 0.401 |",
        "| mistral-7b | 0.604 | — | 0.050 | 0.515 | 0.700 | — |",
        "| Other | — | — | — | — | — | 0.300 |",
    ]
    capsys.readouterr()


@pytest.mark.parametrize(
    "text,message",
    [
        ("name,En-MMLU\nm,0.5\n", "the first line is not model,<column>"),
        ("model,En-MMLU\nm,0.5,0.1\n", "paper.csv:2: 3 cells, the header has 2"),
        ("model,En-MMLU\nm,high\n", "paper.csv:2: En-MMLU = 'high' is not a number"),
        (
            "model,En-MMLU\nvikhr-7b,0.5\n",
            "paper.csv: the row 'vikhr-7b' gives En-MMLU = 0.5, its results file 0.597",
        ),
        ("model,En-MMLU\nref,0.5\nref,0.6\n", "paper.csv: give reference rows other names"),
        ("model,En-MMLU,En-MMLU\nref,0.4,0.9\n", "paper.csv:1: the column 'En-MMLU' twice"),
        ("model,En-MMLU,\nref,0.4,\n", "paper.csv:1: an empty column name"),
        ("model,model\nref,0.4\n", "paper.csv:1: the column 'model' twice"),
        ("model,En-MMLU\n,0.4\n", "paper.csv:2: the model name is empty"),
        ('model,En-MMLU\n"ref,0.4\n', "not a readable CSV"),
        ("model,En-MMLU\n\n", "paper.csv: no model row below the header"),  # added nothing, silently
        # A row of dashes with no bar (a row not filled in, only NaN): it was shown without a word.
        ("model,En-MMLU,MERA\nref,0.4,\nempty,,\n", "paper.csv:3: the row 'empty' has no score"),
        ("model,En-MMLU,MERA\nhidden,nan,\n", "paper.csv:2: the row 'hidden' has no score"),
    ],
)
def test_bad_reference_is_one_line(tmp_path: Path, capsys: Any, text: str, message: str) -> None:
    a = write(tmp_path / "a.json", results("vikhr-7b", 0.597, 0.503, 0.124, 0.544))
    reference = tmp_path / "paper.csv"
    reference.write_text(text, encoding="utf-8")
    out = tmp_path / "cmp"
    err = one_line_error(
        ["eval", "compare", str(a), "--reference", str(reference), "--out", str(out)], capsys
    )
    assert message in err, err
    assert not out.exists()
    missing = one_line_error(
        ["eval", "compare", str(a), "--reference", str(tmp_path / "none.csv"), "--out", str(out)], capsys
    )
    assert "reference file not found" in missing and "none.csv" in missing


def test_a_reference_given_twice_is_named_as_such(tmp_path: Path, capsys: Any) -> None:
    """`--paper` with `--reference` of the bundled Table 6 (or one CSV given twice) said every row was
    named twice in that file, "give reference rows other names": the file is named as given twice."""
    from vikhr.assets import PAPER_TABLE6

    a = write(tmp_path / "a.json", results("vikhr-7b", 0.597, 0.503, 0.124, 0.544))
    base = ["eval", "compare", str(a), "--out", str(tmp_path / "cmp")]
    err = one_line_error([*base, "--reference", str(PAPER_TABLE6), "--paper"], capsys)
    assert err.endswith(
        f"--reference {PAPER_TABLE6} is given twice (--paper adds the bundled Table 6: leave "
        "out one of the two)"
    )
    mine = tmp_path / "mine.csv"
    mine.write_text("model,MERA\nMy leaderboard submission,0.41\n", encoding="utf-8")
    err = one_line_error([*base, "--reference", str(mine), "--reference", f"{tmp_path}/./mine.csv"], capsys)
    assert err.endswith(f"--reference {mine} is given twice")
    assert not (tmp_path / "cmp").exists()


def test_paper_rows_join_the_models_and_other_references(tmp_path: Path, capsys: Any) -> None:
    """`--paper` adds the bundled Table 6 below the models (and below any --reference rows): its five
    columns land in the paper's order, MERA after the evaluated tasks, the closed-source models'
    missing En-MMLU stays empty; the chart holds every row."""
    a = write(tmp_path / "a.json", results("mistral-7b", 0.604, None, 0.05, 0.515))
    b = write(tmp_path / "b.json", results("vikhr-7b", 0.597, 0.503, 0.124, 0.544))
    mine = tmp_path / "mine.csv"
    mine.write_text("model,MERA\nMy leaderboard submission,0.41\n", encoding="utf-8")
    out = tmp_path / "cmp"
    argv = ["eval", "compare", str(a), str(b), "--reference", str(mine), "--paper", "--out", str(out)]
    assert cli_main(argv) == 0
    capsys.readouterr()
    lines = (out / "compare.md").read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        "| Model | En-MMLU | Ru-MMLU | CheGeKa (F1) | Russian SuperGLUE | rucola (acc) | MERA |"
    )
    assert len(lines) == 2 + 2 + 1 + 9
    assert lines[4] == "| My leaderboard submission | — | — | — | — | — | 0.410 |"
    assert lines[5] == "| MTS AI Chat 7B (closed-source; paper) | — | 0.689 | 0.083 | 0.560 | — | 0.479 |"
    assert lines[-1] == "| Vikhr-7B-instruct_0.2 (paper) | 0.620 | 0.800 | 0.231 | 0.670 | — | 0.485 |"
    rows = list(csv.reader((out / "compare.csv").open(encoding="utf-8")))
    assert [r[0] for r in rows[1:3]] == ["mistral-7b", "vikhr-7b"]
    assert len(rows) == 1 + 12 and all(len(r) == 7 for r in rows)
    import matplotlib.image

    assert matplotlib.image.imread(out / "compare.png").shape[1] > 900  # 12 bars a group, legend beside


def test_a_results_row_named_like_a_paper_row_is_refused(tmp_path: Path, capsys: Any) -> None:
    """A results file named `Vikhr-7B-instruct_0.2 (paper)=r.json` beside --paper took the paper's
    published numbers into the empty cells of the measured row (a reference row named like a model
    adds to its row): measured and published figures in one row. Refused in one line naming the paper
    row and a name to give; the same name without --paper is a row like any other."""
    import shlex

    measured = results("vikhr-7b", 0.597, None, 0.124, None)  # no Ru-MMLU, no RSG: cells the paper has
    r = write(tmp_path / "r.json", measured)
    out = tmp_path / "cmp"
    for name in ("Vikhr-7B-instruct_0.2 (paper)", "GigaChat-7B (closed-source; paper)"):
        spec = f"{name}={r}"
        err = one_line_error(["eval", "compare", spec, "--paper", "--out", str(out)], capsys)
        assert f"the results row {name!r} ({r}) is named like the row of the paper's Table 6" in err
        renamed = shlex.split(err.rpartition("e.g. ")[2])
        assert len(renamed) == 1 and renamed[0].endswith(f" (measured)={r}") and "paper" not in renamed[0]
        assert not out.exists()
        # The name it suggests: the measured row and the paper's, each with only its own numbers.
        assert cli_main(["eval", "compare", renamed[0], "--paper", "--out", str(out)]) == 0
        rows = {row[0]: row[1:] for row in csv.reader((out / "compare.csv").open(encoding="utf-8"))}
        header = rows.pop("model")
        mine = dict(zip(header, rows[renamed[0].rpartition("=")[0]], strict=True))
        assert mine["Ru-MMLU"] == mine["Russian SuperGLUE"] == mine["MERA"] == ""
        assert dict(zip(header, rows[name], strict=True))["En-MMLU"] != "0.597000"
        shutil.rmtree(out)
    capsys.readouterr()
    assert cli_main(["eval", "compare", f"Vikhr-7B-instruct_0.2 (paper)={r}", "--out", str(out)]) == 0


def test_bundled_table6_reads_as_a_reference() -> None:
    """The bundled file parses with the reader users' files go through; every score is in [0, 1]
    and only the two closed-source models (no En-MMLU in the paper) have an empty cell."""
    from vikhr.assets import PAPER_TABLE6
    from vikhr.eval.compare import load_reference

    rows = load_reference(PAPER_TABLE6)
    assert len(rows) == 9 and rows[-1][0] == "Vikhr-7B-instruct_0.2 (paper)"
    assert list(rows[0][1]) == ["En-MMLU", "Ru-MMLU", "CheGeKa (F1)", "Russian SuperGLUE", "MERA"]
    empty = {(name, column) for name, values in rows for column, v in values.items() if v is None}
    assert empty == {(n, "En-MMLU") for n, _ in rows[:2]} and "closed-source" in rows[1][0]
    assert all(0 <= v <= 1 for _, values in rows for v in values.values() if v is not None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tasks": {"mmlu_en": [1, 2]}}, "tasks.mmlu_en has no 'metrics' object"),
        ({"tasks": {"terra": {"metrics": None}}}, "tasks.terra has no 'metrics' object"),
        (
            {"tasks": {"terra": {"metrics": {"acc": "0.5"}}}},
            "tasks.terra.metrics.acc is str '0.5', not a number",
        ),
        (
            {"tasks": {"terra": {"metrics": {"acc": True}}}},
            "tasks.terra.metrics.acc is bool True, not a number",
        ),
        ({"tasks": {}, "groups": []}, "'groups' is not an object of objects"),
        ({"tasks": {}, "groups": {"rsg": {"score": "x"}}}, "groups.rsg.score is str 'x', not a number"),
        # a row of dashes, silently
        ({"model": "m", "tasks": {}}, "holds no score (no task metric, no group score)"),
        ({"tasks": {"terra": {"metrics": {}}}}, "holds no score"),
        (
            {"limit": "3", "tasks": {"terra": {"metrics": {"acc": 0.5}}}},
            "'limit' is '3', not a positive integer",
        ),
    ],
)
def test_results_of_the_wrong_shape_are_one_line(
    tmp_path: Path, capsys: Any, data: dict, message: str
) -> None:
    bad = write(tmp_path / "bad.json", data)
    good = write(tmp_path / "good.json", results("m", 0.5, None, 0.1, None))
    out = tmp_path / "cmp"
    err = one_line_error(["eval", "compare", str(good), str(bad), "--out", str(out)], capsys)
    assert f"{bad}: {message}" in err or f"{bad} {message}" in err, err
    assert not out.exists()


def test_unknown_scores_are_empty_cells_everywhere(tmp_path: Path) -> None:
    """NaN and ±inf (MERA's hidden answers; lm-eval's stderr of one document) are no value: `—` in
    Markdown, an empty CSV cell, no bar — in the paper's columns, other tasks' and the RSG total."""
    data = results("m", 0.5, None, 0.1, 0.6)
    data["tasks"]["rucola"]["metrics"]["acc"] = float("nan")
    data["tasks"]["terra"] = {"metrics": {"acc": float("inf")}}
    data["groups"]["rsg"]["score"] = float("nan")
    data["tasks"]["mmlu_en"]["metrics"]["acc"] = float("-inf")
    other = write(tmp_path / "o.json", results("o", 0.4, None, 0.2, None))
    out = tmp_path / "cmp"
    assert (
        cli_main(["eval", "compare", str(write(tmp_path / "m.json", data)), str(other), "--out", str(out)])
        == 0
    )
    lines = (out / "compare.md").read_text(encoding="utf-8").splitlines()
    assert lines[2] == "| m | — | 0.100 | — |" and "nan" not in lines[0] and "inf" not in "".join(lines)
    # A task no file has a score for (a MERA run on the hidden test answers: ~20 of them) was a
    # column of dashes each: it is named below the table instead.
    assert lines[0] == "| Model | En-MMLU | CheGeKa (F1) | rucola (acc) |"
    assert lines[-1] == "No score in any file (hidden test answers, or NaN): terra."
    assert "nan" not in (out / "compare.csv").read_text(encoding="utf-8")


def test_unknown_reference_cells_are_empty(tmp_path: Path) -> None:
    """nan/inf in a reference (an earlier compare.csv may hold them) read as empty cells."""
    from vikhr.eval.compare import load_reference

    reference = tmp_path / "old.csv"
    reference.write_text("model,En-MMLU,MERA,Ru-MMLU\nref,nan,1e400,0.5\n", encoding="utf-8")
    assert load_reference(reference) == [("ref", {"En-MMLU": None, "MERA": None, "Ru-MMLU": 0.5})]


def test_reference_from_a_spreadsheet_with_a_byte_order_mark(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", results("vikhr-7b", 0.597, 0.503, 0.124, 0.544))
    reference = tmp_path / "excel.csv"
    reference.write_bytes("\ufeffmodel,MERA\nПубликация,0.41\n".encode())
    assert (
        cli_main(["eval", "compare", str(a), "--reference", str(reference), "--out", str(tmp_path / "c")])
        == 0
    )
    assert "| Публикация | — | — | — | — | — | 0.410 |" in (tmp_path / "c" / "compare.md").read_text(
        encoding="utf-8"
    )


def test_outputs_appear_together_or_not_at_all(tmp_path: Path, capsys: Any) -> None:
    """A chart that cannot be written (compare.png is a directory), an --out that is a file, an
    empty NAME=: one line each, and an earlier comparison's files stay as they were."""
    a = write(tmp_path / "a.json", results("vikhr-7b", 0.597, 0.503, 0.124, 0.544))
    out = tmp_path / "cmp"
    assert cli_main(["eval", "compare", str(a), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "compare.png").unlink()
    (out / "compare.png").mkdir()
    b = write(tmp_path / "b.json", results("other", 0.4, 0.3, 0.1, 0.5))
    err = one_line_error(["eval", "compare", str(a), str(b), "--out", str(out)], capsys)
    assert "compare.png is a directory" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == {
        k: v for k, v in before.items() if k != "compare.png"
    }
    (tmp_path / "file").write_text("x", encoding="utf-8")
    err = one_line_error(["eval", "compare", str(a), "--out", str(tmp_path / "file")], capsys)
    assert "is a file: give a directory" in err
    err = one_line_error(["eval", "compare", "A=", "--out", str(tmp_path / "c2")], capsys)
    assert "'A=' names no file (give NAME=FILE" in err
    err = one_line_error(["eval", "compare", str(a), "--out", ""], capsys)
    assert "--out is empty" in err


def test_a_failed_chart_leaves_the_earlier_table_and_csv(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """The chart fails after the new table and CSV were written (to temporary names): none of the
    three is replaced, so the earlier comparison stays whole; nothing temporary is left."""
    from vikhr.eval import compare as compare_module

    a = write(tmp_path / "a.json", results("vikhr-7b", 0.597, 0.503, 0.124, 0.544))
    out = tmp_path / "cmp"
    assert cli_main(["eval", "compare", str(a), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing_chart(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compare_module, "bar_chart", failing_chart)
    b = write(tmp_path / "b.json", results("other", 0.4, 0.3, 0.1, 0.5))
    err = one_line_error(["eval", "compare", str(a), str(b), "--out", str(out)], capsys)
    assert f"cannot write {out}: No space left on device" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_name_with_a_bar_or_a_line_break_keeps_the_markdown_table_whole(tmp_path: Path) -> None:
    """Model names come from the results files (or NAME=FILE): a '|' is escaped and a line break
    becomes a space in Markdown, so every row keeps the header's cells; the CSV keeps the name."""
    odd = write(tmp_path / "odd.json", results("a|b\nc", 0.5, None, 0.1, None))
    out = tmp_path / "cmp"
    assert cli_main(["eval", "compare", str(odd), "x|y=" + str(odd), "--out", str(out)]) == 0
    lines = (out / "compare.md").read_text(encoding="utf-8").splitlines()
    assert lines[2].startswith("| a\\|b c | ") and lines[3].startswith("| x\\|y | ")
    cells = lines[0].count("|") - lines[0].count("\\|")
    assert all(line.count("|") - line.count("\\|") == cells for line in lines)
    with open(out / "compare.csv", newline="", encoding="utf-8") as f:
        assert [row[0] for row in csv.reader(f)][1:] == ["a|b\nc", "x|y"]


def test_a_missing_score_is_marked_where_its_bar_would_stand() -> None:
    """A model without a task's score got a bare gap, which reads as a score of 0: now an upright
    `n/a` in the model's colour stands where its bar would."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import same_color

    from vikhr.eval.compare import chart_figure

    names = ["base", "vikhr", "other"]
    rows = [[0.6, 0.4], [0.62, None], [None, 0.5]]
    fig = chart_figure(names, ["En-MMLU", "Ru-MMLU"], rows)
    try:
        (ax,) = fig.axes
        marks = [t for t in ax.texts if t.get_text() == "n/a"]
        bars = {name: list(container) for name, container in zip(names, ax.containers, strict=True)}
        width = bars["base"][0].get_width()
        assert len(marks) == 2 and all(m.get_rotation() == 90 for m in marks)
        by_x = sorted(marks, key=lambda m: m.get_position()[0])
        # vikhr's Ru-MMLU (column 1, second of three bars) and other's En-MMLU (column 0, third bar)
        assert [round(m.get_position()[0], 6) for m in by_x] == [round(width, 6), round(1.0, 6)]
        assert same_color(by_x[0].get_color(), bars["other"][0].get_facecolor())
        assert same_color(by_x[1].get_color(), bars["vikhr"][0].get_facecolor())
    finally:
        plt.close(fig)
    # At a group's edge (the last model's last score, a panel of its own) the mark is inside the axes:
    # they fitted the bars drawn, and other's Ru-MMLU mark stood to the right of the chart. The legend
    # beside the last panel, where vikhr and other have no bar, keys each model in its own colour
    # (both were keyed in the default blue).
    rows = [[0.6, 0.4, 1.1], [0.62, 0.5, None], [0.5, None, None]]
    fig = chart_figure(names, ["En-MMLU", "Ru-MMLU", "bpc (bpc)"], rows)
    try:
        fig.canvas.draw()
        marks = [(ax, t) for ax in fig.axes for t in ax.texts if t.get_text() == "n/a"]
        assert len(marks) == 3
        for ax, mark in marks:
            box, inside = mark.get_window_extent(), ax.get_window_extent()
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1, (mark.get_position(), box, inside)
        legend = fig.axes[-1].get_legend()
        keys = [key.get_facecolor() for key in legend.legend_handles]
        assert [t.get_text() for t in legend.get_texts()] == names
        for key, container in zip(keys, fig.axes[0].containers, strict=True):
            assert same_color(key, container[0].get_facecolor())
    finally:
        plt.close(fig)


def test_a_score_of_zero_is_marked_apart_from_a_missing_one() -> None:
    """A score of exactly 0 (an EM of a small model) drew a bar of no height: a bare gap, which the
    chart otherwise keeps for nothing. It is now an upright `0` in the model's colour."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import same_color

    from vikhr.eval.compare import chart_figure

    names = ["base", "vikhr"]
    fig = chart_figure(names, ["En-MMLU", "CheGeKa"], [[0.6, 0.0], [0.62, None]])
    try:
        (ax,) = fig.axes
        marks = {t.get_text(): t for t in ax.texts}
        assert sorted(marks) == ["0", "n/a"]
        base_bars, vikhr_bars = ax.containers
        assert same_color(marks["0"].get_color(), base_bars[0].get_facecolor())
        assert same_color(marks["n/a"].get_color(), vikhr_bars[0].get_facecolor())
        assert marks["0"].get_position()[0] < 1 < marks["n/a"].get_position()[0]
    finally:
        plt.close(fig)


def test_perplexities_and_bits_each_get_their_own_axis() -> None:
    """A word perplexity of hundreds shared the bits' axis: the bpc bars (about 1) were slivers."""
    import matplotlib.pyplot as plt

    from vikhr.eval.compare import chart_figure

    columns = ["En-MMLU", "bpc (bpc)", "bpc (bits_per_byte)", "bpc (word_perplexity)"]
    fig = chart_figure(["base", "vikhr"], columns, [[0.6, 1.1, 0.6, 310.0], [0.58, 0.8, 0.45, 120.0]])
    try:
        scores, bits, perplexity = fig.axes
        assert [t.get_text() for t in scores.get_xticklabels()] == columns[:1]
        assert [t.get_text() for t in bits.get_xticklabels()] == columns[1:3]
        assert [t.get_text() for t in perplexity.get_xticklabels()] == columns[3:]
        assert bits.get_ylim()[1] < 2 and perplexity.get_ylim()[1] > 310
        assert bits.get_ylabel() == "bits (lower is better)"
        assert perplexity.get_ylabel() == "perplexity (lower is better)"
    finally:
        plt.close(fig)
