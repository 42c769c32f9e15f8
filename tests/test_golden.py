"""Training and measuring give, bit for bit, the golden numbers recorded in tests/data (see
tests/golden.py): the loss curve and the SAE's weights in every case, and every metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden import CASES, GOLDEN, measure


@pytest.mark.parametrize("case", sorted(CASES))
def test_numbers_are_the_golden_ones(case: str, tmp_path: Path) -> None:
    want = json.loads(GOLDEN.read_text())[case]
    got = measure(case, tmp_path)
    assert got["weights_sha256"] == want["weights_sha256"]
    assert got["loss_curve"] == want["loss_curve"]
    assert got == want
