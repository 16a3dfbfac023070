"""Smoke test of examples/train_tiny_moe.py: a few steps on one process with an emulated wire."""

import importlib.util
import json
import pathlib

import pytest

pytestmark = pytest.mark.slow  # runs the example end to end

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "train_tiny_moe.py"


def test_example_trains_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_tiny_moe", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "curves.json"
    module.main(["--nproc", "1", "--steps", "4", "--log-every", "2", "--wires", "raw,mxfp4", "--batch", "2",
                 "--seq-len", "16", "--hidden", "64", "--d-expert", "16", "--experts", "4",
                 "--data-mb", "0.2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["steps"] == [2, 4]
    assert set(result["train_loss"]) == {"raw", "mxfp4"}
    assert all(len(v) == 2 and v[1] < v[0] for v in result["train_loss"].values())
    assert "val loss" in capsys.readouterr().out
