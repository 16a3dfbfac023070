"""Pre-dispatch: a token data set stored with its routing, and the loader that serves both.

MOE.md, "Grouter": the frozen Grouter is run offline over the token data set once; each token's
expert ids (`uint8` when E <= 256, else `int16`) and gates (fp32) are stored next to the tokens, so
training reads the routing plan of a micro-batch with its tokens and never runs a router.

On disk, one directory:
    predispatch.json   the header: shapes, dtypes and file names, E, k, scaling factor, Grouter config
    tokens.bin         tokens     [N, S]    the input's integer dtype
    expert_ids.bin     expert ids [N, S, k] uint8 (E <= 256) or int16 (E <= 32768)
    gates.bin          gates      [N, S, k] float32, each row summing to the scaling factor
The `.bin` files are raw C-order arrays read as `numpy.memmap`. The header is written last, so a
directory without one is an interrupted run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from .grouter import Grouter

HEADER_NAME = "predispatch.json"
FILE_FORMAT = "mxa2a.predispatch"
FILE_VERSION = 1
MAX_INT16_EXPERTS = 2**15


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
    """A pre-dispatched data set opened read-only: three memmaps and the header they were described by."""

    path: Path
    header: dict
    tokens: np.memmap      # [N, S]
    expert_ids: np.memmap  # [N, S, k]
    gates: np.memmap       # [N, S, k] float32

    @property
    def num_experts(self) -> int:
        return int(self.header["num_experts"])

    @property
    def top_k(self) -> int:
        return int(self.header["top_k"])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


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
    tmp = out / (HEADER_NAME + ".tmp")
    tmp.write_text(json.dumps(header, indent=1))
    os.replace(tmp, out / HEADER_NAME)
    return open_predispatched(out)


def open_predispatched(path: str | os.PathLike) -> PredispatchedData:
    """Open a directory written by `predispatch` read-only, checking the files against the header."""
    path = Path(path)
    header_file = path / HEADER_NAME
    if not header_file.exists():
        raise FileNotFoundError(f"{header_file} not found: not a pre-dispatched data set "
                                f"(or an interrupted run)")
    header = json.loads(header_file.read_text())
    if header.get("format") != FILE_FORMAT or header.get("version") != FILE_VERSION:
        raise ValueError(f"{header_file}: expected format {FILE_FORMAT!r} version {FILE_VERSION}, "
                         f"got {header.get('format')!r} version {header.get('version')!r}")
    expected_ids = expert_id_dtype(int(header["num_experts"]))
    if np.dtype(header["expert_ids"]["dtype"]) != expected_ids:
        raise ValueError(f"{header_file}: expert ids stored as {header['expert_ids']['dtype']}, "
                         f"expected {expected_ids.name} for E={header['num_experts']}")
    maps = {}
    for name in ("tokens", "expert_ids", "gates"):
        entry = header[name]
        dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
        file = path / entry["file"]
        expected_bytes = int(np.prod(shape)) * dtype.itemsize
        if not file.exists() or file.stat().st_size != expected_bytes:
            size = file.stat().st_size if file.exists() else "missing"
            raise ValueError(f"{file}: expected {expected_bytes} bytes ({dtype.name} {list(shape)}), "
                             f"got {size}")
        maps[name] = np.memmap(file, dtype=dtype, mode="r", shape=shape)
    return PredispatchedData(path, header, maps["tokens"], maps["expert_ids"], maps["gates"])


class PredispatchLoader:
    """Yields `MicroBatch(tokens, expert_ids, gates)` of `batch_size` sequences from pre-dispatched data.

    Tensors are on the CPU (the host builds the dispatch plan from `expert_ids`): tokens and expert ids
    as int64, gates as fp32. `shuffle=True` permutes the sequences each epoch from `seed + epoch`;
    `drop_last=True` drops a final short batch. Every sequence appears exactly once per epoch.
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
            yield MicroBatch(
                torch.from_numpy(np.array(self.data.tokens[rows], dtype=np.int64)),
                torch.from_numpy(np.array(self.data.expert_ids[rows], dtype=np.int64)),
                torch.from_numpy(np.array(self.data.gates[rows], dtype=np.float32)),
            )
