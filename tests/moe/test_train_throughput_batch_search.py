"""The batch search of benchmarks/train_throughput.py (`--batch 0`, `--own-batch`): the largest batch
that fits, found by bisection, with every probe below the answer fitting and every one above it not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import train_throughput as tt  # noqa: E402


@pytest.mark.parametrize("upper", [1, 2, 7, 8, 13])
def test_largest_fitting_finds_the_largest_batch_that_fits(upper):
    for limit in range(0, upper + 2):
        probed = []

        def fits(b, limit=limit):
            probed.append(b)
            return b <= limit
        assert tt.largest_fitting(fits, upper) == min(limit, upper)
        assert all(1 <= b <= upper for b in probed)
        assert len(probed) == len(set(probed)) <= upper.bit_length()  # bisection, never a probe twice


def test_own_batch_and_max_batch_parse():
    args = tt.parse_args(["--own-batch", "--max-batch", "6"])
    assert args.own_batch and args.max_batch == 6 and args.batch == 0
