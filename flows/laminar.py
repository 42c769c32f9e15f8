"""The laminar flow: article -> tokens -> activations -> one SAE per (model, layer) -> report.

The flow only wires tasks; each task lives in its own module under tasks/. Run it with
`python flows/laminar.py --help`, or from a Prefect deployment (the `config` parameter is the
same typed model that builds the CLI)."""

from __future__ import annotations

import inspect
import logging
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# No telemetry from the ephemeral Prefect server (it would only time out on offline machines).
os.environ.setdefault("DO_NOT_TRACK", "1")

import cloudpickle
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import provenance
from tasks.cache import ProcessLockManager
from tasks.cluster import Pool, fanout
from tasks.config import Config, LaminarError, config_from_args, resolve_device
from tasks.extract import describe_model, extract_activations
from tasks.report import publish, write_report
from tasks.scrape import fetch_page, parse_page, publish_text
from tasks.store import check_writable
from tasks.tokens import tokenize
from tasks.train import train_sae

# Dask workers unpickle this flow (its run context travels with every task). Run as a script
# (__main__) or loaded by a Prefect deployment (as 'laminar'), the module cannot be imported on a
# worker by that name, so its functions travel by value.
if __name__ != "flows.laminar":
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


class LayerFailedError(Exception):
    """Some (model, layer) trainings failed; the report covers the rest."""


def run_name(task: Any, args: tuple[Any, ...]) -> str:
    """The task run's name, as Prefect formats it from the task's parameters."""
    params = inspect.signature(task.fn).bind(*args).arguments
    return task.task_run_name.format(**params)


class Progress:
    """Told of each finished layer (on the flow's side, whatever pool ran it): logs how many of
    the model's layers are done and the time left for it, and moves the run's progress bar."""

    def __init__(self, totals: Counter[str], slots: int) -> None:
        self.logger = get_run_logger()
        self.total, self.slots = totals, slots
        self.done: Counter[str] = Counter()
        self.spent: dict[str, list[float]] = {m: [] for m in totals}  # s per layer that ran
        # A progress bar on the flow run's page in the Prefect UI: % of SAE runs finished.
        self.artifact = create_progress_artifact(0.0, description="SAE runs finished")

    def update(self, model: str, name: str, state: str, seconds: float | None) -> None:
        self.done[model] += 1
        if seconds is not None:
            self.spent[model].append(seconds)
        left = time_left(self.spent[model], self.total[model] - self.done[model], self.slots)
        overall = 100.0 * self.done.total() / self.total.total()
        update_progress_artifact(self.artifact, overall)
        self.logger.info(
            "%s: %d/%d layers done (%s %s), about %.0f s left for this model",
            model,
            self.done[model],
            self.total[model],
            name,
            state,
            left,
        )


def time_left(spent: list[float], remaining: int, slots: int) -> float:
    """Seconds for `remaining` layers at the mean time of those that ran, `slots` at a time."""
    if not spent or remaining <= 0:
        return 0.0
    return sum(spent) / len(spent) * math.ceil(remaining / slots)


class Runner:
    """Calls tasks with the run's cache settings and tallies their final states."""

    def __init__(self, cfg: Config):
        self.options = {
            "result_storage": cfg.root / ".cache" / "results",
            "persist_result": True,
            "result_serializer": "json",
            "refresh_cache": cfg.refresh,
        }
        # Two runs on one artifacts dir: the second waits on the first's lock, then reads
        # its result as Cached instead of computing the same thing again.
        self.locks = ProcessLockManager(lock_files_directory=cfg.root / ".cache" / "locks")
        self.states: dict[str, str] = {}  # task run name -> final state (Cached, Completed…)

    def bind(self, task: Any) -> Any:
        policy = task.cache_policy.configure(
            lock_manager=self.locks, isolation_level="SERIALIZABLE"
        )
        return task.with_options(cache_policy=policy, **self.options)

    def __call__(self, task: Any, *args: Any) -> Any:
        """Run a task here, in the flow's thread."""
        state = self.bind(task)(*args, return_state=True)
        self.states[run_name(task, args)] = state.name
        return state.result()

    def on(self, pool: Pool, task: Any, *args: Any) -> Any:
        """Run a heavy task where the pool's work runs (a Dask worker), or here."""
        if not pool.remote:
            return self(task, *args)
        name, future = self.submit(pool, task, *args)
        future.wait()
        self.states[name] = future.state.name
        if not future.state.is_final():  # its worker died and Dask gave up: no Prefect error
            raise LaminarError(f"{name}: {why_failed(future, future.state)}, then rerun.")
        return future.result()

    def submit(self, pool: Pool, task: Any, *args: Any) -> tuple[str, Any]:
        """Hand one task to the pool (the fan-out); returns its run name and future."""
        params = inspect.signature(task.fn).bind(*args).arguments
        return run_name(task, args), pool.runner.submit(self.bind(task), dict(params))

    def gather(
        self, futures: list[tuple[str, Any, str]], slots: int
    ) -> tuple[list[Any], list[str]]:
        """Wait for every (name, future, model) as each finishes (a failure must not stop the
        others), reporting progress; returns results in submission order, and the errors."""
        progress = Progress(Counter(model for *_, model in futures), slots)
        meta = {future: (name, model) for name, future, model in futures}
        results: dict[Any, Any] = {}
        failed = []
        for future in as_completed(list(meta)):
            future.wait()
            name, model = meta[future]
            state = future.state
            self.states[name] = state.name
            seconds = None  # cached or failed layers say nothing about the time per layer
            if state.is_completed():
                results[future] = future.result()
                seconds = None if state.name == "Cached" else results[future]["seconds"]
            else:
                failed.append(f"{name}: {why_failed(future, state)}")
            progress.update(model, name, state.name, seconds)
        return [results[f] for _, f, _ in futures if f in results], failed

    def tally(self) -> dict[str, int]:
        return dict(Counter(self.states.values()))


