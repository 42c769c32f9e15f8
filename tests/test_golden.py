"""Training and measuring give, bit for bit, the golden numbers recorded in tests/data (see
tests/golden.py): the loss curve and the SAE's weights in every case, and every metric, on each
platform a record was made on; on another, every number within the tolerance the recorded
platforms stay within of each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden import CASES, GOLDEN, differences, measure, platform

RECORDS: dict[str, dict] = json.loads(GOLDEN.read_text())


def precision(case: str) -> str:
    return CASES[case][0].get("precision", "fp32")


@pytest.mark.parametrize("case", sorted(CASES))
def test_numbers_are_the_golden_ones(case: str, tmp_path: Path) -> None:
    check(case, tmp_path, platform())


def test_on_an_unrecorded_platform_the_numbers_are_within_tolerance(tmp_path: Path) -> None:
    check("streamed_bf16", tmp_path, "a CPU with no record")


def check(case: str, folder: Path, here: str) -> None:
    got = measure(case, folder)
    if here in RECORDS:
        want = RECORDS[here][case]
        assert got["weights_sha256"] == want["weights_sha256"]
        assert got["loss_curve"] == want["loss_curve"]
        assert got == want
    else:  # no bits recorded here: the numbers of the first platform recorded, within tolerance
        reference = next(iter(RECORDS))
        assert not differences(got, RECORDS[reference][case], precision(case)), reference


def test_the_recorded_platforms_agree_within_the_tolerance() -> None:
    """What an unrecorded platform is held to holds between the recorded ones, and the bits
    differ between them (else one record would do)."""
    assert len(RECORDS) >= 2, list(RECORDS)
    first, *others = RECORDS.values()
    for other in others:
        for case in CASES:
            assert not differences(other[case], first[case], precision(case)), case
        assert any(other[c]["weights_sha256"] != first[c]["weights_sha256"] for c in CASES)


def test_a_number_off_by_more_than_the_tolerance_is_a_difference() -> None:
    want = next(iter(RECORDS.values()))["full_fp32"]
    loss = float(want["final_loss"])
    near = {**want, "final_loss": repr(loss * (1 + 2e-6))}
    far = {**want, "final_loss": repr(loss * (1 + 5e-5)), "k": want["k"] + 1}
    assert differences(near, want, "fp32") == []
    assert [d.split(":")[0] for d in differences(far, want, "fp32")] == ["final_loss", "k"]
    assert differences(far, want, "bf16") == [f"k: {want['k'] + 1} != {want['k']}"]
