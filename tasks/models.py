"""Models: where a model comes from (a local folder or the Hugging Face hub), its identity for
cache keys and provenance, its tokenizer and weights, and one sentence for every way loading it
can fail.

Offline with a warm cache: before the first hub model is loaded, the hub is asked once whether
it answers. If it does not, the process switches the hub client to offline mode (as
HF_HUB_OFFLINE=1 would), so models already in the local cache load at once instead of retrying
every file for minutes, and a model that is not cached fails in one sentence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tasks.config import Config
from tasks.host import logger
from tasks.records import ModelFacts
from tasks.settings import LaminarError, parse_layer_spec, short_name, stable_hash

HUB_PROBE_TIMEOUT = 5.0  # s: a hub that has not answered by then is treated as unreachable


def is_local(model: str) -> bool:
    return Path(model).exists()


def check_local_folder(model: str) -> None:
    folder = Path(model)
    if folder.exists() and not (folder / "config.json").exists():
        raise LaminarError(
            f"--models '{model}' is a local path without config.json, so not a model folder: "
            "pass a folder saved with save_pretrained() or a hub id such as gpt2."
        )


PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_warned: set[str] = set()


def warn_if_pickled(model: str) -> None:
    """One warning line (once per model and process) for a folder whose only weights are
    pickles: the format that can carry code, where safetensors cannot."""
    folder = Path(model)
    if model in _warned or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in PICKLED for p in folder.glob(pattern))
    if pickles:
        _warned.add(model)
        logger().warning(
            "--models '%s' offers only pickled weights (%s): a pickle can carry code, so load "
            "only folders you trust, or convert them with save_pretrained(safe_serialization="
            "True)",
            model,
            ", ".join(pickles),
        )


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def go_offline(why: str) -> None:
    """Switch this process (and the processes it starts) to the hub's offline mode."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub and transformers
    logger().warning("%s: loading models from the local Hugging Face cache only", why)


def ensure_hub_or_offline(models: list[str]) -> None:
    """If a model must come from the hub and the hub does not answer, go offline once."""
    if hub_offline() or all(is_local(m) for m in models):
        return
    import requests
    from huggingface_hub import constants

    try:
        requests.head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        go_offline(
            f"the Hugging Face hub at {constants.ENDPOINT} cannot be reached ({type(exc).__name__})"
        )


def hub_revision(model: str) -> str | None:
    """The commit sha of the hub snapshot in the local cache that loading `model` uses."""
    if is_local(model):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid hub id: it names no snapshot
        return None
    return Path(path).parent.name if isinstance(path, str) else None


def model_fingerprint(model: str) -> str:
    """Identity of the weights for cache keys and provenance: for a hub model its id and snapshot
    commit; for a local folder its config and the names, sizes and mtimes of its files (cheap,
    and changes when weights are replaced)."""
    folder = Path(model)
    if not folder.is_dir():
        revision = hub_revision(model)
        return stable_hash({"hub": model, **({"revision": revision} if revision else {})})
    files = sorted(p for p in folder.iterdir() if p.is_file())
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    config = folder / "config.json"
    return stable_hash({"config": config.read_text() if config.exists() else "", "files": stats})


def model_load_error(model: str, exc: BaseException, what: str) -> LaminarError:
    """One sentence for why `model` (a hub id or folder) could not be loaded, and the fix."""
    chain, e = [], exc
    while e is not None and len(chain) < 10:
        chain.append(type(e).__name__)
        e = e.__cause__ or e.__context__
    offline = hub_offline() or any(
        n in chain for n in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError")
    )
    if is_local(model):
        why = f"the folder has no usable {what} files; save the model with save_pretrained()"
    elif "HFValidationError" in chain:
        why = "it is neither a local folder nor a valid hub id (like gpt2 or org/name)"
    elif "RepositoryNotFoundError" in chain or "GatedRepoError" in chain:
        why = "the hub has no such model (or it is private): check the id"
    elif offline:
        why = (
            "the Hugging Face hub cannot be reached and the model is not in the local cache: "
            "connect once to download it, or pass a local model folder"
        )
    else:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return LaminarError(f"--models '{model}': cannot load its {what}; {why}.")


