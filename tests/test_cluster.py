"""The per-layer fan-out on Dask (tasks/cluster.py): a local cluster gives the thread runner's
numbers and shares its cache; a cluster started as `dask scheduler` + `dask worker` processes,
as a user would, survives a worker killed mid-run without recomputing what had finished; a
cluster that cannot serve the run is refused in one sentence."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, ArticleServer, free_port, make_model, quick_config

from flows.laminar import LayerFailedError, laminar
from tasks import cluster, security
from tasks.config import Config
from tasks.settings import LaminarError

pytestmark = pytest.mark.cluster
DASK = str(Path(sys.executable).with_name("dask"))


def layer_rows(root: Path) -> dict[str, dict[str, Any]]:
    """Every layer's JSON under root/sae, by layer folder, without its timing fields."""
    rows = {}
    for path in sorted((root / "sae").rglob("L*/*.json")):
        row = json.loads(path.read_text())
        rows[path.parent.name] = {
            k: v
            for k, v in row.items()
            if k not in ("seconds", "ran_on", "hardware", "activations")
        }
    return rows


def pids_of(root: Path, paths: list[Path] | None = None) -> set[int]:
    """The processes that trained the layers (all under root, or those paths)."""
    rows = [json.loads(p.read_text()) for p in paths or (root / "sae").rglob("L*/*.json")]
    return {int(r["ran_on"].rsplit(":", 1)[1]) for r in rows}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def test_local_cluster_matches_the_thread_runner_and_shares_its_cache(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer, monkeypatch: Any
) -> None:
    base = {"n_seqs": 8, "seq_len": 64, "epochs": 20, "eval_seqs": 2}
    # Float sums depend on the BLAS threads per process: one on both sides, on any machine (the
    # local cluster gives each of its 2 workers cpu_count // 2 threads).
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with torch_threads(1):
        thread = laminar(quick_config(tiny_model, article_server, tmp_path / "t", **base))
    dask = quick_config(
        tiny_model, article_server, tmp_path / "d", task_runner="dask", dask_workers=2, **base
    )
    environ = dict(os.environ)
    first = laminar(dask)
    assert dict(os.environ) == environ  # Dask's worker settings do not leak into this process
    assert {n: s for n, s in first["tasks"].items() if n.startswith(("extract", "sae"))} == {
        "extract tiny-gpt2": "Completed",
        "sae tiny-gpt2 L0": "Completed",
        "sae tiny-gpt2 L1": "Completed",
        "sae tiny-gpt2 L2": "Completed",
    }
    threads = {
        json.loads(p.read_text())["hardware"].split(", ")[-1].split(" on ")[0]
        for p in (tmp_path / "d" / "sae").rglob("L*/*.json")
    }
    assert threads == {"1 threads"}  # the pin held in the workers
    assert layer_rows(tmp_path / "d") == layer_rows(tmp_path / "t")  # loss curves too, exactly
    spliced = [n for n, s in first["tasks"].items() if n.startswith("splice") and s == "Completed"]
    assert len(spliced) == 3  # each SAE spliced into the model on a worker, as on the thread
    assert field_rows(first["report"]) == field_rows(thread["report"])
    assert os.getpid() not in pids_of(tmp_path / "d")  # trained in the worker processes
    [extract] = (tmp_path / "d" / ".cache" / "results").glob("extract-*")
    ran_on = json.loads(json.loads(extract.read_text())["result"])["ran_on"]
    assert int(ran_on.rsplit(":", 1)[1]) != os.getpid()  # the model was loaded on a worker
    # The cache is the runner's business no more than the results are: a Dask run over the
    # thread run's artifacts executes nothing.
    again = laminar(dask.model_copy(update={"artifacts_dir": str(tmp_path / "t")}))
    assert set(again["tasks"].values()) == {"Cached"}, again["tasks"]


