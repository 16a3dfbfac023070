"""Run a test body on N local processes joined by a gloo (or NCCL: one GPU a rank) process group.

`run_distributed(body, world_size, *args)` spawns the ranks, calls `body(rank, world_size, *args)` in
each, and raises in the parent with every failing rank's traceback. A rank that has not finished by
`timeout_s` is killed and reported as hung, so a broken collective fails the test instead of hanging it.
`body` must be a module-level function (it is pickled into the spawned processes).
"""

from __future__ import annotations

import datetime
import os
import socket
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, world_size: int, port: int, pg_timeout_s: float, backend: str,
                body: Callable[..., Any], args: tuple, results) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    try:
        extra = {}
        if backend == "nccl":
            torch.cuda.set_device(rank)
            extra["device_id"] = torch.device("cuda", rank)
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=pg_timeout_s), **extra)
        body(rank, world_size, *args)
        results.put((rank, None))
    except BaseException:  # report everything, including assertion failures, to the parent
        results.put((rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(body: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
                    timeout_s: float = 120.0, pg_timeout_s: float = 30.0) -> None:
    """Run `body(rank, world_size, *args)` on `world_size` ranks of a `backend` ("gloo", or "nccl" with
    GPU `rank` for rank `rank`); raise if any rank fails or hangs."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_entry,
                         args=(r, world_size, port, pg_timeout_s, backend, body, args, results),
                         daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    errors: dict[int, str] = {}
    finished: set[int] = set()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    while len(finished) < world_size:
        remaining = (deadline - datetime.datetime.now()).total_seconds()
        if remaining <= 0:
            break
        try:
            rank, err = results.get(timeout=min(remaining, 1.0))
        except Exception:  # queue.Empty: check for ranks that died without reporting
            if all(not p.is_alive() for p in procs) and results.empty():
                break
            continue
        finished.add(rank)
        if err is not None:
            errors[rank] = err
    for r, p in enumerate(procs):
        p.join(timeout=30)  # torch teardown can take seconds on a loaded machine
        if p.is_alive():
            p.kill()
            p.join()
            errors.setdefault(r, f"rank {r} hung (killed after {timeout_s:.0f} s)")
        elif r not in finished:
            errors.setdefault(r, f"rank {r} exited with code {p.exitcode} without reporting")
    if errors:
        msg = "\n".join(f"--- rank {r} ---\n{errors[r]}" for r in sorted(errors))
        raise AssertionError(f"{len(errors)} of {world_size} ranks failed:\n{msg}")
