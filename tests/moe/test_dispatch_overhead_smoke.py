"""Smoke test of `benchmarks/dispatch_overhead.py` on CPU over 2 gloo ranks, tiny shapes: a row per
(wire, mode), every phase timed, static and dynamic outputs identical, the static plan measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs a benchmark script on 2 spawned ranks

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "dispatch_overhead.py"
PHASES = ("route", "plan", "permute", "dispatch_a2a", "regroup", "experts", "ungroup", "combine_a2a", "unpermute")


def test_dispatch_overhead_runs_on_two_gloo_ranks(tmp_path):
    out = tmp_path / "do.json"
    cmd = [sys.executable, str(SCRIPT), "--nproc", "2", "--wire", "raw,mxfp4", "-n", "1", "-w", "0",
           "--tokens", "16", "--json", str(out)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert sorted((r["wire"], r["mode"]) for r in rows) == sorted(
        (w, m) for w in ("raw", "mxfp4") for m in ("dynamic", "static"))
    for r in rows:
        assert r["identical"] and r["phased_equals_layer"], r
        for p in PHASES:
            assert r[f"{p}_us"] >= 0, (p, r)
        assert r["disp_comb_us"] > 0 and r["fwd_bwd_us"] > 0 and r["ratio"] > 0
        assert r["syncs_per_layer"] is None  # counted on CUDA only
        assert (r["plan_host_us"] > 0) if r["mode"] == "static" else ("plan_host_us" not in r)
    assert data["config"]["world_size"] == 2 and data["config"]["tokens"] == 16