def load_tokenizer(model: str) -> Any:
    """The model's own tokenizer, from a local folder or the Hugging Face hub."""
    from tasks.hf import AutoTokenizer

    check_local_folder(model)
    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise model_load_error(model, exc, "tokenizer") from exc


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the vocabulary and merges: equal for tokenizers that split text identically."""
    import hashlib

    return hashlib.sha256(tokenizer.backend_tokenizer.model.__getstate__()).hexdigest()


def shape(model: str, hook: str) -> tuple[int, int, int | None, int]:
    """(number of blocks, width d of `hook`'s activations, context length or None, vocabulary
    size), from the model's config: the MLP's hidden width for the MLP's inner hooks, the
    residual width for the rest; the context from n_positions, or max_position_embeddings."""
    from tasks.hf import AutoConfig

    try:
        c = AutoConfig.from_pretrained(model, trust_remote_code=False)
        n_layers = c.num_hidden_layers
    except (OSError, ValueError, AttributeError) as exc:
        raise model_load_error(model, exc, "config") from exc
    d_model = getattr(c, "n_embd", None) or c.hidden_size
    d_mlp = getattr(c, "n_inner", None) or getattr(c, "intermediate_size", None) or 4 * d_model
    n_ctx = getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)
    return n_layers, d_mlp if hook in MLP_WIDE_HOOKS else d_model, n_ctx, int(c.vocab_size)


def check_context(model: str, seq_len: int, n_ctx: int | None) -> None:
    """A window longer than the model's context would fail deep inside extraction: refuse it
    before any work."""
    if n_ctx and seq_len > n_ctx:
        raise LaminarError(
            f"--seq-len {seq_len} is longer than {short_name(model)}'s context of {n_ctx} "
            f"tokens: give --seq-len {n_ctx} or less."
        )


# The hooks inside an MLP that carry its hidden width (the rest carry the residual width):
# GPT-2 and GPT-NeoX have hook_pre and hook_post; a gated MLP (Llama) also hook_pre_linear (the
# up projection; hook_pre is the gate) and its gate's output.
MLP_WIDE_HOOKS = frozenset(
    {
        "mlp.hook_pre",
        "mlp.hook_pre_linear",
        "mlp.hook_post",
        "mlp.in.hook_out",
        "mlp.gate.hook_out",
        "mlp.out.hook_in",
    }
)


def check_architecture(model: str) -> None:
    """A model whose architecture TransformerLens 4's TransformerBridge has no adapter for fails
    here, in one sentence, before any weights are loaded."""
    from tasks.hf import AutoConfig

    try:
        from transformer_lens.factories.architecture_adapter_factory import (
            SUPPORTED_ARCHITECTURES,
        )
        from transformer_lens.model_bridge.sources._hf_format import (
            determine_architecture_from_hf_config,
        )
    except ImportError:
        return
    config = AutoConfig.from_pretrained(model, trust_remote_code=False)
    try:
        arch = determine_architecture_from_hf_config(config)
    except ValueError:  # no supported architecture among those the config names
        arch = (getattr(config, "architectures", None) or [config.model_type])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise unsupported(model, arch)


def unsupported(model: str, arch: str) -> LaminarError:
    return LaminarError(
        f"--models '{model}' is a {arch} model, an architecture TransformerLens 4's "
        "TransformerBridge does not support: pick a causal LM of a supported family (GPT-2, "
        "GPT-NeoX/Pythia, Llama, Mistral, Qwen, Gemma, OPT, ...)."
    )


def load_model(model: str, device: str) -> Any:
    """TransformerLens 4 bridge around the Hugging Face model, in eval mode."""
    from tasks import hf  # noqa: F401 (transformers loaded whole first: tasks/hf.py says why)

    # isort: split
    from transformer_lens.model_bridge import TransformerBridge

    check_local_folder(model)
    check_architecture(model)
    try:
        # Never run code a model repository ships (trust_remote_code); transformers loads
        # safetensors where a model has them.
        bridge = TransformerBridge.boot_transformers(model, device=device, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise model_load_error(model, exc, "weights") from exc
    bridge.eval()
    return bridge


def identity(model: str) -> dict[str, Any]:
    """What provenance records of a model: its id or folder, hub revision, weights fingerprint."""
    local = is_local(model)
    return {
        "model": model,
        "name": short_name(model),
        "source": "local folder" if local else "hugging face hub",
        "folder": str(Path(model).resolve()) if local else None,
        "hub_revision": hub_revision(model),
        "fingerprint": model_fingerprint(model),
    }


def describe(cfg: Config, model: str) -> ModelFacts:
    """Cheap facts about a model, checked before any heavy work: its short name, weight and
    tokenizer fingerprints, and the layers the run will profile (out-of-range layers fail here)."""
    check_local_folder(model)
    warn_if_pickled(model)
    ensure_hub_or_offline([model])
    tokenizer = load_tokenizer(model)
    n_layers, d, n_ctx, vocab = shape(model, cfg.hook)
    check_architecture(model)
    check_context(model, cfg.seq_len, n_ctx)
    return {
        "model": model,
        "name": short_name(model),
        "weights_fingerprint": model_fingerprint(model),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "layers": parse_layer_spec(cfg.layers, n_layers),
        "d": d,
        "vocab": vocab,
    }