def field_rows(report: str) -> list[tuple[str, ...]]:
    """The downstream measures of each layer, from a report's metrics.csv."""
    import csv

    cols = ("layer", "ce_clean", "ce_sae", "ce_ablation", "kl_sae", "kl_div_score")
    with open(Path(report) / "metrics.csv") as f:
        return [tuple(r[c] for c in cols) for r in csv.DictReader(f)]


class DaskCluster:
    """`dask scheduler` and `dask worker` processes on loopback, each in a session of its own,
    stopped by process group whatever happens."""

    def __init__(
        self,
        n_workers: int,
        logs: Path,
        tls: dict[str, str] | None = None,
        wrap: dict[int, tuple[list[str], dict[str, str]]] | None = None,
        **scheduler_env: str,
    ) -> None:
        """`wrap` starts worker i under a command prefix and with extra environment."""
        from distributed import Client, Security

        self.address = f"{'tls' if tls else 'tcp'}://127.0.0.1:{free_port()}"
        port = self.address.rsplit(":", 1)[1]
        # With TLS every process presents a certificate signed by the cluster's CA.
        certs = (
            ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
            if tls
            else []
        )
        scheduler = ["scheduler", "--host", "127.0.0.1", "--port", port, *certs]
        self.procs = [self._start(logs / "scheduler.log", *scheduler, env=scheduler_env)]
        for i in range(n_workers):
            worker = ["worker", self.address, "--nthreads", "1", *certs]
            prefix, env = (wrap or {}).get(i, ([], {}))
            self.procs.append(self._start(logs / f"worker{i}.log", *worker, prefix=prefix, env=env))
        security = (
            Security(tls_ca_file=tls["ca"], tls_client_cert=tls["cert"], tls_client_key=tls["key"])
            if tls
            else None
        )
        self.client = Client(self.address, timeout=60, security=security)
        self.client.wait_for_workers(n_workers, timeout=120)

    @staticmethod
    def _start(
        log: Path, *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*(prefix or []), DASK, *args, "--no-dashboard"],
            env={**os.environ, **(env or {})},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def busy_worker_pid(self) -> int | None:
        """pid of a worker that is running a task now, if any."""
        busy = [addr for addr, keys in self.client.processing().items() if keys]
        try:
            return self.client.run(os.getpid, workers=busy[:1])[busy[0]] if busy else None
        except (OSError, KeyError):  # it finished or went away meanwhile: ask again
            return None

    def close(self) -> None:
        self.client.close()
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def started(cluster: DaskCluster) -> Iterator[DaskCluster]:
    try:
        yield cluster
    finally:
        cluster.close()


def finished_layers(root: Path) -> dict[Path, int]:
    """Layer JSONs of the SAE tasks that have finished (their result record is written last),
    with their mtimes."""
    done = {}
    for record in (root / ".cache" / "results").glob("sae-*"):
        with contextlib.suppress(ValueError, KeyError):  # a record being written
            path = Path(json.loads(json.loads(record.read_text())["result"])["json"]["path"])
            done[path] = path.stat().st_mtime_ns
    return done


@contextlib.contextmanager
def worker_killed_mid_run(cluster: DaskCluster, root: Path, n_layers: int) -> Iterator[dict]:
    """SIGKILL a busy worker once some, not all, layers have finished, a second after the last
    one did (workers that started together finish together: never kill one as it finishes);
    yields what it saw: the finished layers' files with their mtimes ('done') and the pid it
    killed ('killed')."""
    seen: dict[str, Any] = {}

    def kill() -> None:
        deadline, count, since = time.monotonic() + 240, 0, time.monotonic()
        while time.monotonic() < deadline and not seen:
            done = finished_layers(root)
            if len(done) != count:
                count, since = len(done), time.monotonic()
            settled = 0 < count < n_layers and time.monotonic() - since > 1.0
            pid = cluster.busy_worker_pid() if settled else None
            if pid:
                seen.update(done=done, killed=pid)
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield seen
    finally:
        killer.join()
    assert seen, "the run ended before a worker could be killed"


