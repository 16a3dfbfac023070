"""all_to_all_single on 2 and 4 gloo ranks: every wire format, fp32/bf16/fp16, equal and uneven splits,
ranks that send or receive nothing, one row, a large row, sync/async, one or several chunks. The result
must equal, bit for bit, torch.distributed's all_to_all_single of the quantize-dequantized input (the
plain input for "raw"). The same cases run on 1 and 2 GPUs over NCCL (Triton codecs, side streams for
chunks) when GPUs are present."""

from __future__ import annotations

import itertools

import pytest
import torch
from comm_testing import WIRES, assert_same_bits, my_splits, qdq, reference_exchange, run_nccl, split_matrix
from dist_testing import run_distributed

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
REST = {"equal": (256,), "uneven": (2, 128), "zeros": (128,), "ones": (384,), "empty": (128,)}
MODES = ((None, False), (None, True), (3, False), (2, True))  # (chunks, async_op)


def _case_body(rank: int, world: int, seed: int, cases: list[tuple], device: str = "cpu") -> None:
    from mxa2a.comm import all_to_all_single

    for i, (pattern, wire, din, dout, rest, chunks, async_op, scale_mode) in enumerate(cases):
        what = (f"case {i}: {pattern} splits, wire={wire}, {din}->{dout}, rest={rest}, chunks={chunks}, "
                f"async={async_op}, scale_mode={scale_mode}, check={i % 5 != 4}, rank {rank}, seed {seed}")
        s = split_matrix(pattern, world, seed + i)
        n_in, n_out, ins, outs = my_splits(s, rank, world, equal_rows=3)
        g = torch.Generator().manual_seed(seed * 7919 + i * 31 + rank)
        x = (torch.randn((n_in, *rest), generator=g) * 4.0 ** (rank - 1)).to(din).to(device)
        out = torch.full((n_out, *rest), float("nan"), dtype=dout, device=device)
        check = i % 5 != 4  # every fifth call without the header check
        handle = all_to_all_single(out, x, outs, ins, wire=wire, chunks=chunks, async_op=async_op,
                                   scale_mode=scale_mode, check=check)
        if async_op:
            assert handle is not None and handle.wait() and handle.is_completed(), what
        else:
            assert handle is None, what
        want = reference_exchange(qdq(x.cpu(), wire, dout, scale_mode).to(device), n_out, outs, ins)
        assert_same_bits(out, want, what)
        if wire == "raw":  # the baseline is the plain input's exchange
            assert_same_bits(out, reference_exchange(x, n_out, outs, ins), what)


def _cases_2_ranks() -> list[tuple]:
    cases = []
    for pattern, wire, (din, dout), (chunks, async_op) in itertools.product(
            REST, WIRES, ((F32, F32), (BF16, BF16)), MODES):
        cases.append((pattern, wire, din, dout, REST[pattern], chunks, async_op, "rceil"))
    for wire in WIRES[1:]:  # the output dtype is the output's, not the input's
        cases.append(("uneven", wire, F32, BF16, (256,), None, False, "rceil"))
        cases.append(("uneven", wire, BF16, F32, (256,), 2, False, "rceil"))
        cases.append(("uneven", wire, F16, F16, (128,), None, False, "rceil"))
    cases.append(("uneven", "raw", F16, F16, (128,), None, False, "rceil"))
    cases.append(("uneven", "mxfp4", F32, F32, (256,), None, False, "floor"))
    cases.append(("uneven", "mxfp4", BF16, BF16, (64,), 4, True, "floor"))
    for wire, dt in itertools.product(WIRES, (F32, BF16)):  # a large row
        cases.append(("uneven", wire, dt, dt, (4096,), None, False, "rceil"))
        cases.append(("ones", wire, dt, dt, (4096,), 2, True, "rceil"))
    return cases


def test_matches_torch_exchange_of_quantized_input_2_ranks(seed):
    run_distributed(_case_body, 2, seed, _cases_2_ranks(), timeout_s=150)


def test_matches_torch_exchange_of_quantized_input_4_ranks(seed):
    cases = [(p, w, BF16, BF16, REST[p], c, a, "rceil")
             for p, w, (c, a) in itertools.product(("equal", "uneven", "zeros"), WIRES,
                                                   ((None, False), (3, True)))]
    cases += [("ones", w, F32, F32, (4096,), None, False, "rceil") for w in WIRES]
    run_distributed(_case_body, 4, seed, cases, timeout_s=150)


def _gpu_body(rank: int, world: int, seed: int, cases: list[tuple]) -> None:
    _case_body(rank, world, seed, cases, device=f"cuda:{rank}")


@pytest.mark.gpu
@pytest.mark.parametrize("world", [1, 2])
def test_gpu_nccl_matches_torch_exchange_of_quantized_input(seed, world):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs")
    run_nccl(_gpu_body, world, seed, _cases_2_ranks())


def test_release_staging_buffers_frees_every_device_buffer():
    from mxa2a.comm import release_staging_buffers, staging

    staging._staging[torch.device("cpu")] = staging._StagingBuffer()  # what a blocking CUDA call leaves
    release_staging_buffers()
    assert staging._staging == {}
