#!/usr/bin/env python3
"""What the all-to-all's reliability checks cost (issue 23): one process, a group of one (NCCL on a
GPU, gloo on a CPU), per wire and size (logical bf16 bytes, rows of `--hidden`):
- `first_us`: a whole `all_to_all_single` with the default check="first" (after its first call: no
  header), which includes the fill that makes rows that never arrive decode to NaN;
- `fill_us`: that fill alone (`WireCodec.fill_unreceived` on the receive rows);
- `tagged_us`: the whole call with check="tagged" (a 16-byte tag in every row, checked on receipt);
- `tag_us`: the tag's own work alone (write it into every sent row, compare it in every received row).
Medians of `-n` calls after `-w` warm-up calls, CUDA events on a GPU, perf_counter on a CPU. On a CPU
the figures are functional, not performance (torch reference codecs), and whole calls above
`--cpu-call-max` are skipped (the reference codecs take minutes there); the parts are still timed.
Table on stdout, `--json` for every row.

    python benchmarks/check_cost.py --json check_cost.json          # 1M and 1G, mxfp4 / fp8 / bf16
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before mxa2a's kernels are imported

import _bench_common as bc  # noqa: E402


def timer(device: torch.device, iters: int, warmup: int) -> Callable[[Callable[[], Any]], float]:
    if device.type == "cuda":
        return lambda fn: bc.median(bc.time_cuda(fn, iters, warmup))
    return lambda fn: bc.median(bc.time_host(fn, iters, warmup))


def measure(wire: str, nbytes: int, hidden: int, device: torch.device, time_us, call_max: int) -> dict:
    from mxa2a.comm import all_to_all_single
    from mxa2a.comm.exchange import TAG_BYTES
    from mxa2a.quant.wire import get_codec

    rows = max(1, nbytes // (2 * hidden))
    codec = get_codec(wire)
    rb = codec.row_bytes(hidden, torch.bfloat16)
    recv = torch.empty((rows, -(-rb // TAG_BYTES) * TAG_BYTES + TAG_BYTES), dtype=torch.uint8, device=device)
    tag = torch.tensor([1, 2, 3, 4], dtype=torch.int32, device=device)
    tags = recv[:, -TAG_BYTES:].view(torch.int32)

    def tag_work() -> None:  # what check="tagged" adds on both sides (see comm/exchange.py)
        tags.copy_(tag.expand(rows, -1))
        torch._assert_async((tags != tag).any(dim=1).any().logical_not())

    row = {"wire": wire, "bytes": rows * hidden * 2, "rows": rows, "row_bytes": rb,
           "fill_us": time_us(lambda: codec.fill_unreceived(recv[:, :rb])), "tag_us": time_us(tag_work),
           "first_us": None, "tagged_us": None}
    del recv
    if device.type == "cuda" or nbytes <= call_max:
        x = torch.randn(rows, hidden, device=device, dtype=torch.bfloat16)
        out = torch.empty_like(x)
        row["first_us"] = time_us(lambda: all_to_all_single(out, x, wire=wire, check="first"))
        row["tagged_us"] = time_us(lambda: all_to_all_single(out, x, wire=wire, check="tagged"))
    for key in ("fill", "tagged"):
        part = row["fill_us"] if key == "fill" else (row["tagged_us"] or 0) - (row["first_us"] or 0)
        row[f"{key}_pct"] = 100 * part / row["first_us"] if row["first_us"] else None
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1M,1G", help="comma separated logical bf16 bytes (1M,1G)")
    p.add_argument("--wire", default="mxfp4,fp8,bf16", help="comma separated wires")
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("-n", "--iters", type=int, default=20)
    p.add_argument("-w", "--warmup", type=int, default=3)
    p.add_argument("--cpu-call-max", type=bc.size_arg, default=bc.parse_size("4M"),
                   help="on a CPU, time whole calls only up to this size (default 4M)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)

    from mxa2a.comm import init_distributed

    info = init_distributed()
    device = torch.device(info.device)
    time_us = timer(device, args.iters, args.warmup)
    machine = bc.machine_description()
    print(f"# check cost: group of 1 on {machine.get('gpu') or 'CPU (gloo)'}, hidden {args.hidden} bf16, "
          f"median of {args.iters}; first = default call (incl. fill), tagged = check='tagged'")
    if device.type != "cuda":
        print("# CPU run: functional figures, not performance (torch reference codecs)")
    cols = [bc.Column("wire", "wire", width=6), bc.Column("bytes", "size(B)", "{:d}", 11),
            bc.Column("first_us", "first(us)", "{:.1f}", 10), bc.Column("fill_us", "fill(us)", "{:.1f}", 9),
            bc.Column("fill_pct", "fill%", "{:.2f}", 6), bc.Column("tagged_us", "tagged(us)", "{:.1f}", 10),
            bc.Column("tag_us", "tag(us)", "{:.1f}", 8), bc.Column("tagged_pct", "+tagged%", "{:.2f}", 8)]
    print(bc.format_header(cols), flush=True)
    rows = []
    for size in [bc.parse_size(s) for s in args.sizes.split(",")]:
        for wire in args.wire.split(","):
            rows.append(measure(wire, size, args.hidden, device, time_us, args.cpu_call_max))
            print(bc.format_row(cols, rows[-1]), flush=True)
    if args.json:
        bc.write_json(args.json, {"benchmark": "check_cost", "machine": machine, "rows": rows,
                                  "figures": "performance" if device.type == "cuda" else "functional"})
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
