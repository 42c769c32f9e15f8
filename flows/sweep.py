"""The sweep flow: the laminar flow at every point of a grid of settings, each point a subflow
run, then the verdict matrix of the claims across points (tasks/sweep.py).

    laminar-sweep --grid sae_arch=course,standard,batchtopk --grid epochs=75,600 --models gpt2

(the command is in flows/cli.py). Every other flag is laminar's and sets the base every point
starts from. Each point shares every cached task with the others and with plain laminar runs:
one scrape, one tokenization, one extraction per (model, hook), one SAE per distinct SAE
setting. A killed sweep, run again, computes only what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field, field_validator

from flows.laminar import laminar
from tasks import sweep as grid
from tasks.config import Config
from tasks.settings import LaminarError, refuse, stable_hash


class Sweep(BaseModel):
    """A sweep: the settings every point starts from, and the grid over them."""

    base: Config = Field(default_factory=Config, description="The settings of every point.")
    grid: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Config field -> the values it takes, e.g. {"sae_arch": ["course", '
        '"topk"], "epochs": ["75", "600"]}: one point per combination.',
    )

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        """The same check as the command's, for a grid given in the deployment's form."""
        try:
            return grid.parse_grid([], None, value)
        except LaminarError as exc:
            refuse(str(exc))


def sweep_folder(sweep: Sweep) -> Path:
    """Where the matrix goes: named by the base's digest and the grid."""
    return sweep.base.root / "sweeps" / stable_hash([sweep.base.digest(), sweep.grid])[:12]


def run_points(sweep: Sweep) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each point as a laminar subflow run: (the matrix rows, each point's summary)."""
    rows, done = [], []
    for label, values, cfg in grid.points(sweep.base, sweep.grid):
        try:
            summary = laminar(cfg)
        except Exception as exc:  # a failed point is named; the others still count
            done.append({"point": label, "failed": f"{type(exc).__name__}: {exc}"})
            continue
        rows += grid.verdict_rows(label, values, grid.read_claims(summary["report"]))
        done.append({"point": label, "report": summary["report"], "tasks": summary["tasks"]})
    return rows, done


def small_multiples(done: list[dict[str, Any]], path: Path) -> None:
    """sweep.png: a column per point, density (top) and final loss (bottom) against relative
    depth, a line per model; the reports read by flows/compare.py, as laminar-compare reads
    them."""
    from flows.compare import read_run
    from tasks.figures import plt, save_png  # pyplot on the Agg backend

    runs = {p["point"]: read_run(Path(p["report"])) for p in done if "report" in p}
    if not runs:
        return
    fig, axes = plt.subplots(
        2, len(runs), figsize=(3.2 * len(runs) + 1, 6), sharex=True, squeeze=False
    )
    for col, (label, rows) in enumerate(runs.items()):
        for row, metric in enumerate(("density_pct", "final_loss")):
            ax = axes[row][col]
            for model in dict.fromkeys(r["model"] for r in rows):
                pts = [r for r in rows if r["model"] == model]
                ax.plot(
                    [r["rel_depth"] for r in pts], [r[metric] for r in pts], "o-", ms=3, label=model
                )
            ax.set_title(label if row == 0 else "", fontsize=8)
            ax.set_ylabel(metric if col == 0 else "")
            ax.grid(alpha=0.3)
        axes[1][col].set_xlabel("relative depth")
    axes[0][0].legend(fontsize=7)
    save_png(fig, path)


@flow(name="sweep", log_prints=True, persist_result=True, result_serializer="json")
def sweep(sweep: Sweep = Sweep()) -> dict[str, Any]:  # noqa: B008 (Prefect reads the default)
    """Run laminar at every point of the grid; the verdict matrix of the claims."""
    rows, done = run_points(sweep)
    folder = sweep_folder(sweep)
    small_multiples(done, folder / "sweep.png")
    md = grid.write_matrix(rows, sweep.grid, folder) if rows else ""
    failed = [p for p in done if "failed" in p]
    if md:
        from tasks.figures import for_the_ui  # sweep.png embedded: the UI cannot read the folder

        notes = "".join(f"\n- **{p['point']}** failed: {p['failed']}" for p in failed)
        shown = for_the_ui(md + notes, folder, {"sweep.png"})
        create_markdown_artifact(key="laminar-sweep", markdown=shown)
    return {"folder": str(folder), "points": done, "failed": [p["point"] for p in failed]}
