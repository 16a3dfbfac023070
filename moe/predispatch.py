"""Pre-dispatch: a token data set stored with its routing, and the loader that serves both.

`docs/MOE.md`, "Grouter": a frozen Grouter runs offline over the data set once and each token's expert
ids and gates are stored next to it, so training reads a micro-batch's routing with its tokens and runs
no router. On disk, one directory:
    predispatch.json   the header: shapes, dtypes, file names, E, k, scaling factor, Grouter config, run_id
    tokens.bin         tokens     [N, S]    the input's integer dtype
    expert_ids.bin     expert ids [N, S, k] uint8 (E <= 256) or int16 (E <= 32768)
    gates.bin          gates      [N, S, k] float32, each row summing to the scaling factor
Each `.bin` is a raw C-order array (read as `numpy.memmap`) followed by a 24-byte trailer (`TRAILER_MAGIC`
+ the run's 16-byte id), so a file from another run is refused; the header is written last, so a directory
without one is an interrupted run. What is checked when: README, "Reliability of the MoE layer, Grouter
and loaders".
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from .grouter import Grouter

HEADER_NAME = "predispatch.json"
FILE_FORMAT = "mxa2a.predispatch"
FILE_VERSION = 2  # 2 adds the run id (header "run_id", a trailer in each .bin); 1 opens with a warning
READABLE_VERSIONS = (1, 2)
MAX_INT16_EXPERTS = 2**15
TRAILER_MAGIC = b"mxa2a.pd"
TRAILER_BYTES = len(TRAILER_MAGIC) + 16  # magic + uuid4 bytes
ARRAYS = ("tokens", "expert_ids", "gates")


def expert_id_dtype(num_experts: int) -> np.dtype:
    """`uint8` when E <= 256, else `int16` (E <= 32768)."""
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
    if num_experts <= 256:
        return np.dtype(np.uint8)
    if num_experts <= MAX_INT16_EXPERTS:
        return np.dtype(np.int16)
    raise ValueError(f"num_experts={num_experts} does not fit int16 expert ids (at most {MAX_INT16_EXPERTS})")


class MicroBatch(NamedTuple):
    """One micro-batch: `tokens` int64 `[B, S]`, `expert_ids` int64 `[B, S, k]`, `gates` fp32 `[B, S, k]`."""

    tokens: torch.Tensor
    expert_ids: torch.Tensor
    gates: torch.Tensor


@dataclass(frozen=True)
class PredispatchedData:
    """A pre-dispatched data set opened read-only: three memmaps and the header they were described by.

    `file_stats` holds each file's (size, mtime_ns, inode) at opening; `check_unchanged()` compares
    them with the files now (3 `os.stat` calls), so that a file shrunk or rewritten after opening gives
    an error before the next read instead of a SIGBUS from the memmap.
    """

    path: Path
    header: dict
    tokens: np.memmap      # [N, S]
    expert_ids: np.memmap  # [N, S, k]
    gates: np.memmap       # [N, S, k] float32
    file_stats: dict = field(default_factory=dict)

    @property
    def num_experts(self) -> int:
        return int(self.header["num_experts"])

    @property
    def top_k(self) -> int:
        return int(self.header["top_k"])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def check_unchanged(self) -> None:
        """Raise OSError naming the file if a `.bin` file changed (size, mtime or inode) since opening."""
        for file, stat in self.file_stats.items():
            now = _stat_of(file)
            if now != stat:
                raise OSError(f"{file} changed after the data set was opened (size {stat[0]} -> {now[0]} "
                              f"bytes, mtime or inode changed): reading it could crash the process "
                              f"(SIGBUS) or mix two runs; open the data set again")


def _stat_of(file: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(file)
    except FileNotFoundError:
        return (-1, -1, -1)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _check_tokens(tokens: np.ndarray) -> np.ndarray:
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.cpu().numpy()
    if not isinstance(tokens, np.ndarray):
        raise TypeError(f"tokens must be a numpy array (or memmap) of token ids [N, S], "
                        f"got {type(tokens).__name__}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must have shape [N, S] with N, S >= 1, got {tokens.shape}")
    return tokens


def _entry(name: str, arr_shape: tuple[int, ...], dtype: np.dtype) -> dict:
    return {"file": name, "dtype": np.dtype(dtype).name, "shape": list(arr_shape)}


@torch.no_grad()
def predispatch(grouter: Grouter, tokens: np.ndarray, out_dir: str | os.PathLike, *, batch_size: int = 64,
                log_every: int = 0, log=print) -> PredispatchedData:
    """Route every sequence of `tokens [N, S]` with `grouter` and store tokens, expert ids and gates.

    Runs `grouter.route` on consecutive slices of `batch_size` sequences on the Grouter's device
    (one device->host copy per slice). The stored plan is bit-identical to `grouter.route` of the same
    slices; routing other batch shapes may differ by float reassociation (a near-tie can flip), which is
    why training takes the stored plan as the truth. `out_dir` is created; an existing header there
    is an error.
    Returns the stored data opened read-only (`open_predispatched(out_dir)`).
    """
    if not isinstance(grouter, Grouter):
        raise TypeError(f"grouter must be a Grouter, got {type(grouter).__name__}")
    tokens = _check_tokens(tokens)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    cfg = grouter.config
    n, s = tokens.shape
    if s > cfg.max_seq_len:
        raise ValueError(f"tokens: sequence length {s} exceeds the Grouter's max_seq_len={cfg.max_seq_len}")
    id_dtype = expert_id_dtype(cfg.num_experts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / HEADER_NAME).exists():
        raise FileExistsError(f"{out / HEADER_NAME} exists; pre-dispatch into an empty directory")
    k = cfg.top_k
    header = {
        "format": FILE_FORMAT, "version": FILE_VERSION,
        "num_sequences": n, "seq_len": s, "num_experts": cfg.num_experts, "top_k": k,
        "scaling_factor": cfg.scaling_factor,
        "tokens": _entry("tokens.bin", (n, s), tokens.dtype),
        "expert_ids": _entry("expert_ids.bin", (n, s, k), id_dtype),
        "gates": _entry("gates.bin", (n, s, k), np.float32),
        "grouter": cfg.to_dict(),
    }
    tok_out = np.memmap(out / "tokens.bin", dtype=tokens.dtype, mode="w+", shape=(n, s))
    ids_out = np.memmap(out / "expert_ids.bin", dtype=id_dtype, mode="w+", shape=(n, s, k))
    gates_out = np.memmap(out / "gates.bin", dtype=np.float32, mode="w+", shape=(n, s, k))
    device = next(grouter.parameters()).device
    was_training = grouter.training
    grouter.eval()
    for i, start in enumerate(range(0, n, batch_size), start=1):
        chunk = np.ascontiguousarray(tokens[start:start + batch_size])
        ids, gates = grouter.route(torch.from_numpy(chunk.astype(np.int64)).to(device))
        tok_out[start:start + len(chunk)] = chunk
        ids_out[start:start + len(chunk)] = ids.cpu().numpy().astype(id_dtype)
        gates_out[start:start + len(chunk)] = gates.cpu().numpy()
        if log_every and i % log_every == 0:
            log(f"[predispatch] {min(start + batch_size, n)}/{n} sequences")
    grouter.train(was_training)
    for arr in (tok_out, ids_out, gates_out):
        arr.flush()
    del tok_out, ids_out, gates_out
    run_id = uuid.uuid4()
    header["run_id"] = run_id.hex
    for name in ARRAYS:
        with open(out / header[name]["file"], "ab") as f:
            f.write(TRAILER_MAGIC + run_id.bytes)
    tmp = out / (HEADER_NAME + ".tmp")
    tmp.write_text(json.dumps(header, indent=1))
    os.replace(tmp, out / HEADER_NAME)
    return open_predispatched(out)


def open_predispatched(path: str | os.PathLike) -> PredispatchedData:
    """Open a directory written by `predispatch` read-only, checking the files against the header.

    Checked (ValueError naming the file): the header's format and version, that the three arrays'
    shapes agree with `num_sequences`, `seq_len` and `top_k` (`[N, S]`, `[N, S, k]`, `[N, S, k]`),
    their dtypes, each file's size, and that each file's trailer carries the header's `run_id`.
    Reads only the header and 24 bytes per file; the data are checked batch by batch by the loader.
    """
    path = Path(path)
    header = _read_header(path / HEADER_NAME)
    trailer = TRAILER_BYTES if header["version"] >= 2 else 0
    maps, stats = {}, {}
    for name in ARRAYS:
        entry = header[name]
        dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
        file = path / entry["file"]
        data_bytes = int(np.prod(shape)) * dtype.itemsize
        stats[file] = _stat_of(file)
        if stats[file][0] != data_bytes + trailer:
            size = "missing" if stats[file][0] < 0 else f"{stats[file][0]} bytes"
            raise ValueError(f"{file}: expected {data_bytes + trailer} bytes ({dtype.name} {list(shape)}"
                             f"{' + trailer' if trailer else ''}), got {size}")
        if trailer:
            _check_trailer(file, data_bytes, header["run_id"])
        maps[name] = np.memmap(file, dtype=dtype, mode="r", shape=shape)
    return PredispatchedData(path, header, maps["tokens"], maps["expert_ids"], maps["gates"], stats)


def _read_header(header_file: Path) -> dict:
    if not header_file.exists():
        raise FileNotFoundError(f"{header_file} not found: not a pre-dispatched data set "
                                f"(or an interrupted run)")
    try:
        header = json.loads(header_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{header_file}: not a JSON header ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FILE_FORMAT \
            or header.get("version") not in READABLE_VERSIONS:
        got = (header.get("format"), header.get("version")) if isinstance(header, dict) else header
        raise ValueError(f"{header_file}: expected format {FILE_FORMAT!r} version in {READABLE_VERSIONS}, "
                         f"got {got!r:.120}")
    try:
        _check_header_shapes(header)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{header_file}: {err}") from err
    if header["version"] < 2:
        warnings.warn(f"{header_file}: version 1 data set without a run id: files from another run "
                      f"are not detected (pre-dispatch again to add one)", UserWarning, stacklevel=3)
    elif not (isinstance(header.get("run_id"), str) and len(header["run_id"]) == 32):
        raise ValueError(f"{header_file}: 'run_id' must be 32 hex digits, got {header.get('run_id')!r}")
    return header


def _check_header_shapes(header: dict) -> None:
    n, s, e, k = (header[key] for key in ("num_sequences", "seq_len", "num_experts", "top_k"))
    for key, value in (("num_sequences", n), ("seq_len", s), ("num_experts", e), ("top_k", k)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    expected = {"tokens": [n, s], "expert_ids": [n, s, k], "gates": [n, s, k]}
    for name, shape in expected.items():
        if header[name]["shape"] != shape:
            raise ValueError(f"{name} ({header[name]['file']}) has shape {header[name]['shape']}, but "
                             f"num_sequences, seq_len, top_k = {n}, {s}, {k} make it {shape}")
    if not np.issubdtype(np.dtype(header["tokens"]["dtype"]), np.integer):
        raise ValueError(f"tokens must be stored as integers, got {header['tokens']['dtype']}")
    if np.dtype(header["expert_ids"]["dtype"]) != expert_id_dtype(e):
        raise ValueError(f"expert ids stored as {header['expert_ids']['dtype']}, expected "
                         f"{expert_id_dtype(e).name} for E={e}")
    if np.dtype(header["gates"]["dtype"]) != np.float32:
        raise ValueError(f"gates must be stored as float32, got {header['gates']['dtype']}")


def _check_trailer(file: Path, data_bytes: int, run_id: str) -> None:
    with open(file, "rb") as f:
        f.seek(data_bytes)
        trailer = f.read(TRAILER_BYTES)
    if trailer[:len(TRAILER_MAGIC)] != TRAILER_MAGIC:
        raise ValueError(f"{file}: no pre-dispatch trailer after the {data_bytes} data bytes "
                         f"(not written by predispatch, or damaged)")
    if trailer[len(TRAILER_MAGIC):].hex() != run_id:
        raise ValueError(f"{file} belongs to pre-dispatch run {trailer[len(TRAILER_MAGIC):].hex()}, "
                         f"the header to run {run_id}: files from two runs are mixed")


class PredispatchLoader:
    """Yields `MicroBatch(tokens, expert_ids, gates)` of `batch_size` sequences from pre-dispatched data.

    Tensors are on the CPU (the host builds the dispatch plan from `expert_ids`): tokens and expert ids
    as int64, gates as fp32. `shuffle=True` permutes the sequences each epoch from `seed + epoch`;
    `drop_last=True` drops a final short batch. Every sequence appears exactly once per epoch.
    Before each batch it checks that no file changed since opening (`check_unchanged`); each batch's
    expert ids must lie in `[0, E)` and its gates be finite, else ValueError naming batch and file.
    """

    def __init__(self, data: PredispatchedData, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False) -> None:
        if not isinstance(data, PredispatchedData):
            raise TypeError(f"data must be PredispatchedData (see open_predispatched), "
                            f"got {type(data).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.data, self.batch_size = data, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[MicroBatch]:
        n = len(self.data)
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n)
        self.epoch += 1
        for b in range(len(self)):
            rows = order[b * self.batch_size:(b + 1) * self.batch_size]
            if not self.shuffle:
                rows = slice(int(rows[0]), int(rows[-1]) + 1)  # contiguous read of the memmap
            self.data.check_unchanged()  # a file shrunk since opening would SIGBUS in the reads below
            ids, gates = np.array(self.data.expert_ids[rows]), np.array(self.data.gates[rows])
            self._check_batch(ids, gates, b)
            yield MicroBatch(torch.from_numpy(np.array(self.data.tokens[rows], dtype=np.int64)),
                             torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(gates))

    def _check_batch(self, ids: np.ndarray, gates: np.ndarray, index: int) -> None:
        """Expert ids in `[0, E)` (min / max of the stored uint8 / int16) and finite gates."""
        e, where = self.data.num_experts, f"batch {index} of {self.data.path}"
        if ids.size and (ids.min() < 0 or ids.max() >= e):
            raise ValueError(f"{where}: expert ids outside [0, {e}) (values in [{ids.min()}, {ids.max()}]) "
                             f"in {self.data.header['expert_ids']['file']}")
        if not np.isfinite(gates).all():
            raise ValueError(f"{where}: {int((~np.isfinite(gates)).sum())} non-finite gates in "
                             f"{self.data.header['gates']['file']}")
