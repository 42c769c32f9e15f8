"""The run machinery the flow drives: calling tasks with the run's cache settings (`Runner`),
gathering the fan-out as it finishes, and telling the user where the run is (`Progress`: a log
line per finished layer, the Prefect progress artifact and, in a terminal, a live bar, all
moving with the epochs done inside each layer, read from the files the trainings write)."""

from __future__ import annotations

import contextvars
import inspect
import math
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

from tasks import paths
from tasks.cache import sweep_failures
from tasks.cluster import Pool
from tasks.config import Config
from tasks.failures import failed_runs, why_failed
from tasks.locks import ProcessLockManager
from tasks.progress import overall, read_epochs
from tasks.settings import LaminarError

P, R = ParamSpec("P"), TypeVar("R")  # a task's parameters and its result (record) type
POLL_S = 0.5  # how often the flow reads the trainings' epochs-done files (for the bar)
ARTIFACT_S = 5.0  # how often it moves the Prefect progress artifact (an API call)


def run_name(task: Any, args: tuple[Any, ...]) -> str:
    """The task run's name, as Prefect formats it from the task's parameters."""
    params = inspect.signature(task.fn).bind(*args).arguments
    return task.task_run_name.format(**params)


def time_left(spent: list[float], remaining: int, slots: int) -> float | None:
    """Seconds for `remaining` layers at the mean time of those that ran, `slots` at a time;
    None (unknown) while no layer has been timed or no slot is known."""
    if remaining <= 0:
        return 0.0
    if not spent or slots <= 0:
        return None
    return sum(spent) / len(spent) * math.ceil(remaining / slots)


def left_phrase(seconds: float | None) -> str:
    """'about 12 s left', or what is unknown and why."""
    if seconds is None:
        return "time left unknown until a layer is timed"
    return f"about {seconds:.0f} s left"


@dataclass
class Job:
    """One submitted task: its run name, future, model, epochs-done file (None for a task
    that reports no epochs) and the key of its result that holds how long it took."""

    name: str
    future: Any
    model: str
    progress: Path | None
    seconds_key: str = "seconds"


class Progress:
    """Told of each finished layer (on the flow's side, whatever pool ran it): logs how many of
    the model's layers are done and the time left for it. A thread reads the running layers'
    epochs and moves, when stdout is a terminal, a live bar (SAE runs, and the running layer's
    epochs) every POLL_S seconds, and the run's progress artifact (percent of all epochs) every
    ARTIFACT_S seconds."""

    def __init__(
        self, jobs: list[Job], slots: int, epochs: int, bar: bool, what: str = "SAE epochs done"
    ) -> None:
        self.logger = get_run_logger()
        self.jobs, self.slots, self.epochs = jobs, slots, epochs
        self.total = Counter(j.model for j in jobs)
        self.done: Counter[str] = Counter()
        self.finished: set[str] = set()
        self.spent: dict[str, list[float]] = {m: [] for m in self.total}  # s per layer that ran
        self.lock = threading.Lock()
        # A progress bar on the flow run's page in the Prefect UI: % of all SAE epochs done.
        self.artifact = create_progress_artifact(0.0, description=what)
        self.bars = self._bars() if bar else None
        self.stop = threading.Event()
        run_in_context = contextvars.copy_context().run  # the thread talks to this run's API
        self.thread = threading.Thread(target=run_in_context, args=(self._poll,), daemon=True)
        self.thread.start()

    @staticmethod
    def _bars() -> tuple[Any, Any]:
        from tqdm import tqdm

        runs = tqdm(total=0, desc="SAE runs", unit="layer", position=0, file=sys.stdout)
        layer = tqdm(total=0, desc="layer", unit="epoch", position=1, file=sys.stdout)
        return runs, layer

    def running(self) -> list[tuple[Job, int]]:
        """(job, epochs done) of the layers started but not finished."""
        with self.lock:
            open_jobs = [j for j in self.jobs if j.name not in self.finished]
        return [(j, e) for j in open_jobs if j.progress and (e := read_epochs(j.progress)) > 0]

    def percent(self) -> float:
        partial = sum(min(e, self.epochs) for _, e in self.running())
        with self.lock:
            done = len(self.finished)
        return overall(done, partial, len(self.jobs), self.epochs)

    def _poll(self) -> None:
        last = 0.0
        while not self.stop.wait(POLL_S):
            now = time.monotonic()
            self.refresh(artifact=now - last >= ARTIFACT_S)
            last = now if now - last >= ARTIFACT_S else last

    def refresh(self, artifact: bool = True) -> None:
        if artifact:
            update_progress_artifact(self.artifact, self.percent())
        if self.bars is None:
            return
        runs, layer = self.bars
        with self.lock:
            runs.total, runs.n = len(self.jobs), len(self.finished)
        live = self.running()
        if live:
            job, epochs = live[0]
            if layer.desc != job.name or layer.total != self.epochs:
                layer.reset(total=self.epochs)
                layer.set_description_str(job.name)
            layer.update(max(0, epochs - layer.n))  # tqdm's rate and time left follow
        runs.refresh()
        layer.refresh()

    def update(self, job: Job, state: str, seconds: float | None) -> None:
        with self.lock:
            self.finished.add(job.name)
            self.done[job.model] += 1
            if seconds is not None:
                self.spent[job.model].append(seconds)
            done, total = self.done[job.model], self.total[job.model]
        left = time_left(self.spent[job.model], total - done, self.slots)
        self.refresh()
        self.logger.info(
            "%s: %d/%d layers done (%s %s), %s for this model",
            job.model,
            done,
            total,
            job.name,
            state,
            left_phrase(left),
        )

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.refresh()
        if self.bars is not None:
            for bar in self.bars:
                bar.close()


