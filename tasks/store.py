"""Files on disk: atomic writes, content hashes and the Parquet layouts of tokens and activations.

Every file is written under a temporary name and renamed into place, so a killed run never
leaves a file that a later run trusts. Each task returns a small record of what it wrote
(path, size, sha256); the cache policy checks those records before replaying a result."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.host import on_worker
from tasks.records import FileRecord
from tasks.settings import LaminarError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> FileRecord:
    """What a task promises about a file it wrote; `verify` checks it later."""
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}


def verify(record: FileRecord, *, hash_check: bool = False) -> bool:
    """True when the file is still there with the recorded size (and hash, if asked)."""
    path = Path(record["path"])
    try:
        if path.stat().st_size != record["size"]:
            return False
    except OSError:
        return False
    return not hash_check or sha256_file(path) == record["sha256"]


# Which machine wrote a temporary (a name-safe tag of the host name): see sweep_temporaries.
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


@contextlib.contextmanager
def atomic_path(path: Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.
    Durable through a power cut: the temporary's bytes reach the disk (fsync) before the rename,
    and the rename itself (fsync of the folder) before this returns, so `path` is after a crash
    either the old file or the whole new one. A full disk (or quota) is one sentence naming the
    folder and the space wanted (`needed` bytes, where the writer knows them), never a bare
    OSError, and leaves no temporary behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{HOST_TAG}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)
        if not full:  # pyarrow's errors carry the message, not always the errno
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        raise disk_full(path, written, needed) from None
    finally:
        tmp.unlink(missing_ok=True)


def disk_full(path: Path, written: int, needed: int | None) -> LaminarError:
    """One sentence for a write that found no room: where, how much it needed, what to do."""
    try:
        free = shutil.disk_usage(next(p for p in [path.parent, *path.parents] if p.exists())).free
    except (OSError, StopIteration):
        free = 0
    want = f"about {needed:,} bytes" if needed else f"more than the {written:,} bytes it got"
    return LaminarError(
        f"the disk holding '{path.parent}' is full ({free:,} bytes free): writing "
        f"'{path.name}' needs {want}; free space there (or give --artifacts-dir on a disk with "
        "room) and rerun: what finished is kept, and only what is missing is computed."
    )


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_temporaries(folder: Path) -> None:
    """Delete temporaries that a killed run left in `folder`: written on this machine (on a
    shared filesystem another machine's pids mean nothing here) by a process that is gone."""
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
        pid, _, rest = tmp.name.rsplit(".", 2)[-2].partition("-")  # PID-HOSTTAG-RANDOM
        if rest.startswith(f"{HOST_TAG}-") and pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON: NaN or inf (which JSON has no words for) is refused, never written."""
    try:
        data = json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=False)
    except ValueError as exc:
        raise LaminarError(f"refusing to write '{path}': {exc} (NaN or inf in a result).") from None
    write_bytes(path, data.encode())


def check_writable(root: Path) -> None:
    """Fail early, before any work, when the artifacts dir cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        # a new file of an unguessable name, never through a link someone planted there
        probe = root / f".write-probe-{os.getpid()}-{uuid.uuid4().hex}"
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        probe.unlink()
    except OSError as exc:
        raise LaminarError(
            f"--artifacts-dir '{root}' is not writable ({exc.strerror}): choose a folder you "
            "can write to."
        ) from None


# -------------------------------------------------------- token batches and activations as Parquet


def write_batch(batch: np.ndarray, path: Path) -> None:
    n, length = batch.shape
    table = pa.table(
        {
            "seq": pa.array(np.repeat(np.arange(n), length), pa.int32()),
            "pos": pa.array(np.tile(np.arange(length), n), pa.int32()),
            "token_id": pa.array(batch.reshape(-1), pa.int32()),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_batch(record: FileRecord) -> np.ndarray:
    """(n_seqs, seq_len) int64 token ids from a batch file written by `tokenize`."""
    table = pq.read_table(record["path"])
    n = int(pc.max(table["seq"]).as_py()) + 1
    return table["token_id"].to_numpy().astype(np.int64).reshape(n, -1)


def activation_table(
    seq: np.ndarray, pos: np.ndarray, token_id: np.ndarray, acts: np.ndarray
) -> pa.Table:
    """acts (rows, d) float32 -> columns seq, pos, token_id, activation (fixed_size_list[d]).
    The list column wraps the flat buffer without copying row by row."""
    d = acts.shape[1]
    flat = pa.array(np.ascontiguousarray(acts, dtype=np.float32).reshape(-1))
    return pa.table(
        {
            "seq": pa.array(seq, pa.int32()),
            "pos": pa.array(pos, pa.int32()),
            "token_id": pa.array(token_id, pa.int32()),
            "activation": pa.FixedSizeListArray.from_arrays(flat, d),
        }
    )


def activation_schema(d: int, metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(
        [
            ("seq", pa.int32()),
            ("pos", pa.int32()),
            ("token_id", pa.int32()),
            ("activation", pa.list_(pa.float32(), d)),
        ],
        metadata={k: str(v) for k, v in metadata.items()},
    )


def _checked(record: FileRecord) -> Path:
    """The path of an activation file that matches its record (size and sha256). A file that
    does not is never read as data: it is deleted, so the next run's cache check rebuilds it."""
    path = Path(record["path"])
    if not path.exists() and (worker := on_worker()):  # this machine does not see the files
        raise LaminarError(
            f"activation file '{path}' that the flow wrote is not visible{worker}: every Dask "
            "worker must see the artifacts dir at the same path (a shared filesystem)."
        )
    if not verify(record, hash_check=True):
        path.unlink(missing_ok=True)
        raise LaminarError(
            f"activation file '{path}' is missing or changed since it was written (removed): "
            "rerun the same command to rebuild it."
        )
    return path


def _unreadable(path: Path, exc: Exception) -> LaminarError:
    return LaminarError(f"activation file '{path}' cannot be read ({exc}): delete it and rerun.")


def _as_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The activation column (fixed_size_list[d]) as (rows, d) float32, from Arrow's buffer."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)


def read_activations(record: FileRecord) -> np.ndarray:
    """(rows, d) float32 from an activation file, straight from Arrow's buffer (no per-row
    Python objects), after checking it against its record."""
    path = _checked(record)
    try:
        table = pq.read_table(path, columns=["activation"])
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from None
    return _as_matrix(table.column("activation"))


class ActivationFile:
    """An activation file read a row group at a time (extraction writes one per chunk of
    sequences), so memory holds one group, never the whole layer. Checked against its record
    when opened."""

    def __init__(self, record: FileRecord):
        self.path = _checked(record)
        try:
            self.file = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as exc:
            raise _unreadable(self.path, exc) from None
        self.n_rows: int = self.file.metadata.num_rows
        self.n_groups: int = self.file.num_row_groups
        self.d: int = self.file.schema_arrow.field("activation").type.list_size

    def group(self, i: int) -> np.ndarray:
        """Row group i as (rows, d) float32, writable (its own copy of one group: torch refuses
        to wrap Arrow's read-only buffer without a warning)."""
        col = self.file.read_row_group(i, columns=["activation"]).column(0).combine_chunks()
        return col.values.to_numpy(zero_copy_only=False, writable=True).reshape(-1, self.d)
