"""Cache keys: only what a task depends on changes them; a record whose files vanished or
were truncated is dropped, so the task runs again instead of replaying it."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tasks.cache import JSON_SERIALIZER, ContentKey
from tasks.config import Config
from tasks.store import file_record


def sample_task(cfg: Config, acts: dict) -> dict:
    return acts


def key(policy: ContentKey, storage: Path | None = None, **inputs: object) -> str:
    task = SimpleNamespace(name="sae", fn=sample_task, result_storage=storage)
    return policy.compute_key(SimpleNamespace(task=task), inputs, {})


def test_key_depends_on_declared_fields_and_inputs_only() -> None:
    policy = ContentKey(fields=("epochs", "lr"))
    acts = {"path": "/a/L00.parquet", "size": 10, "sha256": "aa"}
    base = key(policy, cfg=Config(), acts=acts)
    assert base == key(policy, cfg=Config(n_seqs=3, refresh=True), acts=acts)
    assert base != key(policy, cfg=Config(epochs=5), acts=acts)
    assert base != key(policy, cfg=Config(), acts={**acts, "sha256": "bb"})
    assert base.startswith("sae-")


def test_stale_record_is_dropped(tmp_path: Path) -> None:
    data = tmp_path / "L00.parquet"
    data.write_bytes(b"0123456789")
    acts = file_record(data)
    policy = ContentKey(fields=())
    k = key(policy, tmp_path, cfg=Config(), acts=acts)
    record = tmp_path / k
    meta = {"serializer": JSON_SERIALIZER}  # as laminar writes its records
    record.write_text(json.dumps({"metadata": meta, "result": json.dumps({"acts": acts})}))

    key(policy, tmp_path, cfg=Config(), acts=acts)
    assert record.exists()  # files intact: the record stays and Prefect replays it
    data.write_bytes(b"01234")  # truncated
    assert key(policy, tmp_path, cfg=Config(), acts=acts) == k
    assert not record.exists()  # dropped: the task runs again under the same key


def test_locks_of_dead_processes_here_are_released_another_machines_are_explained(
    tmp_path: Path, caplog: Any
) -> None:
    import subprocess
    import sys

    from tasks.locks import ProcessLockManager

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    locks = ProcessLockManager(lock_files_directory=tmp_path)
    for key, host in [("here", locks.host), ("there", "gpu-node-7")]:
        assert locks.acquire_lock(key, holder=f"run-{key}")
        path = locks.lock_path(key)
        info = json.loads(path.read_text())
        path.write_text(json.dumps({**info, "pid": dead.pid, "host": host}))

    other = ProcessLockManager(lock_files_directory=tmp_path)  # a second run's view
    assert not other.is_locked("here")  # its holder died on this machine: released
    with caplog.at_level("WARNING", logger="tasks.locks"):
        assert other.is_locked("there") and other.is_locked("there")  # cannot tell: waits
    [warning] = [r.getMessage() for r in caplog.records if "waiting for there" in r.getMessage()]
    assert f"process {dead.pid} on gpu-node-7" in warning
    assert f"delete {tmp_path / 'there.lock'}" in warning


def test_a_lock_is_judged_by_its_holders_boot_namespace_and_start(tmp_path: Path) -> None:
    """A pid means something only in its own pid namespace and boot: a lock from a container
    with the same host name but another pid namespace is waited on, never released; a pid that
    is alive but belongs to a later process (another start) is a dead holder's."""
    import os

    from tasks.locks import ProcessLockManager, process_start

    locks = ProcessLockManager(lock_files_directory=tmp_path)
    assert locks.acquire_lock("mine", holder="run-a")
    info = json.loads(locks.lock_path("mine").read_text())
    assert info["pid"] == os.getpid() and info["host"] == locks.host
    assert info["boot"] == locks.boot and info["started"] == process_start(os.getpid())
    assert info["pid_namespace"] == locks.pid_namespace
    other = ProcessLockManager(lock_files_directory=tmp_path)
    assert other.is_locked("mine")  # alive, same process: held
    for key, change, held in [
        ("container", {"pid": 2**22 + 7, "pid_namespace": "pid:[1]"}, True),  # not ours: wait
        ("reused", {"started": info["started"] + 1}, False),  # our pid, a later start: gone
    ]:
        assert locks.acquire_lock(key, holder=f"run-{key}")
        path = locks.lock_path(key)
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
        assert other.is_locked(key) is held, key


