"""Shared pieces of the comm tests: split matrices every rank agrees on, the quantize-dequantize reference
of each wire format, and a bitwise comparison. Imported by the test modules and by their spawned ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist

from mxa2a.quant import reference as R

WIRES = ("raw", "bf16", "fp8", "mxfp4")


def split_matrix(pattern: str, world: int, seed: int) -> list[list[int]] | None:
    """S[i][j] = rows rank i sends to rank j, the same on every rank; None means equal splits."""
    if pattern == "equal":
        return None
    if pattern == "uneven":
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 6, (world, world), generator=g).tolist()
    if pattern == "zeros":  # rank 0 sends nothing, rank 1 receives nothing, others send 0..3 rows
        g = torch.Generator().manual_seed(seed)
        s = torch.randint(0, 4, (world, world), generator=g)
        s[0, :] = 0
        s[:, min(1, world - 1)] = 0
        return s.tolist()
    if pattern == "ones":
        return [[1] * world for _ in range(world)]
    if pattern == "empty":
        return [[0] * world for _ in range(world)]
    raise ValueError(pattern)


def my_splits(s: list[list[int]] | None, rank: int, world: int, equal_rows: int) -> tuple:
    """(input rows, output rows, input_split_sizes, output_split_sizes) of `rank` for matrix `s`."""
    if s is None:
        return equal_rows * world, equal_rows * world, None, None
    ins = list(s[rank])
    outs = [s[i][rank] for i in range(world)]
    return sum(ins), sum(outs), ins, outs


def qdq(x: torch.Tensor, wire: str, dtype: torch.dtype, scale_mode: str = "rceil") -> torch.Tensor:
    """What the receiver of `x` must get, bit for bit, per the spec of each wire format."""
    if wire == "raw":
        assert dtype == x.dtype
        return x.clone()
    if wire == "bf16":
        return x.to(torch.bfloat16).to(dtype)
    if wire == "fp8":
        return R.dequantize_fp8(R.quantize_fp8(x), dtype)
    if wire == "mxfp4":
        return R.dequantize_mxfp4(R.quantize_mxfp4(x, scale_mode), dtype)
    raise ValueError(wire)


def reference_exchange(x_sent: torch.Tensor, out_rows: int, out_splits, in_splits,
                       group=None) -> torch.Tensor:
    """torch.distributed's own all_to_all_single of the already quantize-dequantized rows."""
    ref = torch.empty((out_rows, *x_sent.shape[1:]), dtype=x_sent.dtype, device=x_sent.device)
    dist.all_to_all_single(ref, x_sent.contiguous(), out_splits, in_splits, group=group)
    return ref


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{what}: got {got.dtype} {tuple(got.shape)}, want {want.dtype} {tuple(want.shape)}"
    got, want = got.cpu(), want.cpu()
    g, w = got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)
    if not torch.equal(g, w):
        diff = (got.float() - want.float()).abs()
        raise AssertionError(f"{what}: {int((g != w).sum())} bytes differ, max abs diff {diff.max().item()}")


def run_nccl(body, world: int, *args, timeout_s: float = 300.0) -> None:
    """`dist_testing.run_distributed` with one GPU per rank and an NCCL process group."""
    from dist_testing import run_distributed
    run_distributed(body, world, *args, backend="nccl", timeout_s=timeout_s, pg_timeout_s=60.0)
