"""Figures: drawn without pyplot, so that reports drawn at once in threads (a sweep's points on
Dask) are each the figure drawn alone."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from test_report import result

from tasks import figures
from tasks.tables import metric_rows

ROOT = Path(__file__).resolve().parent.parent


def draw_report(out: Path, seed: int) -> dict[str, bytes]:
    """Every figure of a two-model report whose densities depend on `seed`, as PNG bytes."""
    out.mkdir(parents=True)
    results = [
        result(name, layer, 10 + seed + 5 * layer)
        for name, n in (("small", 4), ("big", 6))
        for layer in range(n)
    ]
    rows = metric_rows(results, {"small": 4, "big": 6})
    names = figures.draw(rows, results, {"small": 4, "big": 6}, out, shown_seed=0)
    return {name: (out / name).read_bytes() for name in names}


def test_figures_drawn_at_once_in_threads_are_each_the_figure_drawn_alone(
    tmp_path: Path,
) -> None:
    alone = {s: draw_report(tmp_path / f"alone{s}", s) for s in range(4)}
    assert len(alone[0]) == 7 and alone[0]["laminar.png"] != alone[1]["laminar.png"]
    for attempt in range(2):
        folders = [tmp_path / f"{attempt}-{s}" for s in range(4)]
        with ThreadPoolExecutor(4) as pool:
            at_once = list(pool.map(draw_report, folders, range(4)))
        for s, drawn in enumerate(at_once):
            assert drawn == alone[s], (attempt, s)


def test_drawing_the_report_never_imports_pyplot(tmp_path: Path) -> None:
    """pyplot's figure manager is process-global state that threads share unguarded."""
    code = (
        "import sys; from pathlib import Path; from test_figures import draw_report; "
        f"draw_report(Path({str(tmp_path / 'r')!r}), 0); "
        "import flows.sweep, flows.compare; "
        "print(sorted(m for m in sys.modules if m.startswith('matplotlib.pyplot')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "tests",
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