def test_releasing_a_stale_lock_never_deletes_a_fresh_one(tmp_path: Path) -> None:
    """Between a run judging a lock stale and removing it, another run may have released it and
    a third taken the key: the third's lock stays (the stale file is moved aside and checked by
    its inode first)."""
    import os

    from tasks.locks import ProcessLockManager

    locks = ProcessLockManager(lock_files_directory=tmp_path)
    assert locks.acquire_lock("k", holder="old")
    _, judged, _ = locks._snapshot("k")
    path = locks.lock_path("k")
    path.unlink()  # a second run released it ...
    fresh = ProcessLockManager(lock_files_directory=tmp_path)
    assert fresh.acquire_lock("k", holder="new")  # ... and a third took the key
    assert locks._release("k", judged) is True  # still locked: the new lock was put back
    assert json.loads(path.read_text())["holder"] == "new"
    assert os.listdir(tmp_path) == ["k.lock"]  # nothing left aside
    _, now, _ = locks._snapshot("k")
    assert locks._release("k", now) is False and not path.exists()


@pytest.mark.parametrize("content", [b"", b'{"holder": "run-a", "expiration": null}'])
def test_lock_without_a_pid_is_released_after_the_grace_period(
    tmp_path: Path, content: bytes, caplog: Any
) -> None:
    """An empty lock file (its taker died between Prefect creating and writing it) and one with
    a holder but no pid (died before laminar added it): locked at first, released once unchanged
    for LOCK_GRACE_S, so a resume waits a bounded time instead of forever."""
    from tasks.locks import LOCK_GRACE_S, ProcessLockManager

    locks = ProcessLockManager(lock_files_directory=tmp_path)
    path = locks.lock_path("k")
    path.write_bytes(content)
    assert locks.is_locked("k")  # a lock being taken right now: wait for it
    young = time.time() - LOCK_GRACE_S + 2
    os.utime(path, (young, young))
    assert locks.is_locked("k")
    old = time.time() - LOCK_GRACE_S - 1
    os.utime(path, (old, old))
    with caplog.at_level("WARNING", logger="tasks.locks"):
        assert not locks.is_locked("k")
    assert not path.exists()
    assert any("has had no holder pid" in r.getMessage() for r in caplog.records)
    assert locks.acquire_lock("k", holder="me", acquire_timeout=1)  # free to take


# ---------------------------------------------------------------- keys across laminar versions

KEYS_FILE = Path(__file__).parent / "data" / "cache_keys.json"


def _record(name: str) -> dict[str, Any]:
    sha = name.encode().hex().ljust(64, "0")
    return {"path": f"/artifacts/{name}", "size": 1234, "sha256": sha}


# One canned value per task parameter name, shaped like what the flow passes.
CANNED: dict[str, Any] = {
    "cfg": Config(artifacts_dir="/artifacts"),
    "page": {"url": "u", "fetched_at": "t", "revision_id": 7, "html": _record("p.html")},
    "url": "https://en.wikipedia.org/wiki/Light-emitting_diode",
    "texts": [{"text": _record("p.text.txt"), "chars": 10}],
    "tokenizer_of": "gpt2",
    "tokenizer_fingerprint": "b" * 64,
    "model": "gpt2",
    "name": "gpt2",
    "weights_fingerprint": "c" * 64,
    "tokens": {
        "tokens": _record("t.parquet"),
        "streams": _record("t-streams.parquet"),
        "n_article_tokens": 12000,
        "articles": [{"tokens": 12000, "windows": 10}],
    },
    "layer": 3,
    "acts": {"layer": 3, **_record("L03.parquet")},
    "sae_seed": 0,
    "label": "gpt2 L3",
    "extractions": [],
    "results": [],
    "failed": [],
    "cards": [],
    "started_at": "2026-01-01T00:00:00+00:00",
    "holdouts": [],
    "sae_files": [_record("sae_weights.safetensors"), _record("cfg.json")],
    "holdout": {
        "tokens": _record("t-eval2+0.parquet"),
        "held_out": 2,
        "in_sample": 0,
        "windows": [[0, 0, 1], [0, 1024, 1]],
        "train_windows": [[0, 2048]],
    },
    "folder": "/saes/blocks.3.hook_resid_pre",
    "sae_fingerprint": "d" * 64,
}
CANNED["pages"] = [CANNED["page"]]
CANNED["first"] = {"name": "gpt2", "layer": 3, "sae_seed": 0, "activations": CANNED["acts"]}
CANNED["first"] |= {"sae_files": CANNED["sae_files"], "x_var": 1.5}
CANNED["second"] = {**CANNED["first"], "sae_seed": 1, "sae_files": [_record("s1.safetensors")]}


