"""The laminar flow: article -> tokens -> activations -> one SAE per (model, layer) -> report.

The flow only wires tasks; each task lives in its own module under tasks/. Run it with
`python flows/laminar.py --help`, or from a Prefect deployment (the `config` parameter is the
same typed model that builds the CLI)."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# No telemetry from the ephemeral Prefect server (it would only time out on offline machines).
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.cache import ProcessLockManager
from tasks.config import Config, LaminarError, config_from_args, resolve_device
from tasks.extract import describe_model, extract_activations
from tasks.report import publish, write_report
from tasks.scrape import fetch_page, parse_page
from tasks.store import check_writable
from tasks.tokens import tokenize
from tasks.train import train_sae


class LayerFailedError(Exception):
    """Some (model, layer) trainings failed; the report covers the rest."""


def run_name(task: Any, args: tuple[Any, ...]) -> str:
    """The task run's name, as Prefect formats it from the task's parameters."""
    params = inspect.signature(task.fn).bind(*args).arguments
    return task.task_run_name.format(**params)


class Progress:
    """After each layer: how many of the model's layers are done and the time left for it."""

    def __init__(self) -> None:
        self.logger = get_run_logger()
        self.lock = threading.Lock()
        self.total: Counter[str] = Counter()
        self.done: Counter[str] = Counter()
        self.ran: Counter[str] = Counter()  # done and not Cached: what the time-left rate uses
        self.started: dict[str, float] = {}
        # A progress bar on the flow run's page in the Prefect UI: % of SAE runs finished.
        self.artifact = create_progress_artifact(0.0, description="SAE runs finished")

    def hooks(self, model: str) -> dict[str, list[Any]]:
        self.total[model] += 1

        def running(*_: Any) -> None:
            with self.lock:
                self.started.setdefault(model, time.monotonic())

        def finished(task: Any, task_run: Any, state: Any) -> None:
            with self.lock:
                self.done[model] += 1
                self.ran[model] += state.name != "Cached"  # cached layers cost no time
                done, total, ran = self.done[model], self.total[model], self.ran[model]
                spent = time.monotonic() - self.started.get(model, time.monotonic())
                overall = 100.0 * sum(self.done.values()) / sum(self.total.values())
            left = spent / ran * (total - done) if ran else 0.0
            update_progress_artifact(self.artifact, overall)
            self.logger.info(
                "%s: %d/%d layers done (%s %s), about %.0f s left for this model",
                model,
                done,
                total,
                task_run.name,
                state.name,
                left,
            )

        return {"on_running": [running], "on_completion": [finished], "on_failure": [finished]}


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
        self.progress = Progress()

    def bind(self, task: Any) -> Any:
        policy = task.cache_policy.configure(
            lock_manager=self.locks, isolation_level="SERIALIZABLE"
        )
        return task.with_options(cache_policy=policy, **self.options)

    def __call__(self, task: Any, *args: Any) -> Any:
        state = self.bind(task)(*args, return_state=True)
        self.states[run_name(task, args)] = state.name
        return state.result()

    def submit(self, task: Any, *args: Any, model: str) -> tuple[str, Any]:
        """Submit one of `model`'s layer tasks to the task runner (the fan-out)."""
        bound = self.bind(task).with_options(**self.progress.hooks(model))
        return run_name(task, args), bound.submit(*args)

    def gather(self, futures: list[tuple[str, Any]]) -> tuple[list[Any], list[str]]:
        """Wait for every future (a failure must not stop the others), split results and errors."""
        wait([f for _, f in futures])
        results, failed = [], []
        for name, future in futures:
            self.states[name] = future.state.name
            if future.state.is_completed():
                results.append(future.result())
            else:
                failed.append(f"{name}: {future.state.message}")
        return results, failed

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
    models = preflight(cfg)
    run = Runner(cfg)
    page = run(fetch_page, cfg)
    text = run(parse_page, cfg, page)
    tokens = {}
    for m in models:
        if m["tokenizer"] not in tokens:
            tokens[m["tokenizer"]] = run(tokenize, cfg, text, m["model"], m["tokenizer"])
    extractions, futures = [], []
    for m in models:
        ext = run(
            extract_activations,
            cfg,
            m["model"],
            m["name"],
            m["fingerprint"],
            tokens[m["tokenizer"]],
        )
        extractions.append(ext)
        futures += [
            run.submit(train_sae, cfg, m["name"], f["layer"], f, seed, label, model=m["name"])
            for f in ext["files"]
            for seed, label in sae_labels(cfg, m["name"], f["layer"])
        ]
    results, failed = run.gather(futures)
    report = run(write_report, cfg, page, list(tokens.values()), extractions, results, failed)
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


def sae_labels(cfg: Config, name: str, layer: int) -> list[tuple[int, str]]:
    """(seed, task label) per SAE seed: 'gpt2 L3', or 'gpt2 L3 s1' when there are several."""
    many = len(cfg.sae_seeds) > 1
    return [(s, f"{name} L{layer}" + (f" s{s}" if many else "")) for s in cfg.sae_seeds]


def preflight(cfg: Config) -> list[dict[str, Any]]:
    """Checks that need no heavy work, so bad input fails in seconds with nothing lost:
    the artifacts dir is writable, the device exists, every model and its layers resolve."""
    check_writable(cfg.root)
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
