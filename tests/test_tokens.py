"""Tokenize and sample: real GPT-2 ids, seeded non-overlapping windows, a clear error when the
article is too short."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import gpt2_tokenizer

from tasks.config import Config
from tasks.models import tokenizer_fingerprint
from tasks.settings import LaminarError
from tasks.store import file_record, read_batch, write_batch
from tasks.tokens import held_out_windows, sample_windows, token_batch


def test_real_gpt2_ids(tokenizer_dir: Path) -> None:
    tok = gpt2_tokenizer(tokenizer_dir)
    assert tok("Hello world LED", add_special_tokens=False)["input_ids"] == [15496, 995, 12365]


def test_the_repository_carries_the_tokenizer_files(tokenizer_dir: Path) -> None:
    """The files are the ones tests/data/gpt2-tokenizer/README.md names, byte for byte."""
    import hashlib
    import re

    readme = (tokenizer_dir / "README.md").read_text()
    named = dict(re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", readme, re.M))
    assert sorted(named) == ["merges.txt", "vocab.json"]
    for name, digest in named.items():
        assert hashlib.sha256((tokenizer_dir / name).read_bytes()).hexdigest() == digest, name
    assert (tokenizer_dir / "LICENSE").read_text().startswith("Modified MIT License")


def test_fingerprint_equal_for_same_vocab(tokenizer_dir: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer_fingerprint(saved) == tokenizer_fingerprint(gpt2_tokenizer(tokenizer_dir))


def starts(n: int, n_seqs: int, seq_len: int, how: str, seed: int) -> np.ndarray:
    """Window starts in one article of n tokens."""
    windows = sample_windows([n], n_seqs, seq_len, how, seed)
    assert {a for a, _ in windows} <= {0}
    return np.array([s for _, s in windows])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_windows_are_seeded_and_disjoint(seed: int) -> None:
    got = starts(5000, 10, 300, "random", seed)
    assert np.array_equal(got, starts(5000, 10, 300, "random", seed))
    assert (np.diff(got) >= 300).all() and got[0] >= 0 and got[-1] + 300 <= 5000


def test_one_article_gives_recorded_windows() -> None:
    # Recorded with the layout sampler (tasks.tokens.layout): a user's token batches (and every
    # cache keyed on them) stay the same from one version to the next.
    assert starts(5000, 10, 300, "random", 0).tolist() == [
        308, 615, 935, 1254, 1561, 1901, 2828, 3130, 3446, 3763
    ]  # fmt: skip
    assert starts(12345, 10, 1024, "random", 0).tolist() == [
        0, 2052, 3082, 4111, 6173, 7204, 8229, 9263, 10289, 11316
    ]  # fmt: skip


def test_seeds_differ_and_first_is_the_course_cut() -> None:
    assert not np.array_equal(
        starts(5000, 10, 300, "random", 0), starts(5000, 10, 300, "random", 1)
    )
    assert starts(5000, 3, 100, "first", 0).tolist() == [0, 100, 200]


def test_exact_fit_has_one_placement() -> None:
    assert starts(40, 4, 10, "random", 3).tolist() == [0, 10, 20, 30]


@pytest.mark.parametrize("seed", range(20))
def test_windows_never_cross_an_article_boundary(seed: int) -> None:
    lengths = [250, 1000, 99, 730]  # room for 2, 10, 0 and 7 windows of 100
    windows = sample_windows(lengths, 15, 100, "random", seed)
    assert len(windows) == 15 and windows == sample_windows(lengths, 15, 100, "random", seed)
    for a in range(4):
        mine = sorted(s for i, s in windows if i == a)
        assert all(s >= 0 and s + 100 <= lengths[a] for s in mine)
        assert (np.diff(mine) >= 100).all()
    assert not any(i == 2 for i, _ in windows)  # 99 tokens hold no window


def test_random_shares_follow_each_articles_room() -> None:
    # Articles with room for 10 and 30 windows: drawn without replacement from all 40, the
    # second article's share of 20 windows is hypergeometric with mean 15.
    shares = [
        sum(i == 1 for i, _ in sample_windows([1000, 3000], 20, 100, "random", s))
        for s in range(300)
    ]
    assert 14.5 < np.mean(shares) < 15.5 and min(shares) >= 10


def test_first_takes_articles_in_order() -> None:
    windows = sample_windows([250, 1000, 730], 5, 100, "first", 0)
    assert windows == [(0, 0), (0, 100), (1, 0), (1, 100), (1, 200)]


def test_batch_rows_are_contiguous_token_runs() -> None:
    streams = [list(range(1000, 3000)), list(range(5000, 5120))]
    batch, taken = token_batch(streams, Config(n_seqs=5, seq_len=50, seed=5))
    assert batch.shape == (5, 50) and sum(taken) == 5
    for row in batch:
        assert np.array_equal(row, np.arange(row[0], row[0] + 50))
        assert row[0] >= 5000 or row[-1] < 3000  # no window runs from one article into the next


def test_too_few_tokens_gives_both_numbers() -> None:
    with pytest.raises(LaminarError, match=r"has 999 tokens .* needs 1000"):
        sample_windows([999], 10, 100, "first", 0)
    with pytest.raises(LaminarError) as e:
        sample_windows([999, 150], 11, 100, "random", 0)
    assert str(e.value) == (
        "the 2 articles have 1149 tokens (999, 150), room for 10 windows of --seq-len 100 that "
        "stay inside one article, but --n-seqs is 11: lower --n-seqs or --seq-len, or add "
        "articles to --urls."
    )


def test_batch_file_round_trip(tmp_path: Path) -> None:
    batch = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_batch(batch, tmp_path / "b.parquet")
    assert np.array_equal(read_batch(file_record(tmp_path / "b.parquet")), batch)


def tokens_of(windows: list[tuple[int, int]] | list[tuple[int, int, bool]], n: int) -> set:
    return {(w[0], t) for w in windows for t in range(w[1], w[1] + n)}


@pytest.mark.parametrize("how", ["random", "first"])
def test_held_out_windows_are_held_out_for_every_seed_where_the_text_has_room(how: str) -> None:
    """A 14,857-token article (a Wikipedia-shaped page's size) holds 14 windows of 1024: the
    defaults' 10 training and 2 held-out windows fit, so for every seed both held-out windows
    are disjoint from every training window (the old gap sampler fell back to in-sample for
    163 of these 200 seeds)."""
    for seed in range(200 if how == "random" else 1):
        train = sample_windows([14_857], 10, 1024, how, seed)
        held = held_out_windows([14_857], 10, 2, 1024, how, seed)
        assert len(held) == 2 and all(h for _, _, h in held), seed
        assert not tokens_of(train, 1024) & tokens_of(held, 1024), seed
        assert len(tokens_of(held, 1024)) == 2 * 1024  # and from each other


@pytest.mark.parametrize("seed", range(10))
def test_as_many_held_out_windows_as_fit_the_rest_in_sample_and_training_never_moves(
    seed: int,
) -> None:
    lengths = [250, 1000, 99, 730]  # room for 2, 10, 0 and 7 windows of 100: 19 in all
    train = sample_windows(lengths, 15, 100, "random", seed)
    held = held_out_windows(lengths, 15, 6, 100, "random", seed)
    out = [(a, s) for a, s, h in held if h]
    assert len(out) == 4  # 19 - 15 fit beside the training windows
    assert not tokens_of(train, 100) & tokens_of(out, 100)
    assert {(a, s) for a, s, h in held if not h} <= set(train)  # the 2 others: in-sample
    # A larger count adds held-out windows and keeps the smaller count's (the training windows
    # take no argument for it at all): the layout hands them out in one fixed order.
    nested = [
        {w for w in held_out_windows(lengths, 15, n, 100, "random", seed) if w[2]}
        for n in (1, 3, 30)
    ]
    assert nested[0] < nested[1] < nested[2] and len(nested[2]) == 4
    assert held == held_out_windows(lengths, 15, 6, 100, "random", seed)  # seeded


def test_never_more_windows_than_the_articles_hold() -> None:
    held = held_out_windows([1000], 6, 200, 100, "random", 0)  # 10 windows fit: 6 train
    assert [h for _, _, h in held] == [True] * 4 + [False] * 6
    assert len({(a, s) for a, s, _ in held}) == 10  # each window once


def test_a_12k_article_holds_one_held_out_window_beside_the_training_ones() -> None:
    held = held_out_windows([12_000], 10, 2, 1024, "random", 0)  # 11 windows fit
    assert [h for _, _, h in held] == [True, False]
    assert held_out_windows([140], 3, 1, 32, "first", 0) == [(0, 96, True)]
    assert held_out_windows([100], 3, 1, 32, "first", 0) == [(0, 0, False)]  # no room