def task_keys() -> dict[str, str]:
    """The cache key of every task of the flow for the canned inputs."""
    import inspect

    from tasks.extract import extract_activations
    from tasks.latents import latent_cards
    from tasks.published import profile_sae
    from tasks.recipes import train_recipe
    from tasks.report import write_report
    from tasks.scrape import fetch_page, parse_page
    from tasks.splice import splice_sae
    from tasks.stability import seed_stability
    from tasks.tokens import holdout, tokenize
    from tasks.train import train_sae

    keys = {}
    tasks = (fetch_page, parse_page, tokenize, extract_activations, train_sae, latent_cards)
    tasks += (holdout, splice_sae, profile_sae, seed_stability, train_recipe)
    for t in (*tasks, write_report):
        inputs = {p: CANNED[p] for p in inspect.signature(t.fn).parameters}
        task = SimpleNamespace(name=t.name, fn=t.fn, result_storage=None)
        name = "recipe" if t is train_recipe else t.name  # both trainings' task runs are "sae"
        keys[name] = t.cache_policy.compute_key(SimpleNamespace(task=task), inputs, {})
    return keys


def test_cache_keys_are_those_of_the_recorded_version() -> None:
    """A user's cached pages, activations and SAEs stay valid across laminar versions unless the
    code that computes them changed. When this fails, the change invalidates every user's cache
    for the named tasks: if that is meant (the results change), record the new keys with
    `python tests/test_cache.py` and say so in the commit; if not, undo what changed what runs."""
    recorded = json.loads(KEYS_FILE.read_text())
    changed = {t: k for t, k in task_keys().items() if recorded.get(t) != k}
    assert not changed, f"cache keys changed for {sorted(changed)}"


def test_comments_docstrings_and_types_do_not_change_keys() -> None:
    from tasks.codehash import source_digest as digest

    typed = (
        '"""Module."""\nfrom typing import Any\n\n\n'
        'def f(a: Any, b: int = 2) -> int:  # sum\n    """Add."""\n    c: int\n'
        "    s: int = a + b\n    return s\n"
    )
    plain = "def f(a, b=2):\n    s = a + b\n    return s\n"
    assert digest(plain) == digest(typed)
    assert digest(plain) != digest(plain.replace("a + b", "a - b"))
    field = "class C:\n    x: int = 1\n"
    assert digest(field) == digest(field.replace("int", "float"))
    assert digest(field) != digest(field.replace("x: int = 1", "x = 1"))


def test_a_key_covers_the_code_its_task_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each task's key holds the code of every tasks module its module reaches through imports
    (less cache.NOT_COMPUTING): the SAE's key moves when tasks.stats (which bins the latent
    frequencies) changes, the extraction's when tasks.models (which loads the weights) does, a
    fetch's not when the parser does, and none when only progress lines change."""
    from tasks import cache

    assert {"tasks.sae", "tasks.stats", "tasks.minibatch"} <= set(
        cache.computing_modules("tasks.train")
    )
    assert "tasks.models" in cache.computing_modules("tasks.extract")
    before = task_keys()
    real = cache.code_digest.__wrapped__

    def changed(module: str) -> dict[str, str]:
        fake = functools.cache(lambda m: "changed" if m == module else real(m))
        monkeypatch.setattr(cache, "code_digest", fake)
        return {t: k for t, k in task_keys().items() if before[t] != k}

    assert sorted(changed("tasks.stats")) == ["published", "recipe", "report", "sae"]
    models_feed = ["extract", "holdout", "latents", "published", "report", "splice", "tokenize"]
    assert sorted(changed("tasks.models")) == models_feed
    assert sorted(changed("tasks.wikitext")) == ["parse"]
    assert changed("tasks.progress") == {} and changed("tasks.host") == {}


