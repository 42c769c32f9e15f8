"""Models: a folder offering only pickled weights is named in one warning line; code a model
folder ships is never run; fingerprints and hub revisions identify what was loaded."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import make_family_model, make_model

from tasks import models
from tasks.config import Config
from tasks.settings import LaminarError

SHORT = Config(seq_len=32)  # windows the tiny models' 128-token context holds


def test_pickled_weights_only_is_one_warning_line(
    tmp_path: Path, tokenizer_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch
    import transformers

    folder = make_model(tmp_path / "pickled", tokenizer_dir)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    safe = make_model(tmp_path / "safe", tokenizer_dir)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the CLI and the flow both check a model: still one line
            models.describe(SHORT, str(folder))
        models.describe(SHORT, str(safe))
    lines = [r.getMessage() for r in caplog.records if "pickled weights" in r.getMessage()]
    assert lines == [
        f"--models '{folder}' offers only pickled weights (pytorch_model.bin): a pickle can "
        "carry code, so load only folders you trust, or convert them with "
        "save_pretrained(safe_serialization=True)"
    ]
    assert models.load_model(str(folder), "cpu").cfg.n_layers == 3  # it still loads


def test_code_shipped_in_a_model_folder_is_never_run(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "with-code"
    shutil.copytree(tiny_model, folder)
    marker = tmp_path / "code-ran"
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    models.describe(SHORT, str(folder))
    models.load_model(str(folder), "cpu")
    assert not marker.exists()


def test_local_fingerprint_changes_with_the_weights(tmp_path: Path, tokenizer_dir: Path) -> None:
    folder = make_model(tmp_path / "m", tokenizer_dir)
    before = models.model_fingerprint(str(folder))
    assert models.model_fingerprint(str(folder)) == before
    make_model(folder, tokenizer_dir, seed=1)  # new weights saved in place
    assert models.model_fingerprint(str(folder)) != before
    assert models.hub_revision(str(folder)) is None
    assert models.identity(str(folder))["source"] == "local folder"


def test_describe_checks_layers_and_folders(tmp_path: Path, tiny_model: Path) -> None:
    info = models.describe(SHORT.model_copy(update={"layers": "0,2"}), str(tiny_model))
    assert info["layers"] == [0, 2] and info["name"] == "tiny-gpt2"
    with pytest.raises(LaminarError, match="has 3 layers"):
        models.describe(SHORT.model_copy(update={"layers": "5"}), str(tiny_model))
    with pytest.raises(LaminarError, match="not a model folder"):
        models.describe(SHORT, str(tmp_path))


def test_an_architecture_the_bridge_does_not_support_is_one_sentence(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    folder = make_family_model(tmp_path / "tiny-biogpt", tokenizer_dir, "biogpt")
    with pytest.raises(LaminarError) as e:
        models.describe(SHORT, str(folder))  # before any weights are loaded
    assert str(e.value) == (
        f"--models '{folder}' is a BioGptForCausalLM model, an architecture TransformerLens 4's "
        "TransformerBridge does not support: pick a causal LM of a supported family (GPT-2, "
        "GPT-NeoX/Pythia, Llama, Mistral, Qwen, Gemma, OPT, ...)."
    )
    with pytest.raises(LaminarError) as e:  # loading it anyway says the same
        models.load_model(str(folder), "cpu")
    assert "is a BioGptForCausalLM model, an architecture" in str(e.value)


# A fresh interpreter (this one has loaded transformers already): `threads` describe the same
# model at once, from one barrier, as the points of a sweep on Dask do in one process.
DESCRIBE_AT_ONCE = """
import json, sys, threading
from tasks import models
from tasks.config import Config
folder, n = sys.argv[1], int(sys.argv[2])
cfg = Config(models=[folder], seq_len=32)
barrier, facts, errors = threading.Barrier(n), [], []
def one():
    barrier.wait()
    try:
        facts.append(models.describe(cfg, folder))
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=one) for _ in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"errors": errors, "facts": facts}))
"""


def test_threads_that_describe_models_at_once_each_get_the_facts(tiny_model: Path) -> None:
    """transformers' lazy module fails threads that first import it at once ("cannot import name
    'AutoTokenizer'"; in 4 of 4 fresh processes with tasks.models importing from transformers
    itself): eight threads describing a model in a fresh process, through tasks.hf, each get what
    one thread alone gets."""
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run(
        [sys.executable, "-c", DESCRIBE_AT_ONCE, str(tiny_model), "8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["errors"] == []
    alone = json.loads(
        json.dumps(models.describe(Config(models=[str(tiny_model)], seq_len=32), str(tiny_model)))
    )
    assert got["facts"] == [alone] * 8


# TransformerLens's bridge leaves these hooks off until switched on; each pair is run on its own
# (use_attn_in and use_split_qkv_input exclude each other).
SWITCHES = [
    ("set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"),
    ("set_use_attn_in",),
]


def block_shapes(
    bridge: Any, switches: tuple[str, ...], off: set[str]
) -> dict[str, tuple[int, ...]]:
    """Each hook name of block 0 (aliases included) that runs with `switches` on: its shape.
    The names that cannot be hooked go into `off`."""
    import torch

    for switch in switches:
        getattr(bridge, switch)(True)
    seen: dict[str, tuple[int, ...]] = {}
    for name in (n for n in bridge.hook_dict if n.startswith("blocks.0.")):
        short = name.removeprefix("blocks.0.")
        try:
            bridge.add_hook(name, lambda act, hook, short=short: seen.__setitem__(short, act.shape))
        except ValueError:  # off: run under the other switches
            off.add(short)
            continue
    with torch.no_grad():
        bridge(torch.tensor([[1, 2, 3, 4, 5]]))
    bridge.reset_hooks()
    for switch in switches:
        getattr(bridge, switch)(False)
    return seen


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_the_hooks_config_refuses_are_those_not_one_vector_per_token(
    family: str, tiny_model: Path, family_models: dict[str, Path]
) -> None:
    """Every hook of a block, each run for real: the ones Config refuses (NOT_PER_TOKEN_HOOKS)
    are exactly those whose activation is not (batch, pos, d) at the residual or MLP width, and
    of those the bridge leaves off, only OFF_HOOKS are per token."""
    import torch

    from tasks.config_input import NOT_PER_TOKEN_HOOKS, OFF_HOOKS

    folder = tiny_model if family == "gpt2" else family_models[family]
    bridge = models.load_model(str(folder), "cpu")
    off: set[str] = set()
    assert block_shapes(bridge, (), off) and off  # as laminar's extraction hooks the bridge
    assert off - NOT_PER_TOKEN_HOOKS == OFF_HOOKS  # the rest of what is off is refused anyway
    shapes = {k: v for sw in SWITCHES for k, v in block_shapes(bridge, sw, set()).items()}
    assert len(shapes) > 30 and "mlp.hook_pre" in shapes  # (some hooks never fire here)
    widths = {bridge.cfg.d_model, bridge.cfg.d_mlp}
    for name, shape in shapes.items():
        per_token = len(shape) == 3 and tuple(shape[:2]) == (1, 5) and shape[2] in widths
        assert (name not in NOT_PER_TOKEN_HOOKS) == per_token, (name, shape)
    # The refusal of hook_mlp_in points to ln2.hook_in: the same values, switched on here
    bridge.set_use_hook_mlp_in(True)
    got: dict[str, torch.Tensor] = {}
    for name in ("blocks.1.hook_mlp_in", "blocks.1.ln2.hook_in"):
        bridge.add_hook(name, lambda act, hook, name=name: got.__setitem__(name, act.clone()))
    with torch.no_grad():
        bridge(torch.tensor([[1, 2, 3, 4, 5]]))
    assert torch.equal(got["blocks.1.hook_mlp_in"], got["blocks.1.ln2.hook_in"])
