"""FP8 tensors (E4M3 data + 1x128 UE8M0 tile scales) in and out of the compressed all-to-all.

On the MXFP4 wire they are converted directly (`fp8_to_mxfp4` before, `mxfp4_to_fp8` after the exchange);
the expected result is the spec's two-step path through exact fp32 values, which the conversions must
equal bit for bit. On the FP8 wire an FP8 tensor travels as its own bytes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from comm_testing import assert_same_bits, my_splits, reference_exchange, run_nccl, split_matrix
from dist_testing import run_distributed

from mxa2a.quant import reference as R

F32 = torch.float32


def _exchange_fp8(t, n_out: int, outs, ins):
    data = torch.empty((n_out, *t.data.shape[1:]), dtype=torch.uint8, device=t.data.device)
    scales = torch.empty((n_out, *t.scales.shape[1:]), dtype=torch.uint8, device=t.data.device)
    dist.all_to_all_single(data, t.data.view(torch.uint8).contiguous(), outs, ins)
    dist.all_to_all_single(scales, t.scales.contiguous(), outs, ins)
    return data, scales


def _fp8_body(rank: int, world: int, seed: int, device: str = "cpu") -> None:
    """References are computed on the CPU; only the exchanges run on `device`."""
    from mxa2a.comm import all_to_all, all_to_all_single
    from mxa2a.quant.formats import FP8Tensor

    def fp8_empty(n, rest):
        return FP8Tensor(torch.zeros((n, *rest), dtype=torch.float8_e4m3fn, device=device),
                         torch.zeros((n, *rest[:-1], rest[-1] // 128), dtype=torch.uint8, device=device))

    def dev(t):
        return FP8Tensor(t.data.to(device), t.scales.to(device)) if isinstance(t, FP8Tensor) else t.to(device)

    # (input kind, wire, output kind): "fp8" = FP8Tensor, else a float dtype
    combos = [("fp8", "mxfp4", F32), ("fp8", "mxfp4", torch.bfloat16), ("fp8", "mxfp4", "fp8"),
              (F32, "mxfp4", "fp8"), ("fp8", "fp8", "fp8"), ("fp8", "fp8", F32),
              (torch.bfloat16, "fp8", "fp8")]
    for i, (kin, wire, kout) in enumerate(combos):
        for pattern, chunks, rest in (("uneven", None, (256,)), ("zeros", 2, (2, 128))):
            what = f"{kin} -> {wire} -> {kout}, {pattern}, chunks={chunks}, rank {rank}, seed {seed}"
            s = split_matrix(pattern, world, seed + i)
            n_in, n_out, ins, outs = my_splits(s, rank, world, equal_rows=2)
            g = torch.Generator().manual_seed(seed * 13 + i * 101 + rank)
            x = torch.randn((n_in, *rest), generator=g) * 2.0 ** (8 * rank - 4)
            q = R.quantize_fp8(x) if kin == "fp8" else None
            src = q if q is not None else x.to(kin)
            out = fp8_empty(n_out, rest) if kout == "fp8" else torch.empty((n_out, *rest), dtype=kout,
                                                                            device=device)
            all_to_all_single(out, dev(src), outs, ins, wire=wire, chunks=chunks)

            # The values on the wire, then what the receiver makes of them (two-step spec paths).
            exact = R.dequantize_fp8(q, F32) if q is not None else src.float()
            if wire == "mxfp4":
                sent = R.dequantize_mxfp4(R.quantize_mxfp4(exact, "rceil"), F32)
            else:
                sent = exact if q is not None else R.dequantize_fp8(R.quantize_fp8(src), F32)
            if kout == "fp8":
                if wire == "fp8":  # the wire's FP8 bytes are copied out: the sender's FP8 tensor
                    # (quantize_fp8 of a dequantized FP8 tensor is not always the same tensor again)
                    want_q = q if q is not None else R.quantize_fp8(src)
                else:
                    want_q = R.quantize_fp8(sent)
                data, scales = _exchange_fp8(dev(want_q), n_out, outs, ins)
                assert_same_bits(out.data.view(torch.uint8), data, what + " (data)")
                assert_same_bits(out.scales, scales, what + " (scales)")
            else:
                assert_same_bits(out, reference_exchange(dev(sent.to(kout)), n_out, outs, ins), what)

    # The list variant with FP8 tensors in and out.
    s = split_matrix("uneven", world, seed)
    g = torch.Generator().manual_seed(seed + rank)
    inputs = [R.quantize_fp8(torch.randn(s[rank][j], 128, generator=g)) for j in range(world)]
    outputs = [fp8_empty(s[j][rank], (128,)) for j in range(world)]
    all_to_all(outputs, [dev(t) for t in inputs], wire="mxfp4")
    sent = torch.cat([R.dequantize_mxfp4(R.quantize_mxfp4(R.dequantize_fp8(t, F32), "rceil"), F32)
                      for t in inputs])
    outs = [s[k][rank] for k in range(world)]
    want = reference_exchange(dev(sent), sum(outs), outs, s[rank]).cpu().split(outs)
    for j in range(world):
        want_q = R.quantize_fp8(want[j])
        assert_same_bits(outputs[j].data.view(torch.uint8), want_q.data.view(torch.uint8), f"list from {j}")
        assert_same_bits(outputs[j].scales, want_q.scales, f"list scales from {j}")


def test_fp8_tensors_in_and_out_equal_the_two_step_path(seed):
    run_distributed(_fp8_body, 2, seed, timeout_s=120)


def _fp8_gpu_body(rank: int, world: int, seed: int) -> None:
    _fp8_body(rank, world, seed, device=f"cuda:{rank}")


@pytest.mark.gpu
@pytest.mark.parametrize("world", [1, 2])
def test_gpu_fp8_tensors_in_and_out_equal_the_two_step_path(seed, world):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs")
    run_nccl(_fp8_gpu_body, world, seed)