class Runner:
    """Calls tasks with the run's cache settings and tallies their final states."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.options = {
            "result_storage": paths.results_dir(cfg.root),
            "persist_result": True,
            "result_serializer": "json",
            "refresh_cache": cfg.refresh,
        }
        # Two runs on one artifacts dir: the second waits on the first's lock, then reads
        # its result as Cached instead of computing the same thing again.
        self.locks = ProcessLockManager(lock_files_directory=paths.locks_dir(cfg.root))
        self.states: dict[str, str] = {}  # task run name -> final state (Cached, Completed…)
        sweep_failures(paths.results_dir(cfg.root))  # earlier runs' failure records

    def bind(self, task: Task[P, R]) -> Task[P, R]:
        policy = task.cache_policy.configure(
            lock_manager=self.locks, isolation_level="SERIALIZABLE"
        )
        return task.with_options(cache_policy=policy, **self.options)

    def __call__(self, task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a task here, in the flow's thread: `run(tokenize, cfg, ...)` is typed as
        `tokenize(cfg, ...)` is (arguments checked, the result its record type)."""
        state = self.bind(task)(*args, **kwargs, return_state=True)  # type: ignore[call-overload]
        self.states[run_name(task, args)] = state.name
        return state.result()

    def each(self, task: Task[..., R], argsets: list[tuple[Any, ...]]) -> list[R]:
        """Run a task here once per argument tuple, all of them even when some fail (those that
        worked are cached for the rerun); a failure raises one LaminarError naming each run that
        failed and why."""
        results, failed = [], []
        for args in argsets:
            state = self.bind(task)(*args, return_state=True)
            name = run_name(task, args)
            self.states[name] = state.name
            if state.is_completed():
                results.append(state.result())
            else:
                error = state.result(raise_on_failure=False)
                failed.append((name, error))
        if len(failed) == 1 and isinstance(failed[0][1], LaminarError):
            raise failed[0][1]  # its sentence already names the input
        if failed:  # a LaminarError names its input; anything else is named by its run
            why = [str(e) if isinstance(e, LaminarError) else f"{name}: {e}" for name, e in failed]
            raise LaminarError(failed_runs(task.name, len(argsets), why))
        return results

    def on(self, pool: Pool, task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a heavy task where the pool's work runs (a Dask worker), or here."""
        if not pool.remote:
            return self(task, *args, **kwargs)
        name, future = self.submit(pool, task, *args, **kwargs)
        future.wait()
        self.states[name] = future.state.name
        if not future.state.is_final():  # its worker died and Dask gave up: no Prefect error
            raise LaminarError(f"{name}: {why_failed(future, future.state)}, then rerun.")
        return future.result()

    def submit(
        self, pool: Pool, task: Task[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> tuple[str, Any]:
        """Hand one task to the pool (the fan-out); returns its run name and future."""
        params = inspect.signature(task.fn).bind(*args, **kwargs).arguments
        return run_name(task, args), pool.runner.submit(self.bind(task), dict(params))

    def gather(
        self, jobs: list[Job], slots: int, what: str = "SAE epochs done"
    ) -> tuple[list[Any], list[str]]:
        """Wait for every job as each finishes (a failure must not stop the others), reporting
        progress (`what` names the Prefect progress artifact); returns the results and the
        errors, each in submission order."""
        bar = sys.stdout.isatty() and not self.cfg.quiet
        progress = Progress(jobs, slots, self.cfg.epochs, bar, what)
        by_future = {j.future: j for j in jobs}
        results: dict[Any, Any] = {}
        failed: dict[str, str] = {}  # job name -> why
        for job in jobs:  # the run's summary lists them as submitted, whatever order they end in
            self.states.setdefault(job.name, "Pending")
        try:
            for future in as_completed(list(by_future)):
                future.wait()
                job = by_future[future]
                state = future.state
                self.states[job.name] = state.name
                seconds = None  # cached or failed layers say nothing about the time per layer
                if state.is_completed():
                    results[future] = future.result()
                    took = results[future].get(job.seconds_key)
                    seconds = None if state.name == "Cached" else took
                else:
                    failed[job.name] = f"{job.name}: {why_failed(future, state)}"
                progress.update(job, state.name, seconds)
        finally:
            progress.close()
        ended = [results[j.future] for j in jobs if j.future in results]
        return ended, [failed[j.name] for j in jobs if j.name in failed]

    def tally(self) -> dict[str, int]:
        return dict(Counter(self.states.values()))
