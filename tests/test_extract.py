"""Extraction: laminar's activations equal the Hugging Face model's mlp.c_fc output on the same
tokens; position 0 is dropped; each layer gets its own Parquet file with its metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tasks.config import Config
from tasks.extract import extract_activations, hook_names
from tasks.models import load_model
from tasks.settings import LaminarError
from tasks.store import file_record, read_activations, write_batch


def reference_c_fc(model_dir: Path, batch: np.ndarray) -> list[np.ndarray]:
    """mlp.c_fc output of every block, straight from transformers (eager attention)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    outs: list[torch.Tensor] = []
    handles = [
        b.mlp.c_fc.register_forward_hook(lambda m, i, o: outs.append(o)) for b in hf.transformer.h
    ]
    with torch.no_grad():
        hf(torch.from_numpy(batch).long())
    for h in handles:
        h.remove()
    return [o.numpy() for o in outs]


@pytest.fixture
def batch_record(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 50257, size=(3, 20)).astype(np.int32)
    write_batch(batch, tmp_path / "tokens.parquet")
    return {"tokens": file_record(tmp_path / "tokens.parquet"), "batch": batch}


@pytest.mark.parametrize("keep_first", [False, True])
def test_activations_equal_hf_c_fc(
    tmp_path: Path, tiny_model: Path, batch_record: dict, keep_first: bool
) -> None:
    cfg = Config(artifacts_dir=str(tmp_path), keep_first_token=keep_first, extract_batch=2)
    out = extract_activations.fn(cfg, str(tiny_model), "tiny", "f" * 64, batch_record)
    ref = reference_c_fc(tiny_model, batch_record["batch"])
    first = 0 if keep_first else 1
    assert out["n_layers"] == 3 and [f["layer"] for f in out["files"]] == [0, 1, 2]
    for f in out["files"]:
        got = read_activations(f)
        want = ref[f["layer"]][:, first:, :].reshape(-1, 256)
        assert got.shape == (3 * (20 - first), 256)
        rel = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert rel < 1e-4, (f["layer"], rel)
        table = pq.read_table(f["path"])
        assert table["pos"].to_pylist()[: 20 - first] == list(range(first, 20))
        assert table["seq"].to_pylist()[-1] == 2
        assert (
            table["token_id"].to_pylist()[:3]
            == batch_record["batch"][0, first : first + 3].tolist()
        )
        meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
        assert meta["layer"] == str(f["layer"]) and meta["d"] == "256"
        assert meta["hook"] == "mlp.hook_pre" and meta["model"] == str(tiny_model)
        assert meta["tokens_sha256"] == batch_record["tokens"]["sha256"]


def test_layer_subset_writes_only_those(
    tmp_path: Path, tiny_model: Path, batch_record: dict
) -> None:
    cfg = Config(artifacts_dir=str(tmp_path), layers="1")
    out = extract_activations.fn(cfg, str(tiny_model), "tiny", "f" * 64, batch_record)
    assert [f["layer"] for f in out["files"]] == [1]
    assert sorted(p.name for p in Path(out["files"][0]["path"]).parent.iterdir()) == ["L01.parquet"]


def test_unknown_hook_lists_valid_ones(tiny_model: Path) -> None:
    bridge = load_model(str(tiny_model), "cpu")
    with pytest.raises(LaminarError, match=r"--hook 'mlp.nope'.*mlp\.hook_post"):
        hook_names(bridge, "mlp.nope", [0])


# (family, hook, the Hugging Face module whose output that hook must equal)
FAMILY_HOOKS = [
    ("neox", "mlp.hook_pre", "dense_h_to_4h"),  # GPT-NeoX: the MLP's first linear, before GELU
    ("llama", "mlp.hook_pre", "gate_proj"),  # gated MLP: hook_pre is the gate, before SiLU
    ("llama", "mlp.hook_pre_linear", "up_proj"),  # ... and hook_pre_linear the up projection
]


def reference_mlp_module(model_dir: Path, batch: np.ndarray, module: str) -> list[np.ndarray]:
    """`module` of every block's MLP, straight from transformers."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    blocks = hf.base_model.layers
    outs: list[torch.Tensor] = []
    handles = [
        getattr(b.mlp, module).register_forward_hook(lambda m, i, o: outs.append(o)) for b in blocks
    ]
    with torch.no_grad():
        hf(torch.from_numpy(batch).long())
    for h in handles:
        h.remove()
    return [o.numpy() for o in outs]


@pytest.mark.parametrize(("family", "hook", "module"), FAMILY_HOOKS)
def test_other_families_hooks_equal_their_hf_modules(
    tmp_path: Path,
    family_models: dict[str, Path],
    batch_record: dict,
    family: str,
    hook: str,
    module: str,
) -> None:
    model = family_models[family]
    cfg = Config(artifacts_dir=str(tmp_path), hook=hook)
    out = extract_activations.fn(cfg, str(model), family, "f" * 64, batch_record)
    ref = reference_mlp_module(model, batch_record["batch"], module)
    width = ref[0].shape[-1]
    assert out["n_layers"] == 3 and width == {"neox": 256, "llama": 192}[family]
    for f in out["files"]:
        got = read_activations(f)
        want = ref[f["layer"]][:, 1:, :].reshape(-1, width)
        rel = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert rel < 1e-5, (f["layer"], rel)
    if module == "gate_proj":  # and not the other projection
        other = reference_mlp_module(model, batch_record["batch"], "up_proj")[0][:, 1:, :]
        assert not np.allclose(read_activations(out["files"][0]), other.reshape(-1, width))


def test_hook_names_are_listed_per_architecture(family_models: dict[str, Path]) -> None:
    with pytest.raises(LaminarError) as llama:
        hook_names(load_model(str(family_models["llama"]), "cpu"), "mlp.nope", [0])
    with pytest.raises(LaminarError) as neox:
        hook_names(load_model(str(family_models["neox"]), "cpu"), "mlp.nope", [0])
    assert "mlp.hook_pre_linear" in str(llama.value) and "mlp.gate.hook_out" in str(llama.value)
    assert "mlp.hook_pre_linear" not in str(neox.value) and "mlp.hook_pre," in str(neox.value)
