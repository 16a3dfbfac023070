"""The list variant `all_to_all` on 2 gloo ranks: every wire, uneven and empty per-rank tensors, sync and
async, chunked; equal bit for bit to torch.distributed's exchange of the quantize-dequantized inputs."""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist
from comm_testing import WIRES, assert_same_bits, qdq, split_matrix
from dist_testing import run_distributed


def _list_body(rank: int, world: int, seed: int) -> None:
    from mxa2a.comm import all_to_all

    cases = list(itertools.product(("uneven", "zeros", "ones"), WIRES, (torch.float32, torch.bfloat16),
                                   ((None, False), (2, True))))
    for i, (pattern, wire, dt, (chunks, async_op)) in enumerate(cases):
        what = f"case {i}: {pattern}, wire={wire}, {dt}, chunks={chunks}, async={async_op}, rank {rank}"
        s = split_matrix(pattern, world, seed + i)
        g = torch.Generator().manual_seed(seed * 31 + i * 7 + rank)
        rest = (2, 128) if i % 2 else (256,)
        inputs = [torch.randn((s[rank][j], *rest), generator=g).to(dt) for j in range(world)]
        outputs = [torch.full((s[j][rank], *rest), float("nan"), dtype=dt) for j in range(world)]
        handle = all_to_all(outputs, inputs, wire=wire, chunks=chunks, async_op=async_op)
        if async_op:
            handle.wait()
        # gloo's own all_to_all needs equal sizes, so the reference is all_to_all_single of the lists
        want = torch.empty((sum(o.shape[0] for o in outputs), *rest), dtype=dt)
        dist.all_to_all_single(want, torch.cat([qdq(t, wire, dt) for t in inputs]),
                               [o.shape[0] for o in outputs], [t.shape[0] for t in inputs])
        for j, w in enumerate(want.split([o.shape[0] for o in outputs])):
            assert_same_bits(outputs[j], w, f"{what}, from rank {j}")


def test_list_variant_matches_torch_all_to_all_of_quantized_inputs(seed):
    run_distributed(_list_body, 2, seed, timeout_s=120)