def deep_config(tmp_path: Path, tokenizer_dir: Path, server: ArticleServer, address: str) -> Any:
    """6 layers, each a few seconds of training: time to kill a worker in the middle."""
    model = make_model(tmp_path / "deep-gpt2", tokenizer_dir, n_layer=6)
    root = tmp_path / "a"
    kw = {"n_seqs": 8, "seq_len": 64, "epochs": 400}
    return quick_config(model, server, root, task_runner="dask", dask_address=address, **kw)


@pytest.mark.faults
def test_worker_killed_mid_run_on_a_cli_started_cluster(
    tmp_path: Path, tokenizer_dir: Path, article_server: ArticleServer
) -> None:
    with started(DaskCluster(2, tmp_path)) as dask:
        cfg = deep_config(tmp_path, tokenizer_dir, article_server, dask.address)
        with worker_killed_mid_run(dask, cfg.root, 6) as seen:
            summary = laminar(cfg)
        assert not summary["failed"]
        saes = {n: s for n, s in summary["tasks"].items() if n.startswith("sae")}
        assert len(saes) == 6 and set(saes.values()) <= {"Completed", "Cached"}, saes
        assert len(list((cfg.root / "sae").rglob("L*/*.json"))) == 6
        # What had finished before the kill was never trained again (its file is untouched).
        for path, mtime in seen["done"].items():
            assert path.stat().st_mtime_ns == mtime, path
        # Whatever was trained after the kill (the interrupted layer included) ran elsewhere.
        later = [p for p in (cfg.root / "sae").rglob("L*/*.json") if p not in seen["done"]]
        assert later and seen["killed"] not in pids_of(cfg.root, later)
        rerun = laminar(cfg)
        assert set(rerun["tasks"].values()) == {"Cached"}, rerun["tasks"]


@pytest.mark.faults
def test_worker_death_dask_gives_up_on_is_named_and_resumed(
    tmp_path: Path, tokenizer_dir: Path, article_server: ArticleServer
) -> None:
    """As when a layer runs a worker out of memory again and again: Dask stops retrying
    (KilledWorker; here at once). The run says which layers and why; a rerun does only those."""
    no_retry = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    with started(DaskCluster(2, tmp_path, **no_retry)) as dask:
        cfg = deep_config(tmp_path, tokenizer_dir, article_server, dask.address)
        with (
            worker_killed_mid_run(dask, cfg.root, 6) as seen,
            pytest.raises(LayerFailedError) as err,
        ):
            laminar(cfg)
        assert "the Dask worker process running it died 1 time, last on tcp://127.0.0.1:" in (
            str(err.value)
        )
        assert "Dask gave up on it (KilledWorker): check that worker's memory" in str(err.value)
        assert "Rerun the same command" in str(err.value)
        layer_of = {p: p.parent.name.replace("L0", "L") for p in finished_layers(cfg.root)}
        missing = {f"sae deep-gpt2 L{i}" for i in range(6)} - {
            f"sae deep-gpt2 {name}" for name in layer_of.values()
        }
        assert missing and all(name in str(err.value) for name in missing)
        rerun = laminar(cfg)
        executed = {n for n, s in rerun["tasks"].items() if s != "Cached"}
        # Exactly what had no result, and what reads the layers' results.
        assert executed == {*missing, "latents deep-gpt2", "report"}, rerun["tasks"]
        for path, mtime in seen["done"].items():
            assert path.stat().st_mtime_ns == mtime, path


def write_certificates(folder: Path) -> dict[str, str]:
    """A throwaway CA and certificate (distributed's Security.temporary) as PEM files."""
    from distributed import Security

    sec = Security.temporary()
    folder.mkdir(parents=True)
    pems = {"ca": sec.tls_ca_file, "cert": sec.tls_client_cert, "key": sec.tls_client_key}
    for name, pem in pems.items():
        (folder / f"{name}.pem").write_text(pem)
    return {name: str(folder / f"{name}.pem") for name in pems}


