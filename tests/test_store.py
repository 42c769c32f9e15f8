"""Files: every write is atomic and durable (the bytes, then the rename, reach the disk), a
failed write leaves the old file, and the write probe never follows a planted link."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tasks import store
from tasks.settings import LaminarError


def test_a_write_reaches_the_disk_before_it_replaces_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync of the temporary, then the rename, then fsync of the folder (which makes the
    rename itself durable): after a power cut the file is the old one or the whole new one."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "layer.json"
    store.write_json(target, {"density_pct": 12.5})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).name.startswith(".layer.json.") and events[0][1].endswith(".tmp")
    assert events[1][1] == str(target) and events[2][1] == str(tmp_path)
    assert target.read_text().strip().startswith("{") and os.listdir(tmp_path) == ["layer.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    store.write_json(target, {"ok": 1})
    with pytest.raises(LaminarError, match="NaN or inf"):
        store.write_json(target, {"loss": float("nan")})
    with pytest.raises(RuntimeError), store.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == json.dumps({"ok": 1}, indent=2)
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary left behind


def test_the_write_probe_never_follows_a_planted_link(tmp_path: Path) -> None:
    """A link planted where a probe of this process could be written (its pid is no secret)
    points at a file the probe must not truncate: the probe's name cannot be guessed, and it is
    created new (O_EXCL) without following links (O_NOFOLLOW)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    root = tmp_path / "art"
    root.mkdir()
    (root / f".write-probe-{os.getpid()}").symlink_to(victim)
    store.check_writable(root)
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in root.iterdir()) == [f".write-probe-{os.getpid()}"]
