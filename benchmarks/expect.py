"""What a user can expect before running: the estimate laminar prints for the default run
(GPT-2 small and large shapes, course settings) on this machine, and the measured wall time of
the `quick` deployment's settings run through the CLI on a random-weight GPT-2-small-shaped
model (no hub here; same shapes, same cost). Used by bench.py's `expect` section."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import N_TOKENS, SHAPES
from benchmarks.models import build_model
from tasks import costs
from tasks.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test fixtures it reuses: not a package


def estimates(device: str, precision: str = "fp32") -> dict[str, str]:
    """The estimate line of the default config per GPT-2 shape, at a rate measured now."""
    cfg = Config()
    lines = {}
    with tempfile.TemporaryDirectory() as root:
        for shape, (n_layer, _, d_mlp) in SHAPES.items():
            latent = cfg.expansion * d_mlp
            rate = costs.calibrated_rate(Path(root), device, precision, N_TOKENS, d_mlp, latent)
            lines[shape] = costs.estimate(
                shape, n_layer, 0, cfg.epochs, N_TOKENS, d_mlp, latent, rate, precision
            )
    return lines


def quick_run(folder: Path) -> dict[str, Any]:
    """Wall time of `python flows/laminar.py` with the quick deployment's settings (layers
    0,5,11, 10 epochs, 2 x 256 tokens) on a GPT-2-small-shaped model, Prefect start included."""
    from conftest import (
        ARTICLE,
        TOKENIZER_DIR,
        ArticleServer,
        article_prose,
        gpt2_tokenizer,
        wiki_page,
    )

    model = build_model("gpt2-small", folder)
    gpt2_tokenizer(TOKENIZER_DIR).save_pretrained(model)
    server = ArticleServer()
    server.routes[ARTICLE] = (200, wiki_page(article_prose(100)).encode())
    try:
        with tempfile.TemporaryDirectory() as root:
            args = ["--models", str(model), "--url", server.url(ARTICLE), "--layers", "0,5,11"]
            args += ["--epochs", "10", "--n-seqs", "2", "--seq-len", "256", "--device", "cpu"]
            start = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "flows" / "laminar.py"),
                    *args,
                    "--artifacts-dir",
                    root,
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            seconds = time.perf_counter() - start
    finally:
        server.close()
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    line = next(x for x in out.stderr.splitlines() if "laminar: gpt2-small: 3 layers" in x)
    return {"quick_run_s": round(seconds, 1), "quick_estimate": line.split("laminar: ", 1)[1]}
