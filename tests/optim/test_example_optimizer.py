"""examples/train_tiny_moe.py with an mxa2a.optim family on one process: the training loss falls.
(`--nproc 2`, expert parallel, is not run here: the example's gloo teardown aborts now and then under
load, on main as well.)"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_tiny_moe.py"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["muon_lite", "soap_lite"])
def test_example_trains_with_an_optim_family(tmp_path, family):
    out = tmp_path / "curves.json"
    cmd = [sys.executable, str(EXAMPLE), "--nproc", "1", "--optimizer", family, "--steps", "6",
           "--log-every", "3", "--wires", "raw", "--batch", "2", "--seq-len", "16", "--hidden", "64",
           "--d-expert", "16", "--experts", "4", "--data-mb", "0.2", "--json", str(out)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    first, last = json.loads(out.read_text())["train_loss"]["raw"]
    assert last < first
