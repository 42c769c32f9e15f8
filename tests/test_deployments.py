"""The Prefect UI path, through a real server: `scripts/laminar-ui.sh` brings up server, pool,
deployments and worker; a deployment run with custom parameters completes with per-layer task
runs and both artifacts; a failed layer is resumed by retrying the flow run, and only that
layer is computed again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import UI, ArticleServer, free_port, prefect_home, quick_config, running_ui

from tasks.config import RESULT_FIELDS
from tasks.settings import stable_hash

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """conftest's `ui` with its database migrated already: test_browser's starts as a user's
    first `make ui` does."""
    with running_ui(prefect_home(tmp_path_factory.mktemp("prefect-home"))) as server:
        yield server


def run_deployment(ui: UI, name: str, config: dict[str, Any]) -> Any:
    with ui.client() as client:
        deployment = client.read_deployment_by_name(f"laminar/{name}")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"config": config})
    return wait_final(ui, run.id)


def wait_final(ui: UI, run_id: Any, limit_s: float = 300) -> Any:
    deadline = time.monotonic() + limit_s
    with ui.client() as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not finish in {limit_s} s")


def task_states(ui: UI, run_id: Any, expected: int) -> dict[str, list[str]]:
    """Task run name -> state names, once the API has recorded `expected` task runs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 60
    with ui.client() as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            if len(runs) >= expected or time.monotonic() > deadline:
                break
            time.sleep(1)
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.name, []).append(r.state.name)
    return out


def run_config(tiny_model: Path, server: ArticleServer, root: Path, **kw: Any) -> dict:
    """The `config` parameter of a deployment run, as JSON: 2 x 32 tokens, 2 epochs."""
    cfg = quick_config(tiny_model, server, root, n_seqs=2, epochs=2, **kw)
    return cfg.model_dump(mode="json")


@pytest.mark.parametrize("task_runner", ["thread", "dask"])
def test_deployment_run_shows_task_runs_and_artifacts(
    ui: UI, tiny_model: Path, article_server: ArticleServer, tmp_path: Path, task_runner: str
) -> None:
    # With 'dask' the flow starts a local cluster from the worker's subprocess, and the task
    # runs on the Dask workers must still report to this server.
    config = run_config(tiny_model, article_server, tmp_path, task_runner=task_runner)
    run = run_deployment(ui, "quick", config)
    assert run.state.type.value == "COMPLETED", run.state.message
    states = task_states(ui, run.id, expected=8)
    for layer in range(3):
        assert states[f"sae tiny-gpt2 L{layer}"] == ["Completed"]
    assert states["extract tiny-gpt2"] == ["Completed"]
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with ui.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    keys = {a.key: a for a in artifacts if a.key}
    assert {"laminar-metrics", "laminar-report"} <= keys.keys()
    assert "# laminar profile" in keys["laminar-report"].data


def test_failed_layer_resumes_by_retrying_the_flow_run(
    ui: UI, tiny_model: Path, article_server: ArticleServer, tmp_path: Path
) -> None:
    cfg = run_config(tiny_model, article_server, tmp_path) | {"epochs": 3}
    first = run_deployment(ui, "quick", {**cfg, "layers": "0"})  # lays out the folders
    assert first.state.type.value == "COMPLETED"
    [l0] = (tmp_path / "sae").rglob("L00/*.json")
    settings = {
        f: cfg.get(f, default)
        for f, default in [
            ("epochs", 3),
            ("lr", 1e-4),
            ("l1", 1.0),
            ("expansion", 2),
            ("topk_frac", 1 / 3),
            ("precision", "fp32"),
        ]
    }
    assert {*settings, "batch_tokens"} == set(RESULT_FIELDS)  # batch_tokens 0: not in names
    blocker = l0.parent.parent / "L02" / f"{stable_hash({**settings, 'sae_seed': 0})[:16]}.json"
    blocker.mkdir(parents=True)  # a folder where layer 2's result file goes: a disk fault

    failed = run_deployment(ui, "quick", cfg)
    assert failed.state.type.value == "FAILED"
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "sae").rglob("L*/*.json") if p.is_file()}
    assert len(done) == 2  # layers 0 and 1 finished despite layer 2

    blocker.rmdir()
    from prefect.states import Scheduled

    with ui.client() as client:  # what the UI's Retry button (and `prefect flow-run retry`) do
        client.set_flow_run_state(failed.id, Scheduled(message="Retry"), force=True)
    retried = wait_final(ui, failed.id)
    assert retried.state.type.value == "COMPLETED", retried.state.message
    assert {p: p.stat().st_mtime_ns for p in done} == done  # layers 0 and 1 not recomputed
    assert len(list((tmp_path / "sae").rglob("L*/*.json"))) == 3


def test_dead_network_fails_the_run_with_the_sentence(
    ui: UI, tiny_model: Path, article_server: ArticleServer, tmp_path: Path
) -> None:
    port = free_port()  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/wiki/Light-emitting_diode"
    config = run_config(tiny_model, article_server, tmp_path) | {"urls": [url], "fetch_retries": 0}
    run = run_deployment(ui, "quick", config)
    assert run.state.type.value == "FAILED"
    assert run.state.message.endswith(
        f"--urls '{url}' could not be fetched: the connection to 127.0.0.1:{port} was refused "
        "(nothing listens there); check the network or the URL, then rerun (a page fetched "
        "before stays cached under the artifacts dir)."
    ), run.state.message


def test_a_deployment_run_cannot_point_laminar_outside_what_its_worker_allows(
    ui: UI, tiny_model: Path, article_server: ArticleServer, tmp_path: Path
) -> None:
    """Whoever can start a deployment chooses its parameters; the worker's operator chooses
    where they may point: an artifacts_dir outside the worker's allowed folders (the tests'
    temporary folder here, the worker's own artifacts/ by default) or a Dask scheduler it does
    not allow fails the run with one sentence, before anything is read or written there."""
    import shutil
    import tempfile

    from tasks.security import ALLOWED_DASK_ENV, ALLOWED_ROOTS_ENV

    outside = Path(tempfile.mkdtemp(prefix="laminar-not-allowed-"))
    config = run_config(tiny_model, article_server, outside / "art")
    try:
        run = run_deployment(ui, "quick", config)
        wrote = (outside / "art").exists()
    finally:
        shutil.rmtree(outside)
    assert run.state.type.value == "FAILED"
    assert f"artifacts_dir '{outside / 'art'}' is outside the folders its worker" in (
        run.state.message
    )
    assert ALLOWED_ROOTS_ENV in run.state.message and not wrote
    remote = run_config(tiny_model, article_server, tmp_path, task_runner="dask")
    run = run_deployment(ui, "quick", remote | {"dask_address": "tcp://127.0.0.1:9"})
    assert run.state.type.value == "FAILED"
    assert "dask_address 'tcp://127.0.0.1:9' is not one its worker allows (none" in (
        run.state.message
    )
    assert ALLOWED_DASK_ENV in run.state.message
