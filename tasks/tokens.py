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
from tasks.records import Batch, EvalBatch, Text
from tasks.store import file_record, write_batch


def sample_windows(
    lengths: list[int], n_seqs: int, seq_len: int, how: str, seed: int | list[int]
) -> list[tuple[int, int]]:
    """(article, start) of n_seqs non-overlapping windows of seq_len tokens, none crossing from
    one article into the next; in article order, ascending within each.

    'first' takes each article's windows from its start, articles in the given order, until
    n_seqs are taken. 'random' first shares the n_seqs windows among the articles by drawing
    them from all the windows that fit (without replacement, so in proportion to each article's
    room; with one article there is nothing to draw), then places each article's k windows by
    spreading its slack S = n - k*seq_len over the k+1 gaps: k sorted draws from 0..S (stars
    and bars) give every non-overlapping placement a chance."""
    room = [n // seq_len for n in lengths]
    if sum(room) < n_seqs:
        raise LaminarError(too_short(lengths, room, n_seqs, seq_len))
    rng = np.random.default_rng(seed)
    if how == "first":
        take = [min(r, n_seqs - sum(room[:i])) for i, r in enumerate(room)]
        take = [max(t, 0) for t in take]
    elif len(lengths) == 1:
        take = [n_seqs]
    else:
        owner = np.repeat(np.arange(len(lengths)), room)  # the article of each window that fits
        chosen = rng.choice(len(owner), size=n_seqs, replace=False)
        take = np.bincount(owner[chosen], minlength=len(lengths)).tolist()
    out = []
    for i, (n, k) in enumerate(zip(lengths, take, strict=True)):
        gaps = np.zeros(k, dtype=np.int64)
        if how == "random" and k:
            gaps = np.sort(rng.integers(0, n - k * seq_len + 1, size=k))
        out += [(i, int(g) + j * seq_len) for j, g in enumerate(gaps)]
    return out


def too_short(lengths: list[int], room: list[int], n_seqs: int, seq_len: int) -> str:
    if len(lengths) == 1:
        return (
            f"the article has {lengths[0]} tokens but --n-seqs {n_seqs} x --seq-len {seq_len} "
            f"needs {n_seqs * seq_len}: lower --n-seqs or --seq-len, or add articles to --urls."
        )
    return (
        f"the {len(lengths)} articles have {sum(lengths)} tokens ({', '.join(map(str, lengths))}),"
        f" room for {sum(room)} windows of --seq-len {seq_len} that stay inside one article, but "
        f"--n-seqs is {n_seqs}: lower --n-seqs or --seq-len, or add articles to --urls."
    )


def token_batch(streams: list[list[int]], cfg: Config) -> tuple[np.ndarray, list[int]]:
    """(n_seqs, seq_len) int32 batch cut from the articles' token streams, and the number of
    windows taken from each article."""
    starts = training_windows(streams, cfg)
    batch = cut(streams, starts, cfg.seq_len)
    return batch, np.bincount([a for a, _ in starts], minlength=len(streams)).tolist()


def training_windows(streams: list[list[int]], cfg: Config) -> list[tuple[int, int]]:
    lengths = [len(s) for s in streams]
    return sample_windows(lengths, cfg.n_seqs, cfg.seq_len, cfg.sampling, cfg.seed)


def cut(streams: list[list[int]], starts: list[tuple[int, int]], seq_len: int) -> np.ndarray:
    """(len(starts), seq_len) int32: the window at each (article, start)."""
    arrays = [np.asarray(s, dtype=np.int32) for s in streams]
    return np.stack([arrays[a][s : s + seq_len] for a, s in starts])


EVAL_STREAM = 1  # the held-out windows' draws: a stream of their own beside the seed's


def held_out_windows(
    lengths: list[int], taken: list[tuple[int, int]], n: int, seq_len: int, seed: int
) -> list[tuple[int, int]] | None:
    """(article, start) of n windows of seq_len in the stretches the training windows `taken`
    leave free, none overlapping them or each other (seeded, placed as sample_windows places
    windows in an article); None when the free stretches cannot hold n."""
    free = []  # (article, start, end) of each stretch that holds at least one window
    for a, length in enumerate(lengths):
        at = 0
        for s in [*sorted(s for art, s in taken if art == a), length]:
            if s - at >= seq_len:
                free.append((a, at, s))
            at = max(at, s + seq_len)
    try:
        picks = sample_windows(
            [e - s for _, s, e in free], n, seq_len, "random", [seed, EVAL_STREAM]
        )
    except LaminarError:
        return None
    return [(free[i][0], free[i][1] + start) for i, start in picks]


@task(
    name="tokenize",
    task_run_name="tokenize {tokenizer_of}",
    cache_policy=cache.ContentKey(
        fields=("n_seqs", "seq_len", "sampling", "seed"), exclude=("tokenizer_of",)
    ),
)
def tokenize(
    cfg: Config, texts: list[Text], tokenizer_of: str, tokenizer_fingerprint: str
) -> Batch:
    """Tokenize each article's text with `tokenizer_of`'s tokenizer and persist the sampled
    batch."""
    streams = article_streams(texts, tokenizer_of)
    batch, windows = token_batch(streams, cfg)
    path = paths.token_batch(cfg, tokenizer_fingerprint, [t["text"]["sha256"] for t in texts])
    write_batch(batch, path)
    return {
        "tokens": file_record(path),
        "n_article_tokens": sum(map(len, streams)),
        "articles": [
            {"tokens": len(s), "windows": w} for s, w in zip(streams, windows, strict=True)
        ],
    }


def article_streams(texts: list[Text], tokenizer_of: str) -> list[list[int]]:
    """Each article's text as token ids, with `tokenizer_of`'s tokenizer."""
    tokenizer = load_tokenizer(tokenizer_of)
    return [
        tokenizer(Path(t["text"]["path"]).read_text(), add_special_tokens=False, verbose=False)[
            "input_ids"
        ]
        for t in texts
    ]


@task(
    name="holdout",
    task_run_name="holdout {tokenizer_of}",
    cache_policy=cache.ContentKey(
        fields=("n_seqs", "seq_len", "sampling", "seed", "eval_seqs", "save_saes", "saes"),
        exclude=("tokenizer_of",),
    ),
)
def holdout(
    cfg: Config, texts: list[Text], tokenizer_of: str, tokenizer_fingerprint: str
) -> EvalBatch:
    """The held-out windows the SAEs are spliced in on (Config.n_eval_seqs of them): where the
    training windows leave room, disjoint from them; else the first training windows, marked
    in-sample."""
    streams = article_streams(texts, tokenizer_of)
    taken = training_windows(streams, cfg)
    n = cfg.n_eval_seqs
    starts = held_out_windows([len(s) for s in streams], taken, n, cfg.seq_len, cfg.seed)
    in_sample = starts is None
    if starts is None:
        starts = taken[:n]
    path = paths.token_batch(cfg, tokenizer_fingerprint, [t["text"]["sha256"] for t in texts])
    path = path.with_name(f"{path.stem}-eval{len(starts)}{'-in' if in_sample else ''}.parquet")
    write_batch(cut(streams, starts, cfg.seq_len), path)
    return {
        "tokens": file_record(path),
        "in_sample": in_sample,
        "windows": [list(w) for w in starts],
        "train_windows": [list(w) for w in taken],
    }
