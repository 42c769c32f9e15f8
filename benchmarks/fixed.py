"""The fixed costs a run pays whatever its size: a trivial Prefect flow in a fresh process, and
starting, checking and closing laminar's local Dask cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fixed_costs() -> dict[str, float]:
    """Seconds of a trivial Prefect flow on the ephemeral API, in a fresh process."""
    code = "from prefect import flow\n@flow\ndef f(): return 1\nf()"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, cwd=ROOT)
    return {"prefect_trivial_flow_s": time.perf_counter() - start}


def dask_fixed_cost(folder: Path) -> dict[str, float]:
    """Seconds to start laminar's local Dask cluster (2 workers), check it and close it, timed
    inside a flow (so Prefect's own start is not counted)."""
    code = (
        "import time\nfrom prefect import flow\nfrom tasks.cluster import fanout\n"
        "from tasks.config import Config\n"
        "@flow\ndef f():\n    t = time.perf_counter()\n"
        f"    with fanout(Config(task_runner='dask', artifacts_dir={str(folder)!r})):\n"
        "        pass\n    return time.perf_counter() - t\n"
        "if __name__ == '__main__':\n    print('DASK', f())\n"
    )
    script = folder / "dask_fixed.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("DASK"))
    return {"dask_local_cluster_2_workers_s": float(line.split()[1])}
