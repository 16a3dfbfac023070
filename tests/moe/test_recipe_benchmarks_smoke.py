"""Smoke tests of benchmarks/train_throughput.py and benchmarks/convergence.py --quick on CPU: every
recipe / variant runs, the JSON has what the tables print, and the MoE layers of fp8-mxfp4 keep fewer
bytes for backward than those of bf16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs two benchmark scripts (about 10 s each)

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *argv: str) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *argv], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def test_train_throughput_quick_runs_every_recipe(tmp_path):
    out = tmp_path / "tt.json"
    _run("train_throughput.py", "--emulate-wire", "--json", str(out))
    rows = {r["recipe"]: r for r in json.loads(out.read_text())["rows"]}
    assert sorted(rows) == ["bf16", "fp8", "fp8-mxfp4", "fp8-mxfp4-recompute"]
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and r["saved_mb"] > r["moe_saved_mb"] > 0
    kept = [rows[r]["moe_saved_mb"] for r in ("fp8-mxfp4-recompute", "fp8-mxfp4", "fp8", "bf16")]
    assert kept == sorted(kept) and len(set(kept)) == 4


def test_convergence_quick_trains_every_variant(tmp_path):
    out, png = tmp_path / "conv.json", tmp_path / "conv.png"
    _run("convergence.py", "--json", str(out), "--png", str(png))
    runs = json.loads(out.read_text())["runs"]
    assert sorted(runs) == sorted(["bf16", "fp8", "fp8-mxfp4", "mxfp4-combine", "fp8-grads", "mxfp4-grads"])
    for r in runs.values():
        assert "error" not in r and r["steps"] == 20 and len(r["curve"]) == 4
        assert r["curve"][-1][1] < r["curve"][0][1]  # the loss falls
    assert png.stat().st_size > 0


def test_counting_the_kept_bytes_leaves_no_model_alive():
    """`saved_mb` runs a forward without backward under saved-tensor hooks: the graph must not outlive
    it (a pack hook returning a node's own output makes a cycle through autograd that gc cannot see;
    on a GPU the next recipe then ran beside this one's weights and went out of memory)."""
    import gc
    import weakref

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_throughput as tt

    args = tt.parse_args(["--quick"])
    run = tt.Run(args, "fp8-mxfp4", torch.device("cpu"))
    alive = weakref.ref(next(run.model.parameters()))
    rows = torch.randint(0, args.vocab, (2, args.seq_len + 1))
    total_mb, moe_mb = tt.saved_mb(run.model, rows[:, :-1], rows[:, 1:])
    assert total_mb > moe_mb > 0
    del run
    gc.collect()
    assert alive() is None
