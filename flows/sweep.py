"""The sweep flow: the laminar flow at every point of a grid of settings, each point a subflow
run, then the verdict matrix of the claims across points (tasks/sweep.py).

    laminar-sweep --grid sae_arch=course,standard,batchtopk --grid epochs=75,600 --models gpt2

(the command is in flows/cli.py). Every other flag is laminar's and sets the base every point
starts from. Each point shares every cached task with the others and with plain laminar runs:
one scrape, one tokenization, one extraction per (model, hook), one SAE per distinct SAE
setting. A killed sweep, run again, computes only what is missing."""

from __future__ import annotations

import contextlib
import contextvars
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field, field_validator

from flows.compare import read_run
from flows.laminar import laminar
from tasks import sweep as grid
from tasks import sweep_matrix as matrix
from tasks.cluster import shared_cluster
from tasks.config import Config
from tasks.figures import DRAWING, for_the_ui, save_png, subplots
from tasks.prefect_api import record_before_exit
from tasks.settings import LaminarError, plural, refuse, stable_hash


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


def run_point(cfg: Config) -> dict[str, Any] | Exception:
    """One point as a laminar subflow run: its summary, or what it failed with (a failed point
    is named in the matrix; the others still count)."""
    try:
        return laminar(cfg)
    except Exception as exc:
        return exc


QUIET = {"quiet": True}  # what a point run at once with others changes in its settings


def run_all(plan: list[tuple[str, dict[str, str], Config]]) -> list[dict[str, Any] | Exception]:
    """Every point's outcome, in the plan's order. On Dask (every point's --task-runner) the
    points run at once, each subflow in a thread of its own, so the cluster spreads all their
    layers together: one local cluster shared by every point (unless they name a --dask-address),
    and no terminal bars (--quiet), which would draw over each other. Elsewhere one after the
    other: a thread pool runs one SAE at a time, so running points at once gains nothing; and
    so do points that differ in --dask-workers, each on a local cluster of its own size (what
    such a grid compares)."""
    configs = [cfg for *_, cfg in plan]
    if (
        len(configs) < 2
        or any(c.task_runner != "dask" for c in configs)
        or len({c.dask_workers for c in configs}) > 1
    ):
        return [run_point(cfg) for cfg in configs]
    with contextlib.ExitStack() as stack:
        if any(not c.dask_address for c in configs):
            stack.enter_context(shared_cluster(configs[0]))
        points = ThreadPoolExecutor(len(configs), thread_name_prefix="sweep-point")
        stack.enter_context(points)
        # each thread runs in a copy of this one's context: the sweep's flow run (the points
        # are its subflows) and the shared cluster's address
        futures = [
            points.submit(contextvars.copy_context().run, run_point, c.model_copy(update=QUIET))
            for c in configs
        ]
        return [f.result() for f in futures]


def run_points(
    plan: list[tuple[str, dict[str, str], Config]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each point as a laminar subflow run: (the matrix rows, each point's summary)."""
    rows, done = [], []
    for (label, values, _), outcome in zip(plan, run_all(plan), strict=True):
        if isinstance(outcome, Exception):
            done.append({"point": label, "failed": why_failed(outcome)})
            continue
        rows += matrix.verdict_rows(label, values, matrix.read_claims(outcome["report"]))
        run = {k: outcome[k] for k in ("report", "tasks", "flow_run_id")}
        done.append({"point": label, **run})
    return rows, done


def why_failed(exc: Exception) -> str:
    """A failed point's reason: laminar's own sentence as it is (it names the setting and the
    fix); anything else with its type, which is then part of the story."""
    return str(exc) if isinstance(exc, LaminarError) else f"{type(exc).__name__}: {exc}"


def small_multiples(done: list[dict[str, Any]], path: Path) -> None:
    """sweep.png: a column per point, density (top) and final loss (bottom) against relative
    depth, a line per model; the reports read by flows/compare.py, as laminar-compare reads
    them."""
    runs = {p["point"]: read_run(Path(p["report"])) for p in done if "report" in p}
    if not runs:
        return
    with DRAWING:  # one figure at a time in a process: matplotlib is not thread-safe
        fig, axes = subplots(
            2, len(runs), figsize=(3.2 * len(runs) + 1, 6), sharex=True, squeeze=False
        )
        for col, (label, rows) in enumerate(runs.items()):
            for row, metric in enumerate(("density_pct", "final_loss")):
                ax = axes[row][col]
                for model in dict.fromkeys(r["model"] for r in rows):
                    pts = [r for r in rows if r["model"] == model]
                    ax.plot(
                        [r["rel_depth"] for r in pts],
                        [r[metric] for r in pts],
                        "o-",
                        ms=3,
                        label=model,
                    )
                ax.set_title(label if row == 0 else "", fontsize=8)
                ax.set_ylabel(metric if col == 0 else "")
                ax.grid(alpha=0.3)
            axes[1][col].set_xlabel("relative depth")
        axes[0][0].legend(fontsize=7)
        save_png(fig, path)


class PointFailedError(Exception):
    """Some points of a sweep failed; the matrix holds the others and names these."""


def failure_sentence(failed: list[str], n_points: int, md: Path) -> str:
    """The failed points by label, where they are explained, and how to retry them."""
    others = "" if len(failed) == n_points else " and holds the others"
    return (
        f"{len(failed)} of {plural(n_points, 'point')} failed "
        f"({', '.join(failed)}); {md} says why{others}. Run the same sweep again to retry only "
        "what is missing."
    )


@flow(
    name="sweep",
    log_prints=True,
    persist_result=True,
    result_serializer="json",
    on_running=[record_before_exit],  # a temporary server records the run before it stops
)
def sweep(sweep: Sweep = Sweep()) -> dict[str, Any]:  # noqa: B008 (Prefect reads the default)
    """Run laminar at every point of the grid; the verdict matrix of the claims. A failed point
    is named in the matrix, and fails the sweep's run once the matrix is published. A base
    setting some point's SAE does not read is said first, once for that SAE (its points run
    without it, as a single run would)."""
    plan = grid.points(sweep.base, sweep.grid)
    for note in grid.unread_in_base(sweep.base, sweep.grid, plan):
        print(f"laminar-sweep: {note}")
    rows, done = run_points(plan)
    folder = sweep_folder(sweep)
    failed = {p["point"]: p["failed"] for p in done if "failed" in p}
    small_multiples(done, folder / "sweep.png")
    md = matrix.write_matrix(rows, sweep.grid, failed, folder)
    # sweep.png embedded: the UI cannot read the folder
    create_markdown_artifact(key="laminar-sweep", markdown=for_the_ui(md, folder, {"sweep.png"}))
    if failed:
        raise PointFailedError(failure_sentence(list(failed), len(done), folder / "sweep.md"))
    return {"folder": str(folder), "points": done}
