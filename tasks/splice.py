"""Splice: what an SAE costs the model. The layer's hook activation is replaced by the SAE's
reconstruction (and, for the baseline, by zeros) on held-out windows, the model runs on, and
its next-token predictions are compared with the clean model's, as SAELens's evals do:

    ce_loss_score = (CE_ablation - CE_sae) / (CE_ablation - CE_clean)   1: costless, 0: as bad
    kl_div_score  = (KL_ablation - KL_sae) / KL_ablation                 as zeroing the hook
    KL = mean over tokens of KL(clean ‖ spliced) over the next-token distribution

CE is the model's loss on every next token of each window (position t predicts token t+1),
as Hugging Face's `labels=input_ids` computes it. The SAE replaces exactly the positions it was
trained on: with position 0 dropped from training (the default) position 0 keeps its own
activation, and KL is the mean over the spliced positions.

Cost: the clean pass runs once per model and process and keeps its next-token log-probs
(E, T, vocab); each layer then costs one ablated pass and one spliced pass per SAE seed, whole
forward passes: TransformerLens 4's start_at_layer still runs the blocks below the one it
starts at (it discards their output), so starting at the hooked block would save nothing
(measured: docs/measures.md)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task

from tasks import cache, saelens, store
from tasks.config import Config, resolve_device
from tasks.models import load_model
from tasks.precision import matmul_precision
from tasks.records import EvalBatch, FileRecord, Splice


@dataclass
class Clean:
    """The clean model on the held-out windows: log-probs (E, T, vocab) and the mean CE."""

    logprobs: torch.Tensor
    ce: float


_LOCK = threading.Lock()
_MODEL: dict[str, Any] = {}  # (model, device) -> its bridge: one model kept per process
_CLEAN: dict[str, Clean] = {}  # (model, weights, tokens, device) -> the clean pass
_ABLATED: dict[str, tuple[float, float]] = {}  # ... + hook -> (CE, KL) with the hook zeroed


def bridge_for(model: str, weights_fingerprint: str, device: str) -> Any:
    """The loaded model, kept for the next layer's splice (a model loads in seconds to a
    minute; a run splices every layer of it in turn)."""
    key = f"{model}|{weights_fingerprint}|{device}"
    if key not in _MODEL:
        _MODEL.clear()
        _CLEAN.clear()
        _MODEL[key] = load_model(model, device)
    return _MODEL[key]


def next_token_ce(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(E, T-1) CE of each next token: logprobs (E, T, vocab), tokens (E, T)."""
    return -logprobs[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)


def kl_per_token(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """(E, T) KL(clean ‖ other) from log-probs (E, T, vocab) of each."""
    return (clean.exp() * (clean - other)).sum(-1)


def clean_pass(bridge: Any, tokens: torch.Tensor, chunk: int) -> Clean:
    logprobs = [
        bridge(tokens[start : start + chunk], return_type="logits").float().log_softmax(-1)
        for start in range(0, len(tokens), chunk)
    ]
    lp = torch.cat(logprobs)
    return Clean(lp, next_token_ce(lp, tokens).mean().item())


def spliced_pass(
    bridge: Any, clean: Clean, tokens: torch.Tensor, hook: str, replace: Any, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, T-1) CE and (E, T) KL to the clean model, with `replace(act)` at `hook`."""
    ces, kls = [], []
    for start in range(0, len(tokens), chunk):
        part = slice(start, start + chunk)
        logits = bridge.run_with_hooks(
            tokens[part], fwd_hooks=[(hook, lambda act, hook: replace(act))], return_type="logits"
        )
        lq = logits.float().log_softmax(-1)
        ces.append(next_token_ce(lq, tokens[part]))
        kls.append(kl_per_token(clean.logprobs[part], lq))
    return torch.cat(ces), torch.cat(kls)


def replacer(model: torch.nn.Module | None, first: int) -> Any:
    """The hook function: positions `first`.. of the activation (E, T, d) replaced by the SAE's
    reconstruction (model None: by zeros), positions before them kept."""

    def replace(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        x = act[:, first:, :]
        if model is None:
            out[:, first:, :] = 0
        else:
            x_hat, _ = model(x.reshape(-1, act.shape[-1]).float())
            out[:, first:, :] = x_hat.reshape(x.shape).to(act.dtype)
        return out

    return replace


def scores(clean_ce: float, sae: tuple[float, float], ablated: tuple[float, float]) -> dict:
    """SAELens's two scores from the (CE, KL) of the spliced and the ablated model; None where
    the ablation changes nothing (the score is undefined there)."""
    (ce_sae, kl_sae), (ce_abl, kl_abl) = sae, ablated
    return {
        "ce_clean": clean_ce,
        "ce_sae": ce_sae,
        "ce_ablation": ce_abl,
        "ce_delta": ce_sae - clean_ce,
        "ce_loss_score": (ce_abl - ce_sae) / (ce_abl - clean_ce) if ce_abl != clean_ce else None,
        "kl_sae": kl_sae,
        "kl_ablation": kl_abl,
        "kl_div_score": (kl_abl - kl_sae) / kl_abl if kl_abl > 0 else None,
    }


def measure(
    bridge: Any, model: torch.nn.Module, tokens: torch.Tensor, hook: str, **kw: Any
) -> dict[str, Any]:
    """The downstream measures of one SAE (`model`) at `hook`; kw: first (the first spliced
    position), chunk (sequences per pass), key (of the clean pass's cache entry)."""
    first, chunk, key = kw["first"], kw["chunk"], kw["key"]
    with _LOCK:
        if key not in _CLEAN:
            _CLEAN[key] = clean_pass(bridge, tokens, chunk)
    clean = _CLEAN[key]

    def run(sae_model: torch.nn.Module | None) -> tuple[float, float]:
        ce, kl = spliced_pass(bridge, clean, tokens, hook, replacer(sae_model, first), chunk)
        return ce.mean().item(), kl[:, first:].mean().item()

    if (ablation_key := f"{key}|{hook}") not in _ABLATED:
        _ABLATED[ablation_key] = run(None)
    return scores(clean.ce, run(model), _ABLATED[ablation_key])


@task(
    name="splice",
    task_run_name="splice {label}",
    cache_policy=cache.ContentKey(
        fields=("keep_first_token", "device", "extract_batch"), exclude=("model", "label")
    ),
    retries=0,  # deterministic: a retry would fail the same way
)
def splice_sae(
    cfg: Config,
    model: str,
    weights_fingerprint: str,
    layer: int,
    sae_files: list[FileRecord],
    holdout: EvalBatch,
    label: str,
) -> Splice:
    """The downstream measures of one layer's SAE (its files `sae_files`) on the held-out
    windows `holdout`."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    folder = Path(sae_files[0]["path"]).parent
    sae_model = saelens.load(folder).to(device)
    hook = f"blocks.{layer}.{cfg.hook}"  # with --saes, the family's own (flows.laminar)
    tokens = torch.from_numpy(store.read_batch(holdout["tokens"]).astype(np.int64)).to(device)
    sha = holdout["tokens"]["sha256"]
    key = f"{model}|{weights_fingerprint}|{sha}|{device}"
    with torch.inference_mode(), matmul_precision("fp32"):
        bridge = bridge_for(model, weights_fingerprint, device)
        first = 0 if cfg.keep_first_token else 1
        chunk = cfg.extract_batch
        out = measure(bridge, sae_model, tokens, hook, first=first, chunk=chunk, key=key)
    return {
        **out,
        "layer": layer,
        "eval_tokens": int(tokens.numel()),
        "eval_in_sample": holdout["in_sample"],
        "splice_seconds": time.perf_counter() - start,
    }