def test_tls_cluster_gives_the_thread_runners_numbers_and_refuses_strangers(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer, monkeypatch: Any
) -> None:
    base = {"n_seqs": 8, "seq_len": 64, "epochs": 20}
    with torch_threads(1):  # as the Dask workers (one BLAS thread each)
        laminar(quick_config(tiny_model, article_server, tmp_path / "t", **base))
    certs = write_certificates(tmp_path / "tls")
    with started(DaskCluster(2, tmp_path, tls=certs)) as dask:
        cfg = quick_config(
            tiny_model,
            article_server,
            tmp_path / "d",
            task_runner="dask",
            dask_address=dask.address,
            dask_tls_ca=certs["ca"],
            dask_tls_cert=certs["cert"],
            dask_tls_key=certs["key"],
            **base,
        )
        assert cfg.dask_address.startswith("tls://127.0.0.1:")
        summary = laminar(cfg)
        assert not summary["failed"] and layer_rows(tmp_path / "d") == layer_rows(tmp_path / "t")
        assert os.getpid() not in pids_of(tmp_path / "d")  # trained on the TLS workers

        no_certs = {"dask_tls_ca": "", "dask_tls_cert": "", "dask_tls_key": ""}
        with pytest.raises(LaminarError, match=r"is a TLS scheduler but no --dask-tls-ca was"):
            laminar(cfg.model_copy(update=no_certs))
        monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 5)
        other = write_certificates(tmp_path / "other")  # a CA the cluster never signed with
        strangers = {"dask_tls_ca": other["ca"], "dask_tls_cert": other["cert"]}
        with pytest.raises(LaminarError, match=r": no TLS connection to a Dask scheduler \("):
            laminar(cfg.model_copy(update={**strangers, "dask_tls_key": other["key"]}))


def test_plain_tcp_off_this_machine_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.WARNING):
        for address in ["tcp://127.0.0.1:8786", "tcp://localhost:8786", "tcp://[::1]:8786"]:
            security.warn_if_open(address)
        assert not caplog.records  # loopback: nothing crosses the network
        security.warn_if_open("tcp://10.0.0.5:8786")  # only looked at, never connected to
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("--dask-address tcp://10.0.0.5:8786 is unencrypted and unauthenticated")
    assert "use tls://10.0.0.5:8786 with --dask-tls-ca/--dask-tls-cert/--dask-tls-key" in line


def test_unreachable_scheduler_is_one_sentence(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer, monkeypatch: Any
) -> None:
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 2)
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = quick_config(
        tiny_model, article_server, tmp_path, task_runner="dask", dask_address=address
    )
    with pytest.raises(LaminarError, match=f"--dask-address {address}: no Dask scheduler"):
        laminar(cfg)


# ----------------------------------------------------------------------------- unit checks


def test_worker_problem_names_what_a_worker_cannot_do(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("token")
    assert cluster.worker_problem(str(probe), "token", "") == ""
    assert "reads another file" in cluster.worker_problem(str(probe), "other", "")
    missing = cluster.worker_problem(str(tmp_path / "elsewhere" / "probe"), "token", "")
    assert missing.startswith(f"cannot read and write '{tmp_path / 'elsewhere'}'")
    dead_api = f"http://127.0.0.1:{free_port()}/api"
    assert f"cannot reach the flow's Prefect API at {dead_api}" in cluster.worker_problem(
        str(probe), "token", dead_api
    )
    assert list(tmp_path.iterdir()) == [probe]  # the write test leaves nothing behind
    if not torch.cuda.is_available():  # a CPU-only worker asked for --device cuda
        assert cluster.worker_problem(str(probe), "token", "", "cuda") == (
            "has no CUDA GPU for --device cuda"
        )


def test_a_local_cluster_that_cannot_start_is_one_sentence(tmp_path: Path) -> None:
    """A user's script that runs the flow without a __main__ guard: Dask's workers re-import it
    while they start, and fail; the run ends with laminar's sentence saying why and what to do."""
    script = tmp_path / "my_experiment.py"
    script.write_text(
        "from prefect import flow\n"
        "from tasks.cluster import fanout\n"
        "from tasks.config import Config\n\n\n"
        "@flow\n"
        "def experiment():\n"
        f"    with fanout(Config(task_runner='dask', artifacts_dir={str(tmp_path / 'art')!r})):\n"
        "        pass\n\n\n"
        "experiment()  # no `if __name__ == '__main__':`\n"
    )
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    # ~15 s alone on this 2-core machine (three worker starts, each failing), 30 s under load.
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=240
    )
    assert out.returncode == 1
    assert (
        "LaminarError: the local Dask cluster did not start (Nanny failed to start.): Dask "
        "starts its workers by re-importing the script that runs the flow, so a script of yours "
        "that calls laminar() must do it under `if __name__ == '__main__':`; or use "
        "--task-runner thread."
    ) in out.stderr


