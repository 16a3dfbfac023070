"""`init_distributed()`: one call that joins the process group however the program was launched.

- `torchrun` (RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set): the env:// rendezvous.
- `mpirun` / `mpiexec`: rank and size from Open MPI (OMPI_COMM_WORLD_*) or MPICH / Hydra / Intel MPI
  (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID); rank 0's host and a free port are broadcast with `mpi4py`
  (a MASTER_ADDR set by the user is used as is). On one node without ssh, Open MPI still looks for
  its remote agent: `OMPI_MCA_plm_rsh_agent=false mpirun -np 2 python train.py`.
- a plain `python` process: a group of one.
The CUDA device is chosen from the local rank; the backend is NCCL with CUDA, gloo without; `timeout`
bounds every collective of the group (a dead peer raises after it; README, "Launching").
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, group size, rank within its node, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


@dataclass(frozen=True)
class _Launch:
    kind: str  # "torchrun", "mpi" or "single"
    rank: int
    world_size: int
    local_rank: int


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def detect_launch() -> _Launch:
    """Rank, size and local rank from the environment of torchrun, Open MPI, or MPICH/Hydra."""
    rank, size = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank is not None and size is not None:
        return _Launch("torchrun", rank, size, _env_int("LOCAL_RANK") or 0)
    rank, size = _env_int("OMPI_COMM_WORLD_RANK"), _env_int("OMPI_COMM_WORLD_SIZE")
    if rank is not None and size is not None:
        return _Launch("mpi", rank, size, _env_int("OMPI_COMM_WORLD_LOCAL_RANK") or 0)
    rank, size = _env_int("PMI_RANK", "PMIX_RANK"), _env_int("PMI_SIZE")
    if rank is not None and size is not None:
        return _Launch("mpi", rank, size, _env_int("MPI_LOCALRANKID", "PMI_LOCAL_RANK") or 0)
    return _Launch("single", 0, 1, 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _mpi_rendezvous(launch: _Launch) -> tuple[str, int]:
    """Rank 0's address and a free port, broadcast over MPI. Uses 127.0.0.1 when all ranks share a host."""
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError("init_distributed: launched by mpirun/mpiexec but mpi4py is not installed; "
                           "`pip install mpi4py` or set MASTER_ADDR and MASTER_PORT") from e
    comm = MPI.COMM_WORLD
    if comm.Get_size() != launch.world_size:
        raise RuntimeError(f"init_distributed: MPI reports {comm.Get_size()} ranks but the environment "
                           f"{launch.world_size}")
    hosts = comm.allgather(socket.gethostname())
    addr = "127.0.0.1" if len(set(hosts)) == 1 else hosts[0]
    port = _free_port() if comm.Get_rank() == 0 else None
    return addr, comm.bcast(port, root=0)


def init_distributed(backend: str | None = None, timeout: timedelta = timedelta(minutes=10)) -> DistInfo:
    """Initialise the default process group for torchrun, mpirun/mpiexec or a single process.

    Arguments:
        backend: None = "nccl" when CUDA is available, else "gloo". Any torch.distributed backend string
            works, e.g. "cpu:gloo,cuda:nccl" (which also makes the all-to-all header check host-only).
        timeout: passed to `init_process_group`; a collective that waits longer raises.
    Returns:
        DistInfo(rank, world_size, local_rank, device); `device` is cuda:<local_rank % device count>
        (made current) or cpu. Calling it again returns the same information without re-initialising.
    """
    launch = detect_launch()
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        device = torch.device("cuda", launch.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), launch.local_rank, device)
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if launch.kind == "torchrun":
        dist.init_process_group(backend, timeout=timeout)
    elif launch.kind == "mpi":
        addr, port = _mpi_rendezvous(launch)
        for key, value in (("RANK", launch.rank), ("WORLD_SIZE", launch.world_size),
                           ("LOCAL_RANK", launch.local_rank), ("MASTER_ADDR", addr), ("MASTER_PORT", port)):
            os.environ.setdefault(key, str(value))
        dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=launch.rank,
                                world_size=launch.world_size, timeout=timeout)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), launch.local_rank, device)
