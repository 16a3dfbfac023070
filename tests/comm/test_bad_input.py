"""Bad input to the compressed all-to-all: a clear exception on the faulty call, on every rank, and the
process group still usable afterwards (the header check runs before any payload is sent).

The ranks run in debug mode (`MXA2A_CHECK=always`: the header on every call), the mode in which a bad
argument on one rank is reported on every rank whatever came before; the default "first" is tested in
test_check_policy.py."""

from __future__ import annotations

import os

import pytest
import torch
from comm_testing import assert_same_bits, qdq, reference_exchange
from dist_testing import run_distributed


def _expect(exc_type: type, text: str, fn, what: str) -> None:
    try:
        fn()
    except exc_type as e:
        assert text in str(e), f"{what}: {exc_type.__name__} without {text!r}: {e}"
        return
    except BaseException as e:  # noqa: BLE001 - report the wrong exception with the scenario
        raise AssertionError(f"{what}: expected {exc_type.__name__}({text!r}), got {e!r}") from e
    raise AssertionError(f"{what}: expected {exc_type.__name__}({text!r}), nothing was raised")


def _good_exchange(rank: int, what: str) -> None:
    from mxa2a.comm import all_to_all_single
    x = torch.randn(4, 64) + rank
    out = torch.empty(4, 64)
    all_to_all_single(out, x, wire="mxfp4")
    assert_same_bits(out, reference_exchange(qdq(x, "mxfp4", torch.float32), 4, None, None),
                     f"exchange after {what}")