# One training at a time saturates a GPU (or all CPU cores); the flow thread meanwhile extracts
# the next model, so extraction and training overlap.
@flow(
    name="laminar",
    task_runner=ThreadPoolTaskRunner(max_workers=1),
    log_prints=True,
    persist_result=True,  # the run's result (where the report is) shows in the UI
    result_serializer="json",
)
def laminar(config: Config = Config()) -> dict[str, Any]:  # noqa: B008 (Prefect reads the default)
    """Profile SAE density and loss across the depth of each model."""
    cfg = config
    started_at = provenance.now()
    models = preflight(cfg)
    run = Runner(cfg)
    page = run(fetch_page.with_options(retries=cfg.fetch_retries), cfg)
    text = run(parse_page, cfg, page)
    tokens = {}
    for m in models:
        if m["tokenizer"] not in tokens:
            tokens[m["tokenizer"]] = run(tokenize, cfg, text, m["model"], m["tokenizer"])
    publish_text(page, text, list(tokens.values()))
    extractions, futures = [], []
    with fanout(cfg) as pool:
        print(f"laminar: per-layer work on the {pool.describe()}")
        for m in models:
            ext = run.on(
                pool,
                extract_activations,
                cfg,
                m["model"],
                m["name"],
                m["fingerprint"],
                tokens[m["tokenizer"]],
            )
            extractions.append(ext)
            for f in ext["files"]:
                for seed, label in sae_labels(cfg, m["name"], f["layer"]):
                    args = (cfg, m["name"], f["layer"], f, seed, label)
                    futures.append((*run.submit(pool, train_sae, *args), m["name"]))
        results, failed = run.gather(futures, pool.slots)
    batches = list(tokens.values())
    report = run(write_report, cfg, page, text, batches, extractions, results, failed, started_at)
    publish(report)
    summary = {"report": report["dir"], "failed": failed, "tasks": run.states}
    print(f"laminar: report in {report['dir']}; tasks {run.tally()}")
    if failed:
        raise LayerFailedError(
            f"{len(failed)} layer(s) failed and are missing from the report in {report['dir']}: "
            + "; ".join(failed)
            + ". Rerun the same command to retry only those."
        )
    return summary


def why_failed(future: Any, state: Any) -> str:
    """A failed task's message; for one whose process died (its state never became final, and
    Dask gave up after its retries: KilledWorker), say so and where to look."""
    if state.is_final():
        return str(state.message)
    dask_future = getattr(future, "wrapped_future", None)
    error = dask_future.exception() if dask_future is not None else None
    worker = getattr(getattr(error, "last_worker", None), "address", "?")
    tries = getattr(error, "allowed_failures", -1) + 1
    return (
        f"the Dask worker process running it died, {tries} time(s), last on {worker}, and "
        f"Dask gave up on it ({type(error).__name__}): check that worker's memory and log"
    )


def sae_labels(cfg: Config, name: str, layer: int) -> list[tuple[int, str]]:
    """(seed, task label) per SAE seed: 'gpt2 L3', or 'gpt2 L3 s1' when there are several."""
    many = len(cfg.sae_seeds) > 1
    return [(s, f"{name} L{layer}" + (f" s{s}" if many else "")) for s in cfg.sae_seeds]


def preflight(cfg: Config) -> list[dict[str, Any]]:
    """Checks that need no heavy work, so bad input fails in seconds with nothing lost:
    the artifacts dir is writable, the device exists (here, or on a Dask cluster's workers,
    which check it themselves), every model and its layers resolve."""
    check_writable(cfg.root)
    if cfg.task_runner == "thread":
        resolve_device(cfg.device)
    return [describe_model(cfg, m) for m in cfg.models]


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs every task/flow exception with its traceback; for a LaminarError (bad input,
    a fixable condition) the one-sentence message is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LaminarError | LayerFailedError):
            record.exc_info, record.exc_text = None, None
        return True


def main(argv: list[str] | None = None) -> int:
    for handler in logging.getLogger().handlers:  # Prefect's console handler sits on the root
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in handler.filters):
            handler.addFilter(_NoTracebackForUserErrors())
    try:
        cfg = config_from_args(argv)
        preflight(cfg)  # before Prefect's server starts: bad input fails in seconds
        summary = laminar(cfg)
    except (LaminarError, LayerFailedError) as exc:
        print(f"laminar: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, LaminarError) else 1
    print(f"report: {Path(summary['report']) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