def test_local_cluster_shares_the_cores_out() -> None:
    opts = cluster.runner_options(Config(task_runner="dask", dask_workers=2))
    kwargs = opts["cluster_kwargs"]
    assert kwargs["n_workers"] == 2 and kwargs["threads_per_worker"] == 1
    assert kwargs["env"]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    remote = cluster.runner_options(Config(task_runner="dask", dask_address="tcp://h:8786"))
    assert remote == {"address": "tcp://h:8786", "client_kwargs": {"timeout": 15}}


def test_a_local_cluster_listens_on_loopback_only() -> None:
    """The local cluster laminar starts binds its scheduler and its dashboard to 127.0.0.1 (Dask's
    dashboard default is every interface): read from the sockets this process listens on."""
    import psutil
    from distributed import LocalCluster

    kwargs = cluster.runner_options(Config(task_runner="dask", dask_workers=1))["cluster_kwargs"]
    with LocalCluster(**kwargs) as local:
        port = local.scheduler.http_server.port
        assert local.dashboard_link.startswith(f"http://127.0.0.1:{port}/")
        listening = [
            c.laddr
            for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        ]
    assert port in {a.port for a in listening}
    assert {a.ip for a in listening} == {"127.0.0.1"}, listening


def test_flow_loaded_as_a_deployment_unpickles_where_it_cannot_be_imported(
    tmp_path: Path,
) -> None:
    """A deployment loads flows/laminar.py as module 'laminar', which a Dask worker cannot
    import: the flow (sent with every task's context) must travel by value."""
    root = Path(__file__).resolve().parent.parent
    dump = (
        "import cloudpickle, sys\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        f"flow = load_flow_from_entrypoint({str(root / 'flows' / 'laminar.py:laminar')!r})\n"
        "assert flow.fn.__module__ == 'laminar', flow.fn.__module__\n"
        "sys.stdout.buffer.write(cloudpickle.dumps(flow))\n"
    )
    load = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).name)"
    pickled = subprocess.run(
        [sys.executable, "-c", dump], capture_output=True, check=True, cwd=tmp_path
    ).stdout
    out = subprocess.run(
        [sys.executable, "-c", load], input=pickled, capture_output=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().strip() == "laminar"


def test_only_this_machines_dead_writers_temporaries_are_swept(tmp_path: Path) -> None:
    """On a shared filesystem a pid from another machine says nothing here: its temporaries
    are left alone; this machine's dead writers' temporaries go, live ones stay."""
    from tasks import store

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead here": f".L00.parquet.{dead.pid}-{store.HOST_TAG}-0123abcd.tmp",
        "alive here": f".L01.parquet.{os.getpid()}-{store.HOST_TAG}-0123abcd.tmp",
        "dead elsewhere": f".L02.parquet.{dead.pid}-ffffffff-0123abcd.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    with store.atomic_path(tmp_path / "L03.parquet") as tmp:  # what a writer here names them
        assert tmp.name.startswith(f".L03.parquet.{os.getpid()}-{store.HOST_TAG}-")
        tmp.write_bytes(b"being written")
        store.sweep_temporaries(tmp_path)
        assert tmp.exists()  # a live writer's file survives the sweep
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["alive here"], names["dead elsewhere"], "L03.parquet"]
    )


# ------------------------------------------------ real workers that cannot serve the run