def _bad_input_body(rank: int, world: int) -> None:
    os.environ["MXA2A_CHECK"] = "always"  # read at the first call of this fresh process
    from mxa2a.comm import all_to_all, all_to_all_single, all_to_all_autograd
    from mxa2a.comm.header import default_check
    from mxa2a.quant.formats import FP8Tensor

    peer_failed = (RuntimeError, "rank(s) [{}] rejected their arguments")
    x = torch.randn(4, 64)
    out = torch.empty(4, 64)

    def a2a(*args, **kw):
        return lambda: all_to_all_single(*args, **kw)

    # (what, faulty rank, its call, exception, text): the faulty rank's call is bad, the others' good.
    local = [
        ("splits not summing to dim 0", 0, a2a(out, x, None, [1, 1]), ValueError,
         "input_split_sizes must sum to dim 0 of input (4 rows), got [1, 1]"),
        ("split list of the wrong length", 1, a2a(out, x, [1, 1, 2], None), ValueError,
         "output_split_sizes must have one entry per rank of the group (2), got 3"),
        ("splits that are not ints", 0, a2a(out, x, None, [2.0, 2.0]), TypeError,
         "input_split_sizes must be None or a list of 2 ints"),
        ("output too small", 0, a2a(torch.empty(3, 64), x, [2, 2], None), ValueError,
         "output_split_sizes must sum to dim 0 of output (3 rows)"),
        ("output not divisible for equal splits", 1, a2a(torch.empty(3, 64), x), ValueError,
         "dim 0 of output (3 rows) must divide equally by the group size 2"),
        ("output rows of another length", 0, a2a(torch.empty(4, 32), x), ValueError,
         "output rows must hold as many elements as input rows"),
        ("integer input (travels raw) into a float output", 1, a2a(out, torch.ones(4, 64, dtype=torch.int32)),
         TypeError, "output must have input's dtype torch.int32"),
        ("raw with another output dtype", 0, a2a(out.bfloat16(), x, wire="raw"), TypeError,
         "output must have input's dtype torch.float32"),
        ("H not a multiple of 32", 1, a2a(torch.empty(4, 48), torch.randn(4, 48)), ValueError,
         "H a multiple of 32, got (4, 48)"),
        ("H not a multiple of 128 on fp8", 0, a2a(out, x, wire="fp8"), ValueError,
         "H a multiple of 128, got (4, 64)"),
        ("1-d input on mxfp4", 0, a2a(torch.empty(64), torch.randn(64)), ValueError,
         "must have shape [N, ..., H]"),
        ("unknown wire", 1, a2a(out, x, wire="fp4"), ValueError, "wire must be one of"),
        ("unknown scale_mode", 1, a2a(out, x, scale_mode="round"), ValueError, "scale_mode must be one of"),
        ("bad chunks", 0, a2a(out, x, chunks=0), ValueError, "chunks must be None or an int >= 1"),
        ("not a tensor", 1, a2a(out, x.tolist()), TypeError,
         "input must be a torch.Tensor or an mxa2a FP8Tensor"),
        ("non-contiguous output", 0, a2a(torch.empty(64, 4).t(), x), ValueError, "output must be contiguous"),
        ("FP8Tensor on the raw wire", 1,
         a2a(out, FP8Tensor(torch.zeros(4, 128, dtype=torch.float8_e4m3fn),
                            torch.zeros(4, 1, dtype=torch.uint8)), wire="raw"),
         TypeError, "FP8Tensor input needs wire 'fp8' or 'mxfp4'"),
        ("list of the wrong length", 0, lambda: all_to_all([out[:2], out[2:]], [x[:2]]), ValueError,
         "input_tensor_list must be a list with one tensor per rank of the group (2), got 1"),
    ]
    assert default_check() == "always"
    for what, faulty, call, exc, text in local:
        if rank == faulty:
            _expect(exc, text, call, what)
        else:
            good = (lambda: all_to_all([out[:2], out[2:]], [x[:2], x[2:]])) if "list" in what \
                else a2a(out, x)
            _expect(peer_failed[0], peer_failed[1].format(faulty), good, what + " (on the other rank)")
        _good_exchange(rank, what)

    # Every rank's call is fine locally, but the ranks disagree: all raise the same ValueError.
    h = 64 if rank == 0 else 128
    s_in = [2, 2]
    s_out = [2, 2] if rank == 0 else [1, 3]  # rank 1 expects 1 row from rank 0, which sends 2
    xr = torch.randn(4, 128)
    raw_dtype = (torch.float32, torch.bfloat16)[rank]
    outr = torch.empty(4, 128)
    mismatched = [
        ("wire", a2a(outr, xr, wire="mxfp4" if rank == 0 else "fp8"),
         "ranks disagree on the wire (by rank: ['mxfp4', 'fp8'])"),
        ("row size", a2a(torch.empty(4, h), torch.randn(4, h)), "ranks disagree on the row_elems"),
        ("scale_mode", a2a(outr, xr, scale_mode=("rceil", "floor")[rank]),
         "ranks disagree on the scale_mode"),
        ("chunks", a2a(outr, xr, chunks=(None, 2)[rank]), "ranks disagree on the chunks"),
        ("raw dtype", a2a(outr.to(raw_dtype), xr.to(raw_dtype), wire="raw"),
         "ranks disagree on the raw dtype"),
        ("split matrix", a2a(outr, xr, s_out, s_in),
         "rank 0 sends 2 rows to rank 1 (its input_split_sizes[1]) but rank 1 expects 1"),
    ]
    for what, call, text in mismatched:
        _expect(ValueError, text, call, f"mismatched {what}")
        _good_exchange(rank, f"mismatched {what}")

    # The autograd entry point validates the same way.
    _expect(TypeError, "x must be a torch.Tensor", lambda: all_to_all_autograd([1.0], None, None),
            "autograd on a list")


def test_bad_input_raises_on_every_rank_and_group_stays_usable():
    run_distributed(_bad_input_body, 2, timeout_s=120, pg_timeout_s=20)


def test_get_codec_rejects_unknown_names():
    from mxa2a.quant.wire import MXFP4Wire, get_codec
    with pytest.raises(ValueError, match="wire must be one of"):
        get_codec("int4")
    with pytest.raises(ValueError, match="scale_mode must be one of"):
        MXFP4Wire("nearest")
    assert get_codec("mxfp4", "floor") == MXFP4Wire("floor")
