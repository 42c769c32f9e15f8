"""Tokenize the article and sample the batch: n_seqs windows of seq_len tokens.

One batch serves every model with the same tokenizer (gpt2 and gpt2-large share one), so the
activations of both models are measured on identical tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task

from tasks import cache, paths
from tasks.config import Config, LaminarError
from tasks.models import load_tokenizer
from tasks.records import Batch, Text
from tasks.store import file_record, write_batch


def sample_windows(n_tokens: int, n_seqs: int, seq_len: int, how: str, seed: int) -> np.ndarray:
    """Start offsets of n_seqs non-overlapping windows of seq_len tokens, ascending.

    'random' spreads the slack S = n_tokens - n_seqs*seq_len over the n_seqs+1 gaps: n_seqs
    sorted draws from 0..S (stars and bars) give every non-overlapping placement a chance."""
    slack = n_tokens - n_seqs * seq_len
    if slack < 0:
        raise LaminarError(
            f"the article has {n_tokens} tokens but --n-seqs {n_seqs} x --seq-len {seq_len} "
            f"needs {n_seqs * seq_len}: lower --n-seqs or --seq-len, or pick a longer --url."
        )
    gaps = np.zeros(n_seqs, dtype=np.int64)
    if how == "random":
        gaps = np.sort(np.random.default_rng(seed).integers(0, slack + 1, size=n_seqs))
    return gaps + np.arange(n_seqs, dtype=np.int64) * seq_len


def token_batch(ids: list[int], cfg: Config) -> np.ndarray:
    """(n_seqs, seq_len) int32 batch cut from the token stream."""
    stream = np.asarray(ids, dtype=np.int32)
    starts = sample_windows(len(stream), cfg.n_seqs, cfg.seq_len, cfg.sampling, cfg.seed)
    return np.stack([stream[s : s + cfg.seq_len] for s in starts])


@task(
    name="tokenize",
    task_run_name="tokenize {tokenizer_of}",
    cache_policy=cache.ContentKey(
        fields=("n_seqs", "seq_len", "sampling", "seed"), exclude=("tokenizer_of",)
    ),
)
def tokenize(cfg: Config, text: Text, tokenizer_of: str, tokenizer_fingerprint: str) -> Batch:
    """Tokenize the text with `tokenizer_of`'s tokenizer and persist the sampled batch."""
    tokenizer = load_tokenizer(tokenizer_of)
    ids = tokenizer(Path(text["text"]["path"]).read_text(), add_special_tokens=False, verbose=False)
    batch = token_batch(ids["input_ids"], cfg)
    path = paths.token_batch(cfg, tokenizer_fingerprint, text["text"]["sha256"])
    write_batch(batch, path)
    return {"tokens": file_record(path), "n_article_tokens": len(ids["input_ids"])}
