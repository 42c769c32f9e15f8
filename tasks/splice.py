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

A score is undefined (None, with its reason beside it) where the ablation's effect on the
held-out tokens is within NOISE_SE standard errors of zero, or the wrong way: its denominator
would be noise.

Cost: the clean pass runs once per model and run (`Splicer`, the run's own) and keeps its
next-token log-probs (E, T, vocab; progress.clean_bytes); each layer then costs one ablated pass and
one spliced pass per SAE seed, whole forward passes: TransformerLens 4's start_at_layer still
runs the blocks below the one it starts at (it discards their output), so starting at the
hooked block would save nothing (measured: docs/measures.md)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.runtime import flow_run

from tasks import cache, store
from tasks.config import Config
from tasks.models import load_model
from tasks.precision import matmul_precision
from tasks.records import EvalBatch, FileRecord, Splice
from tasks.sae import files
from tasks.settings import resolve_device

# A score's denominator must clear its own noise: the ablation's effect, averaged over the
# held-out tokens, counts only where it exceeds NOISE_SE standard errors of that mean (the
# per-token paired differences' sd / sqrt(n)), about a 97.7% one-sided test that it is not zero.
# Below that, or the wrong way (the ablation lowering CE), the ratio divides by noise: undefined.
NOISE_SE = 2.0


@dataclass(frozen=True)
class Where:
    """Where an SAE is spliced: the hook, the first spliced position (positions before it keep
    their own activation) and the sequences per forward pass."""

    hook: str
    first: int
    chunk: int


@dataclass
class Clean:
    """The clean model on the held-out windows: next-token log-probs (E, T, vocab), each next
    token's CE (E, T-1) and its mean."""

    logprobs: torch.Tensor
    ce_tokens: torch.Tensor
    ce: float


@dataclass
class Passes:
    """One spliced (or ablated) pass's per-token CE (E, T-1) and KL to the clean model over the
    spliced positions (E, T-first), with their means."""

    ce_tokens: torch.Tensor
    kl_tokens: torch.Tensor

    @property
    def ce(self) -> float:
        return self.ce_tokens.mean().item()

    @property
    def kl(self) -> float:
        return self.kl_tokens.mean().item()


class Splicer:
    """What the splices of one run share on one device in one process: the loaded model, its
    clean pass and the ablated passes, each keyed by everything it depends on. Owned by the run
    (`SPLICERS` holds one run's at a time; the flow releases it when its splices are done), so
    a second run in the same process or on the same Dask worker never reads the first's."""

    def __init__(self, key: tuple[str, ...], bridge: Any) -> None:
        self.key, self.bridge = key, bridge
        self.lock = threading.Lock()  # one Dask worker may splice several layers at once
        self.clean: dict[tuple[str, int], Clean] = {}  # (tokens sha, chunk) ->
        self.ablated: dict[tuple[str, str, int, int], Passes] = {}  # + (hook, first)

    def clean_pass(self, tokens: torch.Tensor, sha: str, chunk: int) -> Clean:
        with self.lock:
            if (sha, chunk) not in self.clean:
                self.clean[(sha, chunk)] = clean_pass(self.bridge, tokens, chunk)
            return self.clean[(sha, chunk)]

    def measure(
        self, sae: torch.nn.Module, tokens: torch.Tensor, sha: str, where: Where
    ) -> dict[str, Any]:
        """The downstream measures of one SAE at `where.hook`, spliced from `where.first` on."""
        clean = self.clean_pass(tokens, sha, where.chunk)
        key = (sha, where.hook, where.first, where.chunk)
        with self.lock:
            if key not in self.ablated:
                self.ablated[key] = spliced_pass(self.bridge, clean, tokens, where, None)
            ablated = self.ablated[key]
        return scores(clean, spliced_pass(self.bridge, clean, tokens, where, sae), ablated)


class SplicerHolder:
    """The process's one Splicer: the asking run's, made on first use; a different run (or
    model, weights, device) replaces it, freeing the model and passes it held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: Splicer | None = None

    def get(self, run: str, model: str, weights_fingerprint: str, device: str) -> Splicer:
        key = (run, model, weights_fingerprint, device)
        with self.lock:
            if self.current is None or self.current.key != key:
                self.current = None  # freed before the next model loads
                self.current = Splicer(key, load_model(model, device))
            return self.current

    def release(self, run: str) -> None:
        """Drop the run's Splicer (the flow calls it when its splices are done)."""
        with self.lock:
            if self.current is not None and self.current.key[0] == run:
                self.current = None


SPLICERS = SplicerHolder()


def splicer_for(run: str, model: str, weights_fingerprint: str, device: str) -> Splicer:
    """SPLICERS.get. The task's body calls this function, never SPLICERS itself: Dask pickles a
    task's function by value, with the globals it names, and the holder's lock cannot travel."""
    return SPLICERS.get(run, model, weights_fingerprint, device)


def release_here(run: str) -> None:
    """Free the run's Splicer in this process (run on each Dask worker by release_splicers)."""
    SPLICERS.release(run)


def release_splicers(pool: Any, run: str) -> None:
    """Free the run's Splicer here and, for a Dask pool, on every worker."""
    release_here(run)
    if pool.remote:
        pool.runner.client.run(release_here, run)


def next_token_ce(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(E, T-1) CE of each next token: logprobs (E, T, vocab), tokens (E, T)."""
    return -logprobs[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)


def kl_per_token(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """(E, T) KL(clean ‖ other) from log-probs (E, T, vocab) of each."""
    return (clean.exp() * (clean - other)).sum(-1)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the vocabulary (torch's, for its numerics); the logits are freed as the
    caller drops them, so a chunk holds two (chunk, T, vocab) buffers only while this runs."""
    return logits.float().log_softmax(-1)


def clean_pass(bridge: Any, tokens: torch.Tensor, chunk: int) -> Clean:
    """The clean log-probs, written chunk by chunk into one (E, T, vocab) tensor: the peak is
    that tensor and one chunk's logits, never a list of chunks and their concatenation."""
    logprobs: torch.Tensor | None = None
    for start in range(0, len(tokens), chunk):
        lp = log_probs(bridge(tokens[start : start + chunk], return_type="logits"))
        if logprobs is None:
            logprobs = lp.new_empty((len(tokens), *lp.shape[1:]))
        logprobs[start : start + len(lp)] = lp
        del lp
    assert logprobs is not None, "no held-out windows"
    ce_tokens = next_token_ce(logprobs, tokens)
    return Clean(logprobs, ce_tokens, ce_tokens.mean().item())


def spliced_pass(
    bridge: Any, clean: Clean, tokens: torch.Tensor, where: Where, sae: torch.nn.Module | None
) -> Passes:
    """The model with positions where.first.. of `where.hook` replaced by the SAE's
    reconstruction (sae None: by zeros): per-token CE and KL to the clean model. One chunk at a
    time holds its log-probs and one more (chunk, T, vocab) buffer for the KL."""
    replace = replacer(sae, where.first)
    ces, kls = [], []
    for start in range(0, len(tokens), where.chunk):
        part = slice(start, start + where.chunk)
        lq = log_probs(
            bridge.run_with_hooks(
                tokens[part],
                fwd_hooks=[(where.hook, lambda act, hook: replace(act))],
                return_type="logits",
            )
        )
        ces.append(next_token_ce(lq, tokens[part]))
        p = clean.logprobs[part]
        diff = lq.neg_().add_(p)  # log p - log q, in lq's buffer
        kls.append(diff.mul_(p.exp()).sum(-1)[:, where.first :])  # KL(clean ‖ spliced)
        del lq, diff
    return Passes(torch.cat(ces), torch.cat(kls))


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


def within_noise(name: str, effect: torch.Tensor) -> str | None:
    """Why a score whose denominator is `effect`'s mean (the ablation's per-token effect) is
    undefined, or None where the mean clears NOISE_SE standard errors above zero."""
    mean = effect.mean().item()
    se = effect.std().item() / effect.numel() ** 0.5 if effect.numel() > 1 else float("inf")
    if mean <= 0:
        return f"the zero ablation did not raise {name} ({mean:+.3g}): nothing to score against"
    if mean <= NOISE_SE * se:
        return (
            f"the zero ablation moved {name} by {mean:.3g}, within its noise "
            f"({NOISE_SE:g} standard errors = {NOISE_SE * se:.3g})"
        )
    return None


def scores(clean: Clean, sae: Passes, ablated: Passes) -> dict[str, Any]:
    """SAELens's two scores from the spliced and the ablated passes; each undefined (None, and
    its reason) where the ablation's effect is within noise or the wrong way (within_noise)."""
    ce_why = within_noise("CE", ablated.ce_tokens - clean.ce_tokens)
    kl_why = within_noise("KL", ablated.kl_tokens)
    return {
        "ce_clean": clean.ce,
        "ce_sae": sae.ce,
        "ce_ablation": ablated.ce,
        "ce_delta": sae.ce - clean.ce,
        "ce_loss_score": None if ce_why else (ablated.ce - sae.ce) / (ablated.ce - clean.ce),
        "ce_loss_score_undefined": ce_why,
        "kl_sae": sae.kl,
        "kl_ablation": ablated.kl,
        "kl_div_score": None if kl_why else (ablated.kl - sae.kl) / ablated.kl,
        "kl_div_score_undefined": kl_why,
    }


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
    sae_model = files.load(folder).to(device)
    hook = f"blocks.{layer}.{cfg.hook}"  # with --saes, the family's own (flows.laminar)
    tokens = torch.from_numpy(store.read_batch(holdout["tokens"]).astype(np.int64)).to(device)
    where = Where(hook, 0 if cfg.keep_first_token else 1, cfg.extract_batch)
    with torch.inference_mode(), matmul_precision("fp32"):
        splicer = splicer_for(str(flow_run.id), model, weights_fingerprint, device)
        out = splicer.measure(sae_model, tokens, holdout["tokens"]["sha256"], where)
    return {
        **out,
        "layer": layer,
        "eval_tokens": int(tokens.numel()),
        "eval_held_out": holdout["held_out"],
        "eval_in_sample": holdout["in_sample"],
        "splice_seconds": time.perf_counter() - start,
    }
