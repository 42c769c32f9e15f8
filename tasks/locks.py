"""The cache's file locks (Prefect's LockFiles) with their holders named: pid, host, boot, pid
namespace and the process's start, so a lock left by a killed run is released instead of making
every later run wait forever, and one held on another machine is explained."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from tasks.prefect_api import LockFiles
from tasks.store import atomic_path, pid_alive

log = logging.getLogger(__name__)

# Prefect creates a lock file, then writes its holder; laminar then adds the pid and host. Each
# step follows the last within milliseconds, so a lock file still without a pid after this many
# seconds was left by a process that died while taking the lock (Prefect's locks never expire).
LOCK_GRACE_S = 10.0


def _read_or(path: str, default: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat's 22nd field), or None
    where that cannot be read: a pid reused by a later process has another start."""
    stat = _read_or(f"/proc/{pid}/stat", "")
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


class ProcessLockManager(LockFiles):
    """Prefect's file locks, plus who holds them: pid, host, boot and pid namespace, and the
    process's start. Released instead of making every later run wait forever: a lock whose
    process is gone (kill -9) where that can be checked (this host, this boot and this pid
    namespace: containers that share a host name do not share pids), and a lock file that is
    empty or has no pid LOCK_GRACE_S after it was last written (its taker died)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # who this process is, read when a run makes its lock manager (never at import)
        self.host = socket.gethostname()
        self.boot = _read_or("/proc/sys/kernel/random/boot_id", "")
        self.pid_namespace = _pid_namespace()
        self._told: set[str] = set()  # keys held on another machine that we warned about

    def acquire_lock(self, key: str, holder: str, *args: Any, **kwargs: Any) -> bool:
        acquired = super().acquire_lock(key, holder, *args, **kwargs)
        if acquired:
            path = self.lock_path(key)
            info = json.loads(path.read_bytes())
            me = {"pid": os.getpid(), "host": self.host, "boot": self.boot}
            me |= {"pid_namespace": self.pid_namespace, "started": process_start(os.getpid())}
            data = json.dumps({**info, **me}).encode()
            with atomic_path(path) as tmp:  # readers see the old or the new file, never half
                tmp.write_bytes(data)
        return acquired

    def read_info(self, key: str, use_cache: bool) -> Any:
        # Prefect creates a lock file, then writes it: a reader in between sees an empty file.
        # That is a lock being taken, so: locked, holder unknown (never us).
        try:
            return super().read_info(key, use_cache)
        except ValueError:
            return {"holder": "", "expiration": None, "path": self.lock_path(key)}

    def _here(self, info: dict[str, Any]) -> bool:
        """Whether the holder's pid can be checked from this process: the same host, and where
        the lock says so, the same boot and pid namespace."""
        same = [(info.get("host"), self.host)]
        same += [
            (info[f], v)
            for f, v in (("boot", self.boot), ("pid_namespace", self.pid_namespace))
            if f in info
        ]
        return all(a == b for a, b in same)

    def _gone(self, info: dict[str, Any]) -> bool:
        pid, started = info.get("pid"), info.get("started")
        if not isinstance(pid, int):
            return False
        return not pid_alive(pid) or (started is not None and process_start(pid) != started)

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        if not super().is_locked(key, use_cache=use_cache):
            return False
        info, ino, age = self._snapshot(key)
        pid, host = info.get("pid"), info.get("host")
        if self._here(info) and self._gone(info):
            log.warning("releasing the lock on %s left by process %s, which is gone", key, pid)
            return self._release(key, ino)
        if pid is None and age > LOCK_GRACE_S:
            log.warning(
                "releasing the lock on %s: its file has had no holder pid for %.0f s, so the "
                "process taking it died",
                key,
                age,
            )
            return self._release(key, ino)
        if host and not self._here(info) and key not in self._told:
            # Another machine's pid cannot be checked from here: say what we wait on and how to
            # end the wait if that machine is gone.
            self._told.add(key)
            log.warning(
                "waiting for %s, which process %s on %s is computing; if that machine is gone, "
                "delete %s",
                key,
                pid,
                host,
                self.lock_path(key),
            )
        return True

    def _snapshot(self, key: str) -> tuple[dict[str, Any], tuple[int, bytes] | None, float]:
        """The lock file's record, its identity (inode and bytes: a file system may give a new
        file the inode of one just deleted) and its age in seconds, read from one open file (so
        they belong together); an empty or half-written record reads as {}."""
        try:
            fd = os.open(self.lock_path(key), os.O_RDONLY)
        except FileNotFoundError:
            return {}, None, 0.0
        try:
            st = os.fstat(fd)
            raw = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        try:
            info = json.loads(raw)
        except ValueError:
            info = {}
        info = info if isinstance(info, dict) else {}
        return info, (st.st_ino, raw), time.time() - st.st_mtime

    def _release(self, key: str, judged: tuple[int, bytes] | None) -> bool:
        """Remove the lock file judged stale (identity `judged`), and only that one: it is moved
        aside first, so a lock another run took meanwhile in its place is put back, not
        deleted. Returns whether the key is still locked."""
        path = self.lock_path(key)
        aside = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.released")
        try:
            os.rename(path, aside)
        except FileNotFoundError:  # another run released it first
            self.forget(key)
            return False
        if judged is not None and (aside.stat().st_ino, aside.read_bytes()[: 1 << 16]) != judged:
            # a new lock took the stale one's place: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            aside.unlink()
            return True
        aside.unlink()
        self.forget(key)
        return False
