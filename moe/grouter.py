"""The Grouter: a small, separate, frozen network that fixes MoE routing from token ids alone.

MOE.md, "Grouter": token embedding -> N transformer blocks -> linear score layer `[E, d]`; routing is
the top-k of its logits and the gates are the softmax over those k logits times `scaling_factor`
(2.5 in the published setup). It never reads the model's hidden states, so the routing of a whole
micro-batch is known before the forward pass and one plan drives every MoE layer. Attention is causal
by default: a bidirectional Grouter would let a token's routing depend on later tokens, which leaks the
future in causal language modelling; `causal=False` is there for other objectives.

Files are plain dicts `{"format", "version", "config", "state_dict", "checksum"}` written by
`torch.save` and read back with `weights_only=True` (no pickled classes); `load_grouter` checks the
keys, the config, every tensor's name and shape against that config (before allocating the model) and
the SHA-256 of the tensors, see `save_grouter` / `load_grouter`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

FILE_FORMAT = "mxa2a.grouter"
FILE_VERSION = 2  # 2 adds "checksum"; version 1 files (no checksum) load with a warning
READABLE_VERSIONS = (1, 2)
CHECKSUM_ALGORITHM = "sha256"


@dataclass(frozen=True)
class GrouterConfig:
    """Shape of a Grouter. `num_experts` (E) and `top_k` (k) fix what it routes to; the rest is its size."""

    vocab_size: int
    num_experts: int
    top_k: int
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    max_seq_len: int = 2048
    mlp_ratio: int = 4
    causal: bool = True
    scaling_factor: float = 2.5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_experts", "top_k", "d_model", "n_heads", "max_seq_len", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GrouterConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.n_layers, int) or isinstance(self.n_layers, bool) or self.n_layers < 0:
            raise ValueError(f"GrouterConfig.n_layers must be an int >= 0, got {self.n_layers!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"GrouterConfig.top_k must be <= num_experts ({self.num_experts}), "
                             f"got {self.top_k}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"GrouterConfig.d_model ({self.d_model}) must be a multiple of "
                             f"n_heads ({self.n_heads})")
        if not isinstance(self.causal, bool):
            raise TypeError(f"GrouterConfig.causal must be a bool, got {type(self.causal).__name__}")
        if not isinstance(self.scaling_factor, (int, float)) or not self.scaling_factor > 0:
            raise ValueError(f"GrouterConfig.scaling_factor must be a number > 0, "
                             f"got {self.scaling_factor!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GrouterConfig":
        if not isinstance(d, dict):
            raise TypeError(f"GrouterConfig.from_dict takes a dict of field values, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"GrouterConfig: unknown keys {sorted(unknown)}; "
                             f"expected a subset of {sorted(known)}")
        return cls(**d)


def topk_gates(logits: torch.Tensor, top_k: int,
               scaling_factor: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing of `logits [..., E]`: returns `(ids int64 [..., k], gates float32 [..., k])`.

    `ids` are the k largest logits' experts in descending logit order; `gates` are the softmax over
    those k logits (in fp32) times `scaling_factor`, so each row of gates sums to `scaling_factor`.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor [..., E], got {got}")
    if logits.dim() < 1:
        raise ValueError("logits must have shape [..., E], got a 0-d tensor")
    num_experts = logits.shape[-1]
    if not isinstance(top_k, int) or not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be an int in [1, E={num_experts}], got {top_k!r}")
    values, ids = torch.topk(logits.float(), top_k, dim=-1, sorted=True)
    gates = torch.softmax(values, dim=-1) * scaling_factor
    return ids, gates


class _SelfAttention(nn.Module):
    def __init__(self, cfg: GrouterConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for t in (q, k, v))  # (B, h, S, d/h)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))  # (B, S, d)


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GrouterConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = _SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Grouter(nn.Module):
    """Token ids -> expert logits. `features` is everything up to the score layer; `score` is `[E, d]`.

    `forward(ids)` takes `ids [S]` or `[B, S]` (any integer dtype, values in `[0, vocab_size)`,
    `S <= max_seq_len`) and returns fp32 logits `[S, E]` / `[B, S, E]`; it is differentiable, for
    training. `route(ids)` is the frozen use: no autograd, returns `(ids int64 [..., k], gates fp32
    [..., k])`. `route` and `forward` check the id range, which reads `ids.min()/max()` on the host
    (one device->host sync per call; the Grouter runs offline or ahead of the step, not inside a layer).
    """

    def __init__(self, config: GrouterConfig) -> None:
        super().__init__()
        if not isinstance(config, GrouterConfig):
            raise TypeError(f"config must be a GrouterConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.score = nn.Linear(config.d_model, config.num_experts, bias=False)  # weight [E, d]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"ids must be a torch.Tensor of token ids [S] or [B, S], "
                            f"got {type(ids).__name__}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"ids must be an integer tensor of token ids, got dtype {ids.dtype}")
        if ids.dim() not in (1, 2):
            raise ValueError(f"ids must have shape [S] or [B, S], got {tuple(ids.shape)}")
        if ids.shape[-1] > self.config.max_seq_len:
            raise ValueError(f"ids: sequence length {ids.shape[-1]} exceeds "
                             f"max_seq_len={self.config.max_seq_len}")
        if ids.numel() > 0:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"ids must lie in [0, vocab_size={self.config.vocab_size}), "
                                 f"got values in [{lo}, {hi}]")
        return ids.long()

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """Hidden states before the score layer: `[S, d]` or `[B, S, d]` in the module's dtype."""
        ids = self._check_ids(ids)
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids.unsqueeze(0)
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.tok_emb(ids) + self.pos_emb(pos)  # (B, S, d)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return x.squeeze(0) if squeeze else x

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(ids)).float()

    @torch.no_grad()
    def route(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen routing: `(expert ids int64 [..., k], gates fp32 [..., k])`, gates summing to
        `scaling_factor`. No autograd graph is built."""
        return topk_gates(self(ids), self.config.top_k, self.config.scaling_factor)

    def freeze(self) -> "Grouter":
        """Eval mode and no gradients: the Grouter is frozen while the target model trains."""
        self.eval()
        self.requires_grad_(False)
        return self

    def save(self, path: str | os.PathLike) -> None:
        save_grouter(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "Grouter":
        return load_grouter(path, map_location)


def tensor_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the tensors of a state dict: each name, dtype, shape and raw bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # a buffer: no copy
    return digest.hexdigest()


def save_grouter(grouter: Grouter, path: str | os.PathLike) -> None:
    """Write `{"format", "version", "config": dict, "state_dict": {name: tensor}, "checksum":
    {"algorithm": "sha256", "digest": hex}}` with `torch.save` (see `tensor_checksum`)."""
    if not isinstance(grouter, Grouter):
        raise TypeError(f"grouter must be a Grouter, got {type(grouter).__name__}")
    state = {k: v.detach().cpu() for k, v in grouter.state_dict().items()}
    torch.save({"format": FILE_FORMAT, "version": FILE_VERSION, "config": grouter.config.to_dict(),
                "state_dict": state,
                "checksum": {"algorithm": CHECKSUM_ALGORITHM, "digest": tensor_checksum(state)}}, path)


def load_grouter(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Grouter:
    """Rebuild a Grouter saved by `save_grouter` (read with `weights_only=True`), in eval mode.

    Raises ValueError naming the file and what is wrong for an empty, truncated or foreign file, a
    missing key, a config that is not a valid `GrouterConfig` dict, tensors whose names or shapes do
    not fit that config (checked on the meta device, before anything is allocated), and tensors whose
    SHA-256 differs from the stored one. A version 1 file (before checksums) loads with a UserWarning.
    Hashing reads every byte once more (1.7 GB/s on one core of the CPU development machine).
    """
    name = os.fspath(path)
    blob = _read_blob(name)
    config = _config_of(blob, name)
    state = blob["state_dict"]
    _check_tensors(state, config, name)
    _check_checksum(blob, state, name)
    grouter = Grouter(config)
    grouter.load_state_dict(state)
    return grouter.to(map_location).eval()


def _read_blob(name: str) -> dict:
    if not os.path.isfile(name):
        raise FileNotFoundError(f"Grouter file {name!r} not found")
    if os.path.getsize(name) == 0:
        raise ValueError(f"Grouter file {name!r} is empty (0 bytes)")
    try:
        blob = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, flipped pickle bytes, refused classes, ...
        raise ValueError(f"Grouter file {name!r} ({os.path.getsize(name)} bytes) cannot be read by "
                         f"torch.load(weights_only=True): truncated, corrupt or not a Grouter file "
                         f"({type(err).__name__}: {err})") from err
    if not isinstance(blob, dict) or blob.get("format") != FILE_FORMAT:
        raise ValueError(f"{name!r} is not a Grouter file (expected a dict with format={FILE_FORMAT!r})")
    if blob.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{name!r}: unsupported Grouter file version {blob.get('version')!r}, "
                         f"expected one of {READABLE_VERSIONS}")
    required = {"config", "state_dict"} | ({"checksum"} if blob["version"] >= 2 else set())
    missing = sorted(required - set(blob))
    if missing:
        raise ValueError(f"{name!r}: Grouter file version {blob['version']} lacks the keys {missing}")
    return blob


def _config_of(blob: dict, name: str) -> GrouterConfig:
    config = blob["config"]
    if not isinstance(config, dict):
        raise ValueError(f"{name!r}: 'config' must be a dict of GrouterConfig fields, "
                         f"got {type(config).__name__} {config!r:.80}")
    try:
        return GrouterConfig.from_dict(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name!r}: invalid Grouter config: {err}") from err


def _check_tensors(state: object, config: GrouterConfig, name: str) -> None:
    """Names and shapes of `state` against a Grouter of `config` built on the meta device (no memory)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{name!r}: 'state_dict' must be a dict of tensors, got {type(state).__name__}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Grouter(config).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{name!r}: the tensors do not match the config: missing {missing}, "
                         f"unexpected {unexpected}")
    wrong = [f"{k} {tuple(state[k].shape)} (config: {expected[k]})" for k in sorted(expected)
             if tuple(state[k].shape) != expected[k]]
    if wrong:
        raise ValueError(f"{name!r}: tensor shapes do not match the config: {', '.join(wrong)}")


def _check_checksum(blob: dict, state: dict, name: str) -> None:
    if blob["version"] < 2:
        warnings.warn(f"{name!r} is a version {blob['version']} Grouter file without a checksum: its "
                      f"tensors are not verified (save it again to add one)", UserWarning, stacklevel=3)
        return
    stored = blob["checksum"]
    if not isinstance(stored, dict) or stored.get("algorithm") != CHECKSUM_ALGORITHM \
            or not isinstance(stored.get("digest"), str):
        raise ValueError(f"{name!r}: 'checksum' must be {{'algorithm': {CHECKSUM_ALGORITHM!r}, "
                         f"'digest': hex}}, got {stored!r:.120}")
    actual = tensor_checksum(state)
    if actual != stored["digest"]:
        raise ValueError(f"{name!r}: the tensors' SHA-256 is {actual}, the file says {stored['digest']}: "
                         f"the file was changed or damaged after it was saved")
