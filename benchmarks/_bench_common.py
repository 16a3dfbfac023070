"""Helpers shared by the benchmark scripts: size arguments, local launch, timing statistics, the
machine description, the printed table, progress output and JSON.

Nothing here knows what is being measured. A script parses its flags, calls `spawn_local` when it
should start its own ranks, times with `time_cuda` / `time_host`, and hands rows of plain dicts to
`format_table` and `write_json`, with `machine_description()` beside them so that every result file
says where and how it was produced.
"""

from __future__ import annotations

import datetime
import json
import math
import argparse
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)

# Environment variables that change which link NCCL uses; recorded with every result.
LINK_ENV_PREFIXES = ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_NET", "NCCL_NVLS_ENABLE",
                     "NCCL_IB_DISABLE", "NCCL_SOCKET_IFNAME", "NCCL_ALGO", "NCCL_PROTO",
                     "CUDA_VISIBLE_DEVICES")

# Set in the ranks that `spawn_local` starts, so that they do not spawn again.
SPAWNED_ENV = "MXA2A_BENCH_SPAWNED"


# --- sizes -------------------------------------------------------------------------------------------

def parse_size(text: str | int) -> int:
    """`"1M"` -> 1048576. Accepts a plain byte count or a K/M/G/T suffix (powers of 1024, an optional
    trailing `B`/`iB`, any case) like nccl-tests' `-b/-e`."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.match(str(text))
        if match is None:
            raise ValueError(f"size must be a byte count like 4096, 256K, 1M or 1G, got {text!r}")
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


def size_arg(text: str) -> int:
    """`parse_size` as an argparse `type=` (bad sizes become usage errors)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_size(nbytes: int) -> str:
    """Shortest exact binary form: 1048576 -> `1M`, 1536 -> `1.5K`, 73 -> `73`."""
    for unit in ("T", "G", "M", "K"):
        scale = _SIZE_UNITS[unit]
        if nbytes >= scale and (nbytes * 100) % scale == 0:
            return f"{nbytes / scale:g}{unit}"
    return str(nbytes)


def size_sweep(minbytes: int, maxbytes: int, stepfactor: float) -> list[int]:
    """Sizes `minbytes, minbytes*f, ...` up to and including `maxbytes` (nccl-tests `-b -e -f`)."""
    if maxbytes < minbytes:
        raise ValueError(f"maxbytes ({maxbytes}) must be >= minbytes ({minbytes})")
    if stepfactor <= 1 and maxbytes != minbytes:
        raise ValueError(f"stepfactor must be > 1 to sweep from {minbytes} to {maxbytes}, got {stepfactor}")
    sizes = [minbytes]
    while stepfactor > 1:
        nxt = int(round(sizes[-1] * stepfactor))
        if nxt > maxbytes:
            break
        sizes.append(nxt)
    return sizes


# --- launch ------------------------------------------------------------------------------------------