def pythons() -> dict[str, str]:
    """Every Python 3.10+ on this machine (PATH and pyenv), by version, this one included."""
    import glob
    import shutil
    import subprocess
    import sys

    found = {f"{sys.version_info.major}.{sys.version_info.minor}": sys.executable}
    candidates = [shutil.which(f"python3.{m}") for m in range(10, 15)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    for exe in filter(None, candidates):
        out = subprocess.run(
            [exe, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
            capture_output=True,
            text=True,
        )
        version = out.stdout.strip()
        if out.returncode == 0 and tuple(map(int, version.split("."))) >= (3, 10):
            found.setdefault(version, exe)
    return found


def test_code_digests_are_the_same_on_every_python() -> None:
    """The keys hash a form of each module's syntax tree of laminar's own making, not ast.dump
    (which changes between Python versions): every Python 3.10+ on the machine, run on
    tasks/codehash.py alone, digests every tasks module as this one does."""
    import subprocess

    from tasks import cache, codehash

    modules = sorted(
        "tasks." + ".".join(p.relative_to(codehash.TASKS).with_suffix("").parts)
        for p in codehash.TASKS.rglob("*.py")
        if p.name != "__init__.py"
    )
    here = {m: cache.code_digest(m) for m in modules}
    code = (
        "import json, runpy, sys\n"
        f"g = runpy.run_path({str(codehash.TASKS / 'codehash.py')!r})\n"
        "mods = json.loads(sys.argv[1])\n"
        "print(json.dumps({m: g['source_digest'](open(g['module_file'](m)).read()) for m in mods}))"
    )
    versions = pythons()
    for version, exe in versions.items():
        out = subprocess.run([exe, "-c", code, json.dumps(modules)], capture_output=True, text=True)
        assert out.returncode == 0, (version, out.stderr[-2000:])
        assert json.loads(out.stdout) == here, version
    print(f"digests agree on Python {', '.join(sorted(versions))}")


if __name__ == "__main__":  # record the current keys (see the test above)
    KEYS_FILE.write_text(json.dumps(task_keys(), indent=2, sort_keys=True) + "\n")
    print(f"recorded {KEYS_FILE}")


def test_only_records_in_laminars_own_json_are_trusted() -> None:
    """A record's serializer must be exactly laminar's JSON one (pickle, another jsonlib or
    object decoder would run code in Prefect's hands), and its result plain JSON: an object that
    Prefect's decoder would import a class for is refused too."""
    from tasks.cache import JSON_SERIALIZER, _untrusted

    ok = {"metadata": {"serializer": dict(JSON_SERIALIZER)}}
    assert _untrusted(ok, {"files": [{"path": "a", "size": 1, "sha256": "0"}]}) is None
    for change, named in [
        ({"type": "pickle", "picklelib": "pickle"}, "'pickle'"),
        ({**JSON_SERIALIZER, "jsonlib": "pickle"}, "'json'"),
        ({**JSON_SERIALIZER, "object_decoder": "os.system"}, "'json'"),
        (None, "None"),
    ]:
        bad = {"metadata": {"serializer": change}}
        assert _untrusted(bad, {}) == f"its serializer is {named}, not laminar's JSON"
    assert _untrusted({"data": "x", "serializer": JSON_SERIALIZER}, {}) is not None  # legacy
    nested = {"rows": [{"x": {"__class__": "subprocess.Popen", "data": ["true"]}}]}
    assert _untrusted(ok, nested) == "its result names a Python class to build"
    assert _untrusted(ok, [{"__exc_type__": "SystemExit", "message": ""}]) is not None
