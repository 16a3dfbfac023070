"""Smoke test of benchmarks/optimizers.py --quick on CPU: AdamW, Muon and SOAP swept, every family
trained (the LITE ones at their base's lr), the table, the JSON rows and the PNG written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "optimizers.py"


@pytest.mark.slow
def test_optimizer_benchmark_quick_runs_every_family(tmp_path):
    out, png = tmp_path / "opt.json", tmp_path / "opt.png"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--png", str(png)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads(out.read_text())
    families = [r["family"] for r in data["rows"]]
    assert families == ["muon", "muon_lite", "soap", "soap_lite", "adamw"]
    assert sorted({t["family"] for t in data["sweep"]}) == ["adamw", "muon", "soap"]
    assert len(data["sweep"]) == 2 * 3 and data["complete"] and not data["skipped"]
    rows = {r["family"]: r for r in data["rows"]}
    assert rows["muon_lite"]["lr"] == rows["muon"]["lr"] and rows["soap_lite"]["lr"] == rows["soap"]["lr"]
    for row in data["rows"]:
        assert row["final_val"] < 5.5 and not row["diverged"]  # ln(256) = 5.55 at the start
        assert row["step_ms"] > 0 and 0 < row["opt_pct"] < 100
    muon = next(r for r in data["rows"] if r["family"] == "muon")
    assert muon["to_muon"] is not None  # Muon reaches its own final loss
    assert png.stat().st_size > 1000
    assert "optimizer" in proc.stdout and "to Muon's" in proc.stdout
