"""Comparing two finished runs: a row per shared (model, layer) with both values and the delta."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from flows.compare import main


def write_run(folder: Path, density: list[float]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["model", "layer", "rel_depth", "density_pct", "final_loss", "fvu"])
        w.writeheader()
        for i, d in enumerate(density):
            w.writerow(
                {
                    "model": "gpt2",
                    "layer": i,
                    "rel_depth": i / (len(density) - 1),
                    "density_pct": d,
                    "final_loss": 1.0 + i,
                    "fvu": 0.5,
                }
            )
    return folder


def test_two_runs_side_by_side(tmp_path: Path) -> None:
    a = write_run(tmp_path / "pre", [10.0, 20.0, 30.0])
    b = write_run(tmp_path / "post", [12.0, 19.0])
    out = tmp_path / "cmp"
    assert main([str(a), str(b), "--labels", "pre", "post", "--out", str(out)]) == 0
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == ["0", "1"]  # layer 2 only in one run
    assert float(rows[0]["density_pct Δ"]) == 2.0 and float(rows[1]["density_pct Δ"]) == -1.0
    assert float(rows[1]["density_pct [pre]"]) == 20.0
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_a_reader_that_stops_early_ends_the_output_quietly(tmp_path: Path) -> None:
    """`laminar-compare A B | head -1`: the reader gone before the lines were written (`true`
    reads none) was BrokenPipeError's traceback on stderr; now the files are written, exit 0,
    and stderr stays empty."""
    a = write_run(tmp_path / "a", [1.0, 2.0])
    b = write_run(tmp_path / "b", [1.0, 3.0])
    command = [str(Path(sys.executable).parent / "laminar-compare"), str(a), str(b)]
    out = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | true', "bash", *command, "--out", "cmp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (out.returncode, out.stderr) == (0, "")
    assert (tmp_path / "cmp" / "compare.csv").read_text().startswith("model,layer,")


def test_not_a_report_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a", [1.0, 2.0])
    assert main([str(a), str(tmp_path)]) == 2
    assert "holds no metrics.csv: pass a laminar report folder." in capsys.readouterr().err


def compare_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`laminar-compare ARGS` as a user runs it."""
    command = [str(Path(sys.executable).parent / "laminar-compare"), *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_runs_it_cannot_tell_apart_or_read_are_one_sentence_and_exit_2(tmp_path: Path) -> None:
    """Two folders of one name (a report's folder is its settings' hash, so the same run made
    in two artifacts dirs) were one run in the table; a malformed metrics.csv or provenance.json
    was a traceback. Each is now one sentence, exit 2, and nothing is written."""
    a = write_run(tmp_path / "x" / "3dc3179b2ec6", [10.0, 20.0])
    b = write_run(tmp_path / "y" / "3dc3179b2ec6", [12.0, 19.0])
    (tmp_path / "no-layer").mkdir()
    (tmp_path / "no-layer" / "metrics.csv").write_text("model,rel_depth\ngpt2,0\n")
    text = write_run(tmp_path / "text", [1.0, 2.0])
    csv_text = (text / "metrics.csv").read_text().replace("2.0,", "many,")
    (text / "metrics.csv").write_text(csv_text)
    torn = write_run(tmp_path / "torn", [1.0, 2.0])
    (torn / "provenance.json").write_text('{"software": {')
    cut = write_run(tmp_path / "cut", [1.0, 2.0])  # a copy stopped after the header
    (cut / "metrics.csv").write_text((cut / "metrics.csv").read_text().splitlines()[0] + "\n")
    (a / "provenance.json").write_text("{}")
    cases = [
        (
            [a, b],
            "two runs are named '3dc3179b2ec6' (by --labels, or else by their folders' "
            "names): give --labels with a name of its own for each folder.",
        ),
        ([a, b, "--labels", "pre", "pre"], "two runs are named 'pre'"),
        (  # a run named '' was printed as "0 fields differ between  and b"
            [a, b, "--labels", "", "post"],
            "a run has no name (an empty --labels, or a folder such as '.' with none): give "
            "--labels with a name for each folder.",
        ),
        ([a, "."], "a run has no name"),  # '.' is named by no folder name
        (
            [a, tmp_path / "no-layer"],
            f"'{tmp_path / 'no-layer' / 'metrics.csv'}' has no layer "
            "column: pass the folder of a finished laminar report.",
        ),
        (
            [a, text],
            f"'{text / 'metrics.csv'}' line 3: density_pct 'many' is not a number: "
            "pass the folder of a finished laminar report.",
        ),
        (
            [a, torn],
            f"'{torn / 'provenance.json'}' is not JSON: pass the folder of a finished "
            "laminar report.",
        ),
        (  # was "the runs share no (model, layer)": the wrong reason
            [a, cut],
            f"'{cut / 'metrics.csv'}' holds no layer's row: pass the folder of a finished "
            "laminar report.",
        ),
    ]
    for args, sentence in cases:
        out = compare_cli(*args, "--out", tmp_path / "cmp", cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        [line] = out.stderr.splitlines()
        assert line.startswith(f"laminar-compare: {sentence}"), line
        assert not (tmp_path / "cmp").exists()
    ok = compare_cli(a, b, "--labels", "x", "y", "--out", tmp_path / "cmp", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    with open(tmp_path / "cmp" / "compare.csv") as f:
        assert float(next(csv.DictReader(f))["density_pct Δ"]) == 2.0  # two runs, not one


def test_a_file_over_its_bound_or_unreadable_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import flows.compare

    a = write_run(tmp_path / "a", [1.0, 2.0])
    b = write_run(tmp_path / "b", [1.0, 2.0])
    args = [str(a), str(b), "--out", str(tmp_path / "cmp")]
    with monkeypatch.context() as m:
        m.setattr(flows.compare, "MAX_FILE", (a / "metrics.csv").stat().st_size - 1)
        assert main(args) == 2
    assert "metrics.csv' is over " in capsys.readouterr().err

    def denied(path: Path, *args: object, **kw: object) -> None:
        raise PermissionError(13, "Permission denied")  # root reads any file: stood in for

    monkeypatch.setattr(Path, "open", denied)
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"laminar-compare: '{a / 'metrics.csv'}' cannot be read (Permission denied).\n"
    )
    assert not (tmp_path / "cmp").exists()


def test_an_out_that_cannot_be_a_folder_is_one_sentence(tmp_path: Path) -> None:
    """--out empty, a file, or under one: one sentence, exit 2 (a file: mkdir's traceback, exit
    1; empty: the working folder)."""
    a = write_run(tmp_path / "a", [1.0, 2.0])
    b = write_run(tmp_path / "b", [1.0, 3.0])
    (tmp_path / "file").write_text("mine\n")
    empty = compare_cli(a, b, "--out", "", cwd=tmp_path)  # written in the working folder before
    assert empty.returncode == 2 and empty.stderr == (
        "laminar-compare: --out is empty: give the folder the comparison is written in (the "
        "default is artifacts/compare).\n"
    )
    assert not (tmp_path / "compare.csv").exists()
    for out, why in [("file", "File exists"), ("file/sub", "Not a directory")]:
        result = compare_cli(a, b, "--out", tmp_path / out, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr == (
            f"laminar-compare: --out '{tmp_path / out}' cannot be a folder to write in ({why}): "
            "choose another.\n"
        )
    assert (tmp_path / "file").read_text() == "mine\n"
