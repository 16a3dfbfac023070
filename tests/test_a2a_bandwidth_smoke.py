"""Smoke test of `benchmarks/a2a_bandwidth.py`: the script itself, run on CPU over 2 gloo ranks with
tiny sizes and `--check`, must write a row for every (splits, size, wire) with consistent numbers and
errors within each wire's bound (raw exactly 0); plus its size parsing, split generation, error
metric and argument checks, in process."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "a2a_bandwidth.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("a2a_bandwidth", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
bc = bench.bc


@pytest.mark.slow
def test_sweep_on_two_gloo_ranks_writes_checked_rows(tmp_path):
    out_json, out_png = tmp_path / "a2a.json", tmp_path / "a2a.png"
    hidden, sizes = 256, [2048, 4096, 8192]
    wires, modes = ["mxfp4", "fp8", "raw", "nccl"], ["equal", "moe"]  # the baseline runs first anyway
    cmd = [sys.executable, str(SCRIPT), "--nproc", "2", "-b", "2K", "-e", "8K", "-f", "2", "-n", "2",
           "-w", "1", "--hidden", str(hidden), "--wire", ",".join(wires), "--splits", ",".join(modes),
           "--topk", "4", "--experts", "16", "--check", "--breakdown",
           "--json", str(out_json), "--plot", str(out_png)]
    # CPU and gloo even on a GPU machine; the Triton interpreter for any kernel that runs.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

    data = json.loads(out_json.read_text())
    rows = data["rows"]
    keys = [(r["splits"], r["nominal_bytes"], r["wire"]) for r in rows]
    labels = ["gloo" if w == "nccl" else w for w in wires]  # the plain torch baseline is named for its backend
    assert sorted(keys) == sorted(itertools.product(modes, sizes, labels))
    assert data["config"]["world_size"] == 2 and data["config"]["hidden"] == hidden
    assert data["config"]["splits"] == modes and data["check_failures"] == []
    assert data["config"]["speedup_baseline"] == "gloo" and data["config"]["figures"] == "functional"
    assert "# CPU run: functional figures, not performance" in proc.stdout
    assert "speedup over gloo" in proc.stdout and " nccl " not in proc.stdout
    for key in ("hostname", "date_utc", "command", "torch", "triton", "gpu_count", "nccl", "env", "hosts"):
        assert key in data["machine"], key

    pad16 = lambda n: -(-n // 16) * 16  # quantized wire rows are padded to 16 bytes (mxa2a.quant.wire)
    wire_bytes = {"gloo": 2 * hidden, "raw": 2 * hidden, "fp8": pad16(hidden + hidden // 128),
                  "mxfp4": pad16(hidden // 2 + hidden // 32)}
    bounds = {"gloo": 0.0, "raw": 0.0, "fp8": 2.0 ** -4, "mxfp4": 0.2 * (1 + 1e-6)}
    for r in rows:
        assert r["rows"] == r["nominal_bytes"] // (2 * hidden)
        assert r["bytes"] == r["rows"] * 2 * hidden
        assert r["wire_bytes"] == r["rows"] * wire_bytes[r["wire"]]
        assert all(sum(sent) == r["rows"] for sent in r["send_splits_matrix"])  # no row lost or added
        assert r["time_us"] > 0
        assert r["algbw_GBps"] == pytest.approx(r["bytes"] / r["time_us"] / 1e3)
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] / 2)
        assert r["recv_imbalance"] >= 1.0
        base = next(b for b in rows if b["wire"] == "gloo" and b["splits"] == r["splits"]
                    and b["nominal_bytes"] == r["nominal_bytes"])
        assert r["speedup"] == pytest.approx(base["time_us"] / r["time_us"])
        if r["wire"] in ("raw", "gloo"):
            assert r["max_rel_err"] == 0.0, r  # the bf16 bytes, moved unchanged
            assert r["encode_us"] == 0.0 and r["decode_us"] == 0.0
        else:
            assert 0.0 < r["max_rel_err"] <= bounds[r["wire"]], r  # lossy, but within the format's bound
            assert r["encode_us"] > 0 and r["decode_us"] > 0
        assert r["transfer_us"] > 0

    table = [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    assert len(table) == len(rows)
    assert "[24/24]" in proc.stderr  # the progress counter
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot skipped" in proc.stdout
    else:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wire_gloo_names_the_plain_torch_baseline():
    args = bench.build_parser().parse_args(["--wire", "gloo,mxfp4"])
    assert args.wire == ["nccl", "mxfp4"]


@pytest.mark.parametrize("text, expected", [("1M", 1 << 20), ("256K", 256 << 10), ("1G", 1 << 30),
                                            ("4096", 4096), ("1.5k", 1536), ("2MiB", 2 << 20),
                                            ("64KB", 64 << 10)])
def test_parse_size_accepts_nccl_tests_suffixes(text, expected):
    assert bc.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "1X", "-1M", "0", "M"])
def test_parse_size_rejects_malformed_sizes(text):
    with pytest.raises(ValueError, match="size"):
        bc.parse_size(text)


def test_size_sweep_includes_both_ends():
    sweep = bc.size_sweep(1 << 20, 1 << 30, 2)
    assert sweep[0] == 1 << 20 and sweep[-1] == 1 << 30 and len(sweep) == 11
    assert bc.size_sweep(4096, 4096, 2) == [4096]
    with pytest.raises(ValueError, match="maxbytes"):
        bc.size_sweep(2, 1, 2)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("rows", [1, 7, 73, 1000])
def test_split_modes_send_every_row_exactly_once(world, rows):
    moe = bench.MoESplitConfig(experts=256, topk=8, zipf=1.0, seed=0)
    for mode in ("equal", "moe"):
        for rank in range(world):
            splits = bench.send_splits_for(mode, rows, world, rank, moe)
            assert len(splits) == world and sum(splits) == rows and min(splits) >= 0
    equal = bench.send_splits_for("equal", rows, world, 0, moe)
    assert max(equal) - min(equal) <= 1


def test_moe_splits_are_seeded_and_skewed():
    moe = bench.MoESplitConfig(experts=64, topk=4, zipf=1.2, seed=3)
    a = bench.send_splits_for("moe", 4000, 8, 1, moe)
    assert a == bench.send_splits_for("moe", 4000, 8, 1, moe)  # fixed seed: same routing every run
    assert a != bench.send_splits_for("moe", 4000, 8, 2, moe)  # each rank routes its own tokens
    assert max(a) > 1.2 * (4000 / 8)  # popular experts make some destinations clearly heavier


def test_row_error_metric_is_per_row_and_flags_lost_rows():
    ref = torch.tensor([[1.0, -4.0], [0.5, 0.25], [0.0, 0.0]])
    out = ref.clone()
    assert bench.max_row_rel_error(out, ref) == 0.0
    out[0, 0] = 2.0  # error 1 on a row whose largest magnitude is 4
    out[1, 1] = 0.375  # error 0.125 on a row whose largest magnitude is 0.5
    assert bench.max_row_rel_error(out, ref) == pytest.approx(0.25)
    out[2, 0] = 1e-30  # anything nonzero where the exact row is zero
    assert bench.max_row_rel_error(out, ref) == math.inf
    out = ref.clone()
    out[1] = float("nan")  # an unwritten (NaN-filled) or NaN row
    assert bench.max_row_rel_error(out, ref) == math.inf


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "100"], "multiple of 32"),
    (["--hidden", "224", "--wire", "fp8"], "multiple of 128"),
    (["--wire", "raw,int4"], "--wire"),
    (["--splits", "zipf"], "--splits"),
    (["-b", "1G", "-e", "1M"], "--maxbytes"),
    (["-f", "1"], "--stepfactor"),
    (["-b", "12Q"], "size"),
    (["--topk", "9", "--experts", "8"], "--topk"),
])
def test_bad_arguments_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_nproc_refuses_to_run_under_a_launcher(monkeypatch, capsys):
    monkeypatch.delenv(bc.SPAWNED_ENV, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        bench.main(["--nproc", "2"])
    assert "cannot run under mpi" in capsys.readouterr().err


def _load_summarizer():
    path = ROOT / "benchmarks" / "summarize_a2a.py"
    spec = importlib.util.spec_from_file_location("summarize_a2a", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_summary_reports_targets_per_link(tmp_path):
    summarize = _load_summarizer()

    def row(wire, time_us, speedup):
        return {"splits": "equal", "nominal_bytes": 1 << 30, "bytes": 1 << 30, "rows": 1, "wire": wire,
                "time_us": time_us, "algbw_GBps": (1 << 30) / time_us / 1e3, "speedup": speedup,
                "max_rel_err": 0.0}

    files = []
    for name, env, mx_speedup in (("hostmem", {"NCCL_P2P_DISABLE": "1"}, 3.5),
                                  ("sockets", {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1"}, 2.5)):
        data = {"machine": {"gpu": "H200", "gpu_count": 2, "env": env},
                "config": {"device_type": "cuda", "world_size": 2, "splits": ["equal"],
                           "speedup_baseline": "nccl"},
                "rows": [row("nccl", 1000.0, 1.0), row("raw", 1100.0, 1000.0 / 1100.0),
                         row("mxfp4", 1000.0 / mx_speedup, mx_speedup)]}
        files.append(str(tmp_path / f"{name}.json"))
        Path(files[-1]).write_text(json.dumps(data))
    text = summarize.summarize(files, None)
    assert "host memory, equal, 1G/rank, 2 ranks: mxfp4 3.50x over nccl vs target 3.3x: met" in text
    assert "sockets, equal, 1G/rank, 2 ranks: mxfp4 2.50x over nccl vs target 3.0x: MISSED" in text
    assert "| host memory | equal | 1G |" in text
