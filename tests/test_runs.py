"""The run machinery's arithmetic never divides by a zero time, count or slot number: where a
rate is unknown it says so; and the Dask pool's slots are counted from the scheduler itself,
never from the client's cached cluster view (which a periodic refresh empties of workers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks import cluster, costs, progress
from tasks.config import Config
from tasks.runs import left_phrase, time_left


def test_time_left_is_mean_time_per_layer_over_the_slots() -> None:
    assert time_left([2.0, 4.0], 0, 1) == 0.0  # nothing remains: nothing left, known
    assert time_left([2.0, 4.0], 3, 1) == 9.0
    assert time_left([2.0, 4.0], 3, 2) == 6.0  # two rounds of two


def test_time_left_with_zero_times_counts_and_slots_is_unknown_not_a_crash() -> None:
    assert time_left([], 5, 1) is None  # no layer timed yet
    assert time_left([2.0], 5, 0) is None  # no slot known: was ZeroDivisionError
    assert time_left([2.0], 5, -1) is None
    assert time_left([0.0, 0.0], 4, 2) == 0.0  # cached-fast layers: 0 s each, 0 s left
    assert left_phrase(None) == "time left unknown until a layer is timed"
    assert left_phrase(9.4) == "about 9 s left"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_epoch_lines_with_no_time_passed_say_the_rate_is_unknown() -> None:
    clock, lines = Clock(), []
    report = progress.EpochReporter("m L0", 3, 0.0, None, clock, log=lambda *a: lines.append(a))
    report(1, 0.5)  # the clock has not moved: elapsed 0
    clock.t = 2.0
    report(2, 0.25)
    assert [line[0] % line[1:] for line in lines] == [
        "m L0: epoch 1/3, loss 0.5, rate unknown yet (no time measured)",
        "m L0: epoch 2/3, loss 0.25, 1.00 epochs/s, about 1 s left for this layer",
    ]


def test_estimate_with_no_measured_rate_says_so() -> None:
    line = costs.estimate("m", 3, 1, 75, 100, 8, 16, 0.0, "fp32")
    assert line == (  # 10 N d m FLOPs an epoch: 10 * 100 * 8 * 16 * 75 epochs * 3 layers
        "m: 3 layers × 75 epochs, 100 tokens, d 8 → 2.88e+07 FLOP; "
        "time here unknown (fp32, no matmul rate measured); cached: 1 of 3 layers"
    )
    one = costs.estimate("m", 1, 0, 1, 100, 8, 16, 0.0, "fp32")  # one layer, one epoch
    assert one.startswith("m: 1 layer × 1 epoch, 100 tokens, d 8 → ")
    assert one.endswith("; cached: 0 of 1 layer")
    assert progress.overall(0, 0, 0, 75) == 100.0  # no jobs: done
    assert progress.overall(0, 0, 3, 0) == 100.0  # no epochs: nothing to wait for


def test_a_zero_rate_is_not_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rates = iter([0.0, 50.0])
    monkeypatch.setattr(costs, "measure_rate", lambda *a: next(rates))
    assert costs.calibrated_rate(tmp_path, "cpu", "fp32", 100, 8, 16) == 0.0
    assert costs.calibrated_rate(tmp_path, "cpu", "fp32", 100, 8, 16) == 50.0  # measured again


@pytest.mark.cluster
def test_slots_come_from_the_scheduler_while_the_client_refreshes_its_view(
    tmp_path: Path,
) -> None:
    """A Dask client refreshes its cached scheduler_info() every few seconds without the workers
    (n_workers=0); a read of it racing that refresh counted 0 slots, and the first finished
    layer's time-left divided by it (ZeroDivisionError on a quiet machine). Here the refresh
    runs every millisecond, so the race is met on any machine."""
    import dask
    from distributed import Client, LocalCluster

    cfg = Config(artifacts_dir=str(tmp_path), task_runner="dask")
    with (
        dask.config.set({"distributed.client.scheduler-info-interval": "1ms"}),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as local,
        Client(local) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        counted = [cluster.check_workers(client, cfg, "") for _ in range(40)]
    assert counted == [2] * 40


def test_gather_lists_the_jobs_as_submitted_whatever_order_they_end_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layers that end before the flow starts waiting (a tiny model's, while the flow creates
    its progress artifact) came out of Prefect's `as_completed` in a set's order, and the run's
    summary and its failure sentence listed them so. Here they end last to first."""
    from prefect import flow, task
    from prefect.context import FlowRunContext

    from tasks import runs
    from tasks.cluster import Pool

    def last_first(futures: list[Any]) -> Iterator[Any]:
        for future in futures:
            future.wait()
        return reversed(futures)

    monkeypatch.setattr(runs, "as_completed", last_first)

    @task(name="square", task_run_name="square {x}")
    def square(x: int) -> dict[str, int]:
        if x % 2:
            raise ValueError(f"{x} is odd")
        return {"x": x * x}

    @flow
    def four() -> tuple[list[dict[str, int]], list[str], dict[str, str]]:
        runner = runs.Runner(Config(artifacts_dir=str(tmp_path)))
        pool = Pool(FlowRunContext.get().task_runner, slots=1, remote=False)  # type: ignore[union-attr]
        jobs = [runs.Job(*runner.submit(pool, square, x), "m", None) for x in (1, 2, 3, 4)]
        results, failed = runner.gather(jobs, slots=1)
        return results, failed, runner.states

    results, failed, states = four()
    assert results == [{"x": 4}, {"x": 16}]
    assert [f.split(":")[0] for f in failed] == ["square 1", "square 3"]
    assert "1 is odd" in failed[0] and "3 is odd" in failed[1]
    assert list(states.items()) == [
        ("square 1", "Failed"),
        ("square 2", "Completed"),
        ("square 3", "Failed"),
        ("square 4", "Completed"),
    ]
