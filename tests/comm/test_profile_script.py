"""benchmarks/profile_a2a.py on 2 CPU gloo ranks: every (wire, chunks) setting timed, profiled on rank 0,
and written to JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs a benchmark script on 2 spawned ranks

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_a2a.py"


def test_profile_script_times_and_profiles_every_setting(tmp_path):
    out = tmp_path / "profile.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SCRIPT), "--nproc", "2", "--size", "16K", "--hidden", "128", "--wire",
           "nccl,mxfp4", "--chunks", "1,2", "-n", "2", "-w", "1", "--profile-calls", "1", "--rows", "5",
           "--check", "first", "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch.profiler, 1 calls on rank 0" in proc.stdout and "# summary" in proc.stdout
    data = json.loads(out.read_text())
    assert [(r["wire"], r["chunks"]) for r in data["rows"]] == [("nccl", None), ("mxfp4", 1), ("mxfp4", 2)]
    for r in data["rows"]:
        assert r["time_us"] > 0 and r["host_us"] > 0 and r["rows"] == 64, r
        assert r["profile"]["top_cpu"], r
