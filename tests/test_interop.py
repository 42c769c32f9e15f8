"""laminar's saved SAEs read by SAELens itself, in an environment of its own (.venv-interop,
built by `make interop`: sae-lens 6 needs TransformerLens < 4, laminar needs 4): the latents and
the reconstruction SAELens computes from a layer's Parquet file equal laminar's, and
tasks.sae.load reproduces the layer's reported metrics."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, ArticleServer, quick_config

from flows.laminar import laminar
from tasks import sae, store

pytestmark = pytest.mark.interop
INTEROP_PYTHON = ROOT / ".venv-interop" / "bin" / "python"

# Run in .venv-interop: SAELens loads the SAE, encodes the layer's activations (read with
# pyarrow from laminar's Parquet file) and decodes them; both go back as .npy files.
SAELENS = """
import sys
import numpy as np, pyarrow.parquet as pq, torch
from sae_lens import SAE
folder, parquet, out = sys.argv[1:]
col = pq.read_table(parquet, columns=["activation"]).column("activation").combine_chunks()
x = torch.from_numpy(col.values.to_numpy().reshape(len(col), -1).copy())
model = SAE.load_from_disk(folder, device="cpu")
with torch.no_grad():
    z = model.encode(x)
    x_hat = model.decode(z)
np.save(out + "/z.npy", z.numpy()); np.save(out + "/x_hat.npy", x_hat.numpy())
print(type(model).__name__, model.cfg.k)
"""


@pytest.fixture(scope="module")
def interop_python() -> Path:
    if not INTEROP_PYTHON.exists():
        pytest.skip("no .venv-interop: `make interop` builds it (make test does)")
    return INTEROP_PYTHON


def test_saelens_reads_laminars_sae_and_gets_its_numbers(
    interop_python: Path, tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    summary = laminar(quick_config(tiny_model, article_server, tmp_path / "art", layers="1"))
    [cfg_json] = (tmp_path / "art" / "sae").rglob("cfg.json")
    folder = cfg_json.parent
    [parquet] = (tmp_path / "art" / "activations").rglob("L01.parquet")
    out = subprocess.run(
        [str(interop_python), "-c", SAELENS, str(folder), str(parquet), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repo: nothing of laminar is importable there
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ours = sae.load(folder)
    assert out.stdout.split() == ["TopKSAE", str(ours.k)]

    x = torch.from_numpy(store.read_activations(store.file_record(parquet)).copy())
    with torch.no_grad():
        x_hat, z = ours(x)
        pre = (x @ ours.weight.T).clamp(min=0)
    # The one difference: at a tie with the k-th value laminar keeps every tied entry and
    # SAELens exactly k. The data here has none, so the latents must agree exactly in support.
    kth = pre.topk(ours.k, dim=1).values[:, -1:]  # (N, 1)
    ties = ((pre == kth).sum(dim=1) > 1) & (kth[:, 0] > 0)
    assert not ties.any(), "a tie at the k-th value: the comparison below would not hold"
    z_lens, x_hat_lens = (np.load(tmp_path / f) for f in ("z.npy", "x_hat.npy"))
    assert np.array_equal(z_lens != 0, z.numpy() != 0)
    np.testing.assert_allclose(z_lens, z.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_hat_lens, x_hat.numpy(), rtol=1e-5, atol=1e-6)

    with open(Path(summary["report"]) / "metrics.csv") as f:
        [row] = list(csv.DictReader(f))
    again = sae.metrics(ours, x)
    assert again["density_pct"] == pytest.approx(float(row["density_pct"]), rel=1e-9)
    assert again["final_mse"] == pytest.approx(float(row["final_mse"]), rel=1e-6)
