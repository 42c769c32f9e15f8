"""Tokenize and sample: real GPT-2 ids, seeded non-overlapping windows, a clear error when the
article is too short."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import gpt2_tokenizer

from tasks.config import Config, LaminarError
from tasks.models import tokenizer_fingerprint
from tasks.store import file_record, read_batch, write_batch
from tasks.tokens import sample_windows, token_batch


def test_real_gpt2_ids(tokenizer_dir: Path) -> None:
    tok = gpt2_tokenizer(tokenizer_dir)
    assert tok("Hello world LED", add_special_tokens=False)["input_ids"] == [15496, 995, 12365]


def test_fingerprint_equal_for_same_vocab(tokenizer_dir: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer_fingerprint(saved) == tokenizer_fingerprint(gpt2_tokenizer(tokenizer_dir))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_windows_are_seeded_and_disjoint(seed: int) -> None:
    starts = sample_windows(5000, 10, 300, "random", seed)
    assert np.array_equal(starts, sample_windows(5000, 10, 300, "random", seed))
    assert (np.diff(starts) >= 300).all() and starts[0] >= 0 and starts[-1] + 300 <= 5000


def test_seeds_differ_and_first_is_the_course_cut() -> None:
    assert not np.array_equal(
        sample_windows(5000, 10, 300, "random", 0), sample_windows(5000, 10, 300, "random", 1)
    )
    assert sample_windows(5000, 3, 100, "first", 0).tolist() == [0, 100, 200]


def test_exact_fit_has_one_placement() -> None:
    assert sample_windows(40, 4, 10, "random", 3).tolist() == [0, 10, 20, 30]


def test_batch_rows_are_contiguous_token_runs() -> None:
    ids = list(range(1000, 3000))
    batch = token_batch(ids, Config(n_seqs=4, seq_len=50, seed=5))
    assert batch.shape == (4, 50)
    for row in batch:
        assert np.array_equal(row, np.arange(row[0], row[0] + 50))


def test_too_few_tokens_gives_both_numbers() -> None:
    with pytest.raises(LaminarError, match=r"has 999 tokens .* needs 1000"):
        sample_windows(999, 10, 100, "first", 0)


def test_batch_file_round_trip(tmp_path: Path) -> None:
    batch = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_batch(batch, tmp_path / "b.parquet")
    assert np.array_equal(read_batch(file_record(tmp_path / "b.parquet")), batch)