def launcher() -> str | None:
    """Which launcher started this process: `"torchrun"`, `"mpi"` or None (a plain process)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        return "torchrun"
    mpi_vars = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
    if any(v in os.environ for v in mpi_vars):
        return "mpi"
    return None


def resolve_nproc(value: str) -> int:
    """`--nproc` value: a positive count, or `auto` = every local GPU, or 2 CPU ranks without one."""
    if value == "auto":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 2
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--nproc must be a positive integer or 'auto', got {value!r}")
    return n


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_or_spawn(parser: "argparse.ArgumentParser", args: "argparse.Namespace",
                 run: Callable[["argparse.Namespace"], int]) -> int:
    """The benchmarks' entry: with `--nproc N`, outside a launcher and not already a spawned rank, start N
    local ranks of this script (`spawn_local`); otherwise `run(args)` in this process."""
    if args.nproc is not None and os.environ.get(SPAWNED_ENV) != "1":
        if launcher() is not None:
            parser.error(f"--nproc starts its own ranks; it cannot run under {launcher()}")
        try:
            nproc = resolve_nproc(args.nproc)
        except ValueError as exc:
            parser.error(str(exc))
        return spawn_local(nproc)
    return run(args)


def spawn_local(nproc: int, argv: Sequence[str] | None = None, *, grace_s: float = 30.0) -> int:
    """Run this script again as `nproc` local ranks with the torchrun environment (RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and wait for them; returns the worst exit
    code. Every other variable, NCCL settings included, passes through unchanged. When one rank fails
    the others get `grace_s` seconds to finish (they may be stuck in a collective), then are killed."""
    argv = list(sys.argv if argv is None else argv)
    port = _free_port()
    procs: list[subprocess.Popen] = []
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env[SPAWNED_ENV] = "1"
        procs.append(subprocess.Popen([sys.executable, *argv], env=env))
    try:
        failed_at: float | None = None
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        failed_at = time.monotonic()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    bad = [c for c in codes if c != 0]
    return bad[0] if bad else 0


def parse_with_quick(parser: "argparse.ArgumentParser", argv: Sequence[str] | None,
                     quick: dict[str, Any]) -> "argparse.Namespace":
    """Add `--quick` (a tiny CPU smoke configuration: `quick`'s values replace the parsed ones),
    `--json PATH` and `--png PATH`, then parse `argv`."""
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke configuration (seconds)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--png", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        for k, v in quick.items():
            setattr(args, k, v)
    return args


def choice_list(parser: "argparse.ArgumentParser", text: str, known: Iterable[str], what: str) -> list[str]:
    """`"a,b"` -> `["a", "b"]`, a usage error unless every name is in `known`."""
    names, known = text.split(","), tuple(known)
    unknown = set(names) - set(known)
    if unknown:
        parser.error(f"unknown {what} {sorted(unknown)}; choose from {known}")
    return names


# --- timing ------------------------------------------------------------------------------------------

def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of no values")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def time_cuda(fn: Callable[[], Any], iters: int, warmup: int, queue_ahead: bool = False) -> list[float]:
    """Microseconds of each of `iters` calls of `fn`, by CUDA events on the current stream, after
    `warmup` untimed calls. The calls run back to back; the host syncs once at the end.

    `queue_ahead`: the stream first spins for about 20 ms, so that the host has enqueued every timed
    call before the GPU reaches it and the events time the kernels alone. Without it, a kernel shorter
    than the host's launch path (argument checks, allocations, the launcher) is timed at the host's pace."""
    import torch

    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    torch.cuda.synchronize()
    if queue_ahead:
        torch.cuda._sleep(40_000_000)  # GPU clock cycles: about 20 ms at 2 GHz
    for i in range(iters):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]


def time_host(fn: Callable[[], Any], iters: int, warmup: int,
              barrier: Callable[[], Any] | None = None) -> list[float]:
    """Microseconds of each of `iters` calls of `fn` by `time.perf_counter`, each call preceded by
    `barrier()` (when given) so that every rank starts together; for CPU runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if barrier is not None:
            barrier()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return times


# --- machine description ---------------------------------------------------------------------------

def machine_description(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and how a result was produced: host, date, command line, Python/torch/Triton/NCCL
    versions, GPU name and count, and the link-related environment variables."""
    import torch

    desc: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
    }
    try:
        import triton

        desc["triton"] = triton.__version__
    except ImportError:
        desc["triton"] = None
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        desc["gpu"] = torch.cuda.get_device_name(0)
        desc["gpu_count"] = count
        desc["gpu_names"] = sorted({torch.cuda.get_device_name(i) for i in range(count)})
        try:
            version = torch.cuda.nccl.version()
            desc["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as exc:  # NCCL missing from this torch build
            desc["nccl"] = f"unavailable ({exc})"
    else:
        desc["gpu"] = None
        desc["gpu_count"] = 0
        desc["nccl"] = None
    desc["env"] = {k: v for k, v in sorted(os.environ.items())
                   if any(k.startswith(p) for p in LINK_ENV_PREFIXES)}
    if extra:
        desc.update(extra)
    return desc


def link_label(env: dict[str, str] | None = None) -> str:
    """Which link NCCL was steered to by the environment: the three settings of the README."""
    env = os.environ if env is None else env
    p2p_off = env.get("NCCL_P2P_DISABLE", "0") not in ("", "0")
    shm_off = env.get("NCCL_SHM_DISABLE", "0") not in ("", "0")
    if p2p_off and shm_off:
        return "sockets/net (NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1)"
    if p2p_off:
        return "host memory (NCCL_P2P_DISABLE=1)"
    if shm_off:
        return "default P2P, SHM off (NCCL_SHM_DISABLE=1)"
    return "default (NVLink/P2P within a node)"


# --- output ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header, how to print a value, and the width (None prints `-`)."""
    key: str
    header: str
    fmt: str = "{}"
    width: int = 10


def format_header(columns: Sequence[Column]) -> str:
    """The header line, starting with `#` like nccl-tests; rows from `format_row` line up under it."""
    return "#" + "  ".join(c.header.rjust(c.width) for c in columns)


def format_row(columns: Sequence[Column], row: dict[str, Any]) -> str:
    return " " + "  ".join(_cell(c, row.get(c.key)).rjust(c.width) for c in columns)


def format_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    return "\n".join([format_header(columns), *(format_row(columns, r) for r in rows)])


def _cell(column: Column, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return column.fmt.format(value)


class Progress:
    """`[i/n] label` on stderr: on a terminal tqdm's bar when it is installed, else one line rewritten
    in place; a line per step in a log. `enabled=False` (ranks other than 0) prints nothing."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "") -> None:
        self.total, self.enabled, self.count, self.desc = total, enabled, 0, desc
        self._bar = None
        self._tty = sys.stderr.isatty()
        if enabled and self._tty:  # a bar in a log file is a mess of carriage returns
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
            except ImportError:
                pass

    def step(self, label: str) -> None:
        """Announce the step about to run."""
        if not self.enabled:
            return
        self.count += 1
        if self._bar is not None:
            self._bar.set_postfix_str(label)
            if self.count > 1:
                self._bar.update(1)
            return
        text = f"[{self.count}/{self.total}] {self.desc} {label}".strip()
        if self._tty:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def clear(self) -> None:
        """Erase the in-place line (call before printing to stdout on the same terminal)."""
        if self.enabled and self._bar is None and self._tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self.total - self._bar.n)
            self._bar.close()
        elif self._tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON (non-finite floats as strings, so any JSON reader accepts it)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_finite(payload), f, indent=2, default=str)
        f.write("\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