def hidden(folder: Path) -> list[str]:
    """A command prefix: run in a mount namespace of its own in which `folder` is an empty
    tmpfs, as on a machine where the artifacts dir is not the shared filesystem."""
    mount = f'mount -t tmpfs none "{folder}" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"]


def without_laminar(folder: Path) -> dict[str, str]:
    """An environment whose Python cannot import laminar: a PYTHONPATH whose sitecustomize
    drops the editable install's import hooks (as a worker started outside the project's
    environment, or with a broken PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in f.__module__]\n"
        "sys.path_hooks[:] = [h for h in sys.path_hooks if '__editable__' not in h.__module__]\n"
        f"sys.path[:] = [p for p in sys.path if p.rstrip('/') != {str(ROOT)!r}]\n"
    )
    return {"PYTHONPATH": str(folder)}


@pytest.fixture(scope="module")
def can_unshare(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("ns")
    probe = subprocess.run([*hidden(folder), "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here (unshare -m: {probe.stderr.strip()})")


def test_real_worker_that_cannot_see_the_artifacts_dir_is_named(
    tmp_path: Path, can_unshare: None
) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from tasks import store

    art = tmp_path / "art"
    path = art / "activations" / "L00.parquet"
    path.parent.mkdir(parents=True)
    rows = np.arange(6)
    pq.write_table(store.activation_table(rows, rows, rows, np.ones((6, 4), np.float32)), path)
    record = store.file_record(path)
    wrap = {1: (hidden(art), {})}
    with started(DaskCluster(2, tmp_path, wrap=wrap)) as dc:
        sees = dc.client.run(os.path.exists, str(path))
        [blind] = [w for w, seen in sees.items() if not seen]
        cfg = Config(artifacts_dir=str(art), task_runner="dask", dask_address=dc.address)
        with pytest.raises(LaminarError) as err:
            cluster.check_workers(dc.client, cfg, "")
        assert str(err.value).startswith(
            f"Dask worker {blind} cannot read and write '{art / '.cache'}' (No such file"
        )
        assert "(1 of 2 workers affected)" in str(err.value)
        # A task that reaches that worker anyway says what is wrong, in one sentence.
        future = dc.client.submit(store.read_activations, record, workers=[blind], pure=False)
        with pytest.raises(LaminarError) as err:
            future.result()
        assert str(err.value) == (
            f"activation file '{path}' that the flow wrote is not visible on Dask worker "
            f"{blind}: every Dask worker must see the artifacts dir at the same path (a shared "
            "filesystem)."
        )
        dc.client.retire_workers([blind])
        assert cluster.check_workers(dc.client, cfg, "") == 1  # one worker, one thread: 1 slot


def test_real_worker_that_cannot_import_laminar_is_named(tmp_path: Path) -> None:
    wrap = {0: ([], without_laminar(tmp_path / "hide"))}
    with started(DaskCluster(1, tmp_path, wrap=wrap)) as dc:
        assert dc.client.run(lambda: __import__("importlib.util").util.find_spec("tasks")) == {
            w: None for w in dc.client.scheduler_info()["workers"]
        }
        cfg = Config(
            artifacts_dir=str(tmp_path / "art"), task_runner="dask", dask_address=dc.address
        )
        with pytest.raises(LaminarError) as err:
            cluster.check_workers(dc.client, cfg, "")
    assert str(err.value).startswith(f"the Dask workers of {dc.address} cannot import laminar (")
    assert "No module named 'tasks'" in str(err.value) and "pip install -e ." in str(err.value)


def test_a_sweeps_shared_cluster_that_cannot_start_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cluster a Dask sweep shares fails as a run's own does: the sentence, not Dask's
    RuntimeError (its worker processes did not start)."""
    import distributed

    from tasks.cluster import shared_cluster

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(distributed, "LocalCluster", refuse)
    with (
        pytest.raises(LaminarError, match=r"^the local Dask cluster did not start \(Nanny failed"),
        shared_cluster(Config(task_runner="dask")),
    ):
        pass
