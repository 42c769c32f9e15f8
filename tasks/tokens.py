"""Tokenize the article and sample the batch: n_seqs windows of seq_len tokens.

One batch serves every model with the same tokenizer (gpt2 and gpt2-large share one), so the
activations of both models are measured on identical tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task

from tasks import cache, paths
from tasks.config import Config
from tasks.models import load_tokenizer
from tasks.records import Batch, EvalBatch, Text
from tasks.settings import LaminarError
from tasks.store import file_record, read_batch, write_batch


def layout(lengths: list[int], seq_len: int, how: str, seed: int) -> list[tuple[int, int]]:
    """Every window of seq_len that fits in the articles, as one non-overlapping layout of
    (article, start), none crossing from one article into the next, in the order they are
    handed out: the training windows first, then the held-out ones (held_out_windows).

    Article a holds k = n_a // seq_len windows. 'first' starts them at 0, seq_len, … and hands
    them out in article order (the course's cut first). 'random' spreads each article's slack
    S = n_a - k*seq_len (< seq_len) over its k+1 gaps (k sorted draws from 0..S, stars and
    bars), then hands the windows of all articles out in a seeded random order: any n of them
    are a uniform draw of n slots, shared among the articles in proportion to their room."""
    rng = np.random.default_rng(seed)
    slots = []
    for article, n in enumerate(lengths):
        k = n // seq_len
        gaps = np.zeros(k, dtype=np.int64)
        if how == "random" and k:
            gaps = np.sort(rng.integers(0, n - k * seq_len + 1, size=k))
        slots += [(article, int(g) + j * seq_len) for j, g in enumerate(gaps)]
    if how == "random":
        slots = [slots[i] for i in rng.permutation(len(slots))]
    return slots


def sample_windows(
    lengths: list[int], n_seqs: int, seq_len: int, how: str, seed: int
) -> list[tuple[int, int]]:
    """(article, start) of the n_seqs training windows: the layout's first n_seqs, in article
    order, ascending within each."""
    slots = layout(lengths, seq_len, how, seed)
    if len(slots) < n_seqs:
        raise LaminarError(too_short(lengths, [n // seq_len for n in lengths], n_seqs, seq_len))
    return sorted(slots[:n_seqs])


def held_out_windows(
    lengths: list[int], n_seqs: int, n_eval: int, seq_len: int, how: str, seed: int
) -> list[tuple[int, int, bool]]:
    """(article, start, held out?) of n_eval evaluation windows: the layout's next windows
    after the n_seqs training ones, so disjoint from every training window, as many as fit;
    the rest (held out? False: in-sample) are training windows, the first handed out. Depends
    on n_eval only through how many are taken: the training windows never move with it. Past
    every window the articles hold (held-out and training ones), fewer than n_eval come back."""
    slots = layout(lengths, seq_len, how, seed)
    free = sorted(slots[n_seqs : n_seqs + n_eval])
    reused = sorted(slots[: min(n_eval - len(free), n_seqs)])  # never more than there are
    return [(a, s, True) for a, s in free] + [(a, s, False) for a, s in reused]


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
    batch, and the articles' whole token streams (one row, article after article) that the
    held-out windows are cut from (`holdout`)."""
    streams = article_streams(texts, tokenizer_of)
    batch, windows = token_batch(streams, cfg)
    path = paths.token_batch(cfg, tokenizer_fingerprint, [t["text"]["sha256"] for t in texts])
    write_batch(batch, path)
    whole = path.with_name(f"{path.stem}-streams.parquet")
    write_batch(np.concatenate([np.asarray(s, dtype=np.int32) for s in streams])[None], whole)
    return {
        "tokens": file_record(path),
        "streams": file_record(whole),
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


def read_streams(tokens: Batch) -> list[list[int]]:
    """The articles' token streams that `tokenize` saved, split at the articles' lengths."""
    whole = read_batch(tokens["streams"])[0].tolist()
    ends = np.cumsum([a["tokens"] for a in tokens["articles"]]).tolist()
    return [whole[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


@task(
    name="holdout",
    task_run_name="holdout {tokenizer_of}",
    cache_policy=cache.ContentKey(
        fields=("n_seqs", "seq_len", "sampling", "seed", "eval_seqs", "save_saes", "saes"),
        exclude=("tokenizer_of",),
    ),
)
def holdout(cfg: Config, tokens: Batch, tokenizer_of: str) -> EvalBatch:
    """The Config.n_eval_seqs windows the SAEs are spliced in on, cut from the streams of the
    `tokenize` record: the layout's windows after the training ones (disjoint from them), as
    many as fit; the rest in-sample (training windows), counted and marked."""
    streams = read_streams(tokens)
    lengths = [len(s) for s in streams]
    windows = held_out_windows(
        lengths, cfg.n_seqs, cfg.n_eval_seqs, cfg.seq_len, cfg.sampling, cfg.seed
    )
    held = sum(w[2] for w in windows)
    path = Path(tokens["tokens"]["path"])
    path = path.with_name(f"{path.stem}-eval{held}+{len(windows) - held}.parquet")
    write_batch(cut(streams, [(a, s) for a, s, _ in windows], cfg.seq_len), path)
    return {
        "tokens": file_record(path),
        "held_out": held,
        "in_sample": len(windows) - held,
        "windows": [[a, s, int(h)] for a, s, h in windows],
        "train_windows": [list(w) for w in training_windows(streams, cfg)],
    }
