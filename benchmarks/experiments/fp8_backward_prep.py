#!/usr/bin/env python3
"""An experiment (issues 19 and 20): two passes of the FP8 expert MLP outside its GEMMs, old form
against new, same operands, same run, on the layer of record (H 2048, F 1408, E 64, 16384 tokens x
top-6 = 98304 rows).

1. The weight-gradient operands (`moe.fp8_experts.wgrad_operand`, four per backward: dy and x at K
   2048, z at 1408, dh at 2816): "gather + transpose" (`gather_aligned_rows`, then
   `fp8_rowwise_to_colwise`) against "fused" (`fp8_rowwise_to_colwise(row_map=)`), balanced and Zipf
   groups, bits compared. `copy` is a device copy of the fused pass's bytes (in + out) / 2: the
   roofline of this run.
2. The FP8 weight refresh (once per optimizer step and layer): "cat + quantize + copy" (the path before
   85f62f8: concatenate gate and up, quantize into new buffers, copy into the cached ones) against
   `FP8ExpertWeights.refresh` (straight into the cached halves), bits compared.
Median of CUDA-event timings. Needs CUDA:  python3 benchmarks/experiments/fp8_backward_prep.py [OUT.json]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _bench_common as bc  # noqa: E402
from gemm_throughput import group_sizes  # noqa: E402
from mxa2a.gemm import align_groups, gather_aligned_rows, quantize_fp8_blocks_and_transpose  # noqa: E402
from mxa2a.moe.fp8_experts import FP8ExpertWeights  # noqa: E402
from mxa2a.quant import fp8_rowwise_to_colwise, quantize_fp8  # noqa: E402

H, F, E, TOP_K, TOKENS = 2048, 1408, 64, 6, 16384
ITERS = int(os.environ.get("ITERS", 20))


def same(a, b) -> bool:
    return bool(torch.equal(a.data.view(torch.uint8), b.data.view(torch.uint8)) and torch.equal(a.scales, b.scales))


def timed(fn) -> float:
    return bc.median(bc.time_cuda(fn, ITERS, 3))


def copy_us(nbytes: int, dev) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    return timed(lambda: dst.copy_(src))


def operand_rows(dev) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    m, rows = TOKENS * TOP_K, []
    for dist in ("balanced", "zipf"):
        offsets = torch.tensor(group_sizes(m, E, dist, gen), device=dev).cumsum(0).to(torch.int32)
        layout = align_groups(offsets, m)
        for name, k in (("dy, x", H), ("z", F), ("dh", 2 * F)):
            q = quantize_fp8(torch.randn(m, k, device=dev, dtype=torch.bfloat16))
            old = lambda: fp8_rowwise_to_colwise(gather_aligned_rows(q, layout))  # noqa: E731
            new = lambda: fp8_rowwise_to_colwise(q, row_map=layout.row_map)  # noqa: E731
            moved = q.data.numel() + q.scales.numel() + layout.rows * (k + k // 128)
            r = dict(part="wgrad operand", dist=dist, what=f"{name} [{m}, {k}]", same=same(old(), new()),
                     old_us=timed(old), new_us=timed(new), copy_us=copy_us(moved, dev))
            rows.append(r)
    return rows


def refresh_rows(dev) -> list[dict]:
    w_gate, w_up = (torch.randn(E, F, H, device=dev, dtype=torch.bfloat16) for _ in range(2))
    w_down = torch.randn(E, H, F, device=dev, dtype=torch.bfloat16)
    cached = FP8ExpertWeights()
    cached.refresh(w_gate, w_up, w_down)

    def old():
        w1, w1_t = quantize_fp8_blocks_and_transpose(torch.cat([w_gate, w_up], dim=1))
        w2, w2_t = quantize_fp8_blocks_and_transpose(w_down)
        for dst, src in ((cached.w1, w1), (cached.w1_t, w1_t), (cached.w2, w2), (cached.w2_t, w2_t)):
            dst.data.copy_(src.data)
            dst.scales.copy_(src.scales)
    want = (*quantize_fp8_blocks_and_transpose(torch.cat([w_gate, w_up], dim=1)),
            *quantize_fp8_blocks_and_transpose(w_down))
    cached.refresh(w_gate, w_up, w_down)
    ok = all(same(a, b) for a, b in zip((cached.w1, cached.w1_t, cached.w2, cached.w2_t), want))
    moved = 2 * E * 3 * F * H + 2 * (E * 3 * F * H + E * 3 * F * H // 128)  # bf16 in, blocks + transposes out
    return [dict(part="weight refresh", dist="-", what=f"E {E}, 2F {2 * F}, H {H}", same=ok, old_us=timed(old),
                 new_us=timed(lambda: cached.refresh(w_gate, w_up, w_down)), copy_us=copy_us(moved, dev))]


COLUMNS = [bc.Column("part", "part", "{}", 14), bc.Column("dist", "groups", "{}", 8), bc.Column("what", "operand", "{}", 22),
           bc.Column("same", "same bits", "{}", 9), bc.Column("old_us", "old us", "{:.1f}", 9),
           bc.Column("new_us", "new us", "{:.1f}", 9), bc.Column("speedup", "x old", "{:.2f}", 6),
           bc.Column("copy_pct", "% copy", "{:.0f}", 6)]


def main() -> int:
    if not torch.cuda.is_available():
        print("fp8_backward_prep.py needs a CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    rows = operand_rows(dev) + refresh_rows(dev)
    for r in rows:
        r["speedup"] = r["old_us"] / r["new_us"]
        r["copy_pct"] = 100.0 * r["copy_us"] / r["new_us"]
    print(bc.format_table(COLUMNS, rows))
    if len(sys.argv) > 1:
        bc.write_json(sys.argv[1], {"machine": bc.machine_description(), "rows": rows})
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
