#!/usr/bin/env python3
"""Markdown summary of `a2a_bandwidth.py` JSON files: one table of logical bandwidth and speedup over
raw bf16 per link, splits and size, the issue-5 targets at the largest size (met or missed), and the
encode / transfer / decode breakdown where it was measured.

    python benchmarks/summarize_a2a.py benchmarks/results/a2a_2xh200/*.json [--sizes 1M,64M,1G]

Only numbers from the files are printed; nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench_common as bc  # noqa: E402

# Issue 5 targets: MXFP4 (and FP8 on NVLink) whole-call speedup over raw bf16 at 1 GiB per rank.
TARGETS = {"default": {"mxfp4": 2.0, "fp8": 1.6}, "host memory": {"mxfp4": 3.3}, "sockets": {"mxfp4": 3.0}}


def link_key(data: dict[str, Any]) -> str:
    env = data["machine"].get("env", {})
    if data["config"].get("device_type") != "cuda":
        return "cpu"
    p2p = env.get("NCCL_P2P_DISABLE", "0") not in ("", "0")
    shm = env.get("NCCL_SHM_DISABLE", "0") not in ("", "0")
    return "sockets" if p2p and shm else "host memory" if p2p else "default"


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None or isinstance(value, str) else format(value, spec) + suffix


def summarize(files: list[str], sizes: list[int] | None) -> str:
    out: list[str] = []
    datasets = []
    for path in files:
        with open(path) as f:
            datasets.append((path, json.load(f)))
    first = datasets[0][1]["machine"]
    out.append(f"Machine: {first.get('gpu_count')}x {first.get('gpu') or 'CPU'}, NCCL {first.get('nccl')}, "
               f"torch {first.get('torch')}, Triton {first.get('triton')}, {first.get('date_utc')}.")
    out.append("")
    out.append("Speedups are over the `speedup_baseline` of each file: `nccl` (plain torch.distributed "
               "bf16) when measured, else mxa2a `raw`. GB/s = logical bf16 bytes per rank / time.")
    out.append("")
    out.append("| link | splits | size/rank | nccl bf16 GB/s | mxa2a raw GB/s | fp8 GB/s | fp8 speedup | "
               "mxfp4 GB/s | mxfp4 speedup | fp8 max err | mxfp4 max err |")
    out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    verdicts, breakdowns = [], []
    for path, data in datasets:
        link = link_key(data)
        world = data["config"]["world_size"]
        rows = data["rows"]
        nominal = sorted({r["nominal_bytes"] for r in rows})
        largest = nominal[-1]
        chosen = [s for s in nominal if sizes is None or s in sizes]
        for mode in data["config"]["splits"]:
            by = {(r["nominal_bytes"], r["wire"]): r for r in rows if r["splits"] == mode}
            for size in chosen:
                nccl, raw = by.get((size, "nccl")), by.get((size, "raw")) or by.get((size, "bf16"))
                fp8, mx = by.get((size, "fp8")), by.get((size, "mxfp4"))
                out.append(f"| {link} | {mode} | {bc.format_size(size)} | "
                           f"{_fmt(nccl and nccl['algbw_GBps'], '.4g')} | "
                           f"{_fmt(raw and raw['algbw_GBps'], '.4g')} | "
                           f"{_fmt(fp8 and fp8['algbw_GBps'], '.4g')} | {_fmt(fp8 and fp8['speedup'], '.2f', 'x')} | "
                           f"{_fmt(mx and mx['algbw_GBps'], '.4g')} | {_fmt(mx and mx['speedup'], '.2f', 'x')} | "
                           f"{_fmt(fp8 and fp8['max_rel_err'], '.3g')} | {_fmt(mx and mx['max_rel_err'], '.3g')} |")
            for wire, target in TARGETS.get(link, {}).items():
                row = by.get((largest, wire))
                if row is None or row["speedup"] is None:
                    continue
                met = "met" if row["speedup"] >= target else "MISSED"
                base = data["config"].get("speedup_baseline", "raw")
                verdicts.append(f"- {link}, {mode}, {bc.format_size(largest)}/rank, {world} ranks: {wire} "
                                f"{row['speedup']:.2f}x over {base} vs target {target}x: {met}")
            for wire in ("nccl", "raw", "fp8", "mxfp4"):
                row = by.get((largest, wire))
                if row is not None and "encode_us" in row:
                    breakdowns.append(
                        f"| {link} | {mode} | {wire} | {row['time_us']:.0f} | {row['encode_us']:.0f} | "
                        f"{row['transfer_us']:.0f} | {row['decode_us']:.0f} | {row['serial_sum_us']:.0f} |")
    out.append("")
    if verdicts:
        out.append("Targets (issue 5, whole call incl. encode and decode, same run):")
        out.extend(verdicts)
        out.append("")
    if breakdowns:
        out.append("Breakdown at the largest size (us, slowest rank's median; sum = encode + transfer + "
                   "decode run one after another):")
        out.append("")
        out.append("| link | splits | wire | whole call | encode | transfer | decode | sum |")
        out.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        out.extend(breakdowns)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="JSON files written by a2a_bandwidth.py --json")
    p.add_argument("--sizes", help="nominal sizes to list, comma separated (default: every size)")
    args = p.parse_args(argv)
    try:
        sizes = None if args.sizes is None else [bc.parse_size(s) for s in args.sizes.split(",")]
    except ValueError as exc:
        p.error(f"--sizes: {exc}")
    sys.stdout.write(summarize(args.files, sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
