"""Every column laminar writes is declared once (tasks.columns), with its unit and meaning; the
records, the report's tables, the UI's table and docs/measures.md follow from the declarations."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT

from tasks import columns, tables
from tasks.config import Config
from tasks.records import LayerResult, Splice
from tasks.train import InMemory, train_layer


def test_the_records_carry_declared_columns_only() -> None:
    """Each key of the per-SAE record and of the splice record is a declared column, and every
    declared per-SAE column is a key of one of them."""
    keys = set(LayerResult.__annotations__) | set(Splice.__annotations__)
    assert columns.undeclared(keys) == []
    per_sae = {c.name for c in columns.COLUMNS if c.group not in ("row",)} | {"layer", "sae_seed"}
    assert per_sae - {"model"} <= keys | {"layer"}, per_sae - keys


def test_a_trained_layers_row_is_its_record() -> None:
    """What training writes for a layer is what LayerResult declares, key for key."""
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32) + 1
    out, _ = train_layer(InMemory(x, "cpu"), Config(device="cpu", epochs=2), "t L0")
    plumbing = {"name", "layer", "sae_seed", "activations", "json", "sae_files", "sae_source"}
    plumbing |= {"stability_seeds", "stability_shared", "stability_mmcs"}  # added by the flow
    assert set(out) == set(LayerResult.__annotations__) - plumbing
    assert columns.undeclared(out) == []


def test_an_undeclared_column_is_refused_where_the_report_reads_it() -> None:
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32) + 1
    out, _ = train_layer(InMemory(x, "cpu"), Config(device="cpu", epochs=2), "t L0")
    row = {"name": "m", "layer": 0, "sae_seed": 0, **out}
    assert tables.metric_rows([row], {"m": 2})[0]["density_pct"] == out["density_pct"]
    with pytest.raises(ValueError, match=r"undeclared column\(s\) \['bogus_pct'\]"):
        tables.metric_rows([{**row, "bogus_pct": 1.0}], {"m": 2})


def test_the_tables_are_made_from_the_declarations() -> None:
    assert [
        *(c.name for c in columns.COLUMNS if c.group != "record" and c.name != "sae_seed"),
        *(f"{c.name}_sd" for c in columns.COLUMNS if c.spread),
    ] == tables.COLUMNS
    assert tables.ARTIFACT_COLUMNS[:5] == ["model", "layer", "n_layers", "rel_depth", "n_seeds"]
    assert set(tables.ARTIFACT_COLUMNS) <= set(tables.COLUMNS)
    assert all(c.unit is not None and c.meaning for c in columns.COLUMNS)


def test_the_docs_list_every_column() -> None:
    """docs/measures.md's column list is made from the declarations (`python -m tasks.columns
    docs/measures.md` rewrites it)."""
    page = (ROOT / "docs/measures.md").read_text()
    assert page == columns.with_docs_table(page), (
        "docs/measures.md's column list is stale: run `python -m tasks.columns docs/measures.md`"
    )
    for c in columns.COLUMNS:
        assert f"| `{c.name}` |" in page


def test_a_published_sae_row_carries_declared_columns_only() -> None:
    """What measuring a published SAE writes is declared too (its mean |z| is a term of the
    loss, not a column)."""
    import time

    import torch

    from tasks.published import measure_layer
    from tasks.sae.standard import Standard
    from tasks.train import finish

    g = torch.Generator().manual_seed(0)
    state = {"W_enc": torch.randn(8, 16, generator=g), "b_enc": torch.zeros(16)}
    state |= {"W_dec": torch.randn(16, 8, generator=g), "b_dec": torch.zeros(8)}
    x = torch.randn(64, 8, generator=g)
    out = measure_layer(Standard({}, state), [x], float(x.var()), l1=1.0)
    row = finish(out, [], Standard({}, state), ("cpu", 64, time.perf_counter()), "p L0")
    assert columns.undeclared(row) == []
    assert row["final_loss"] > row["final_mse"]
