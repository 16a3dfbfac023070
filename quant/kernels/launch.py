"""Launch configurations of the conversion kernels: the tuned defaults and the sweep's alternatives.

A `LaunchConfig` picks a conversion's kernel (`variant`, named for how it works) and its tile and warp
counts. Every configuration of a conversion computes the same function (the tests pin the bits); only
speed differs. The wrappers and the public conversions take `config=` (default: `CONFIGS[name]`);
`benchmarks/conversion_throughput.py --sweep` times `SWEEP[name]` on a GPU and `CONFIGS` holds the
measured winners (`benchmarks/results/README.md`). Pure Python: importing it does not need Triton.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchConfig:
    """`block_m` rows x `block_k` columns of the input per program, `num_warps` warps, kernel `variant`.

    Variants and constraints per conversion (all sizes powers of two; each wrapper raises ValueError
    naming the config where it checks one):
    - `fp8_to_mxfp4`: "swar", "f32"; `block_k` a multiple of 128.
    - `mxfp4_to_fp8`: "lut", "f32"; `block_k` a multiple of 128 ("lut": `block_m * block_k / 128` a
      multiple of 8 * `num_warps`, a thread per 32-block).
    - `fp8_rowwise_to_colwise`: "words", "bytes"; `block_m` 128, `block_k` dividing 128.
    - `mxfp4_rowwise_to_colwise`: "f16x2_smem" (`block_m` a multiple of 32 * `num_warps`, `block_k` 128,
      256 or 512), "f16x2" (`block_m` a multiple of 64 * `num_warps`, `block_k` of 64), "planes"
      (both multiples of 32).
    - `mxfp4_rowwise_to_fp8_colwise`: "f16x2_tiles" (`block_m = 128 T`, `block_k = 128 S`,
      `num_warps = T S <= 8`, T in 1, 2, 4, 8), "f16x2" (`block_m` 128, `block_k` a multiple of
      128 * `num_warps`), "f32_words", "planes" (`block_m` 128, `block_k` a multiple of 32).
    """

    block_m: int
    block_k: int
    num_warps: int
    variant: str


# Each conversion's kernels, the default's first (its module docstring says what each does).
VARIANTS: dict[str, tuple[str, ...]] = {
    "fp8_to_mxfp4": ("swar", "f32"),
    "mxfp4_to_fp8": ("lut", "f32"),
    "fp8_rowwise_to_colwise": ("words", "bytes"),
    "mxfp4_rowwise_to_colwise": ("f16x2_smem", "f16x2", "planes"),
    "mxfp4_rowwise_to_fp8_colwise": ("f16x2_tiles", "f16x2", "f32_words", "planes"),
}

# The winners of the sweeps at M = 65536, K = 7168 (inputs ~10x the L2; at smaller sizes the L2 holds part
# of them and skews the ranking). Machines, dates and figures: benchmarks/results/README.md.
CONFIGS: dict[str, LaunchConfig] = {
    "fp8_to_mxfp4": LaunchConfig(2, 1024, 1, "swar"),
    "mxfp4_to_fp8": LaunchConfig(2, 1024, 2, "lut"),
    "fp8_rowwise_to_colwise": LaunchConfig(128, 128, 8, "words"),
    "mxfp4_rowwise_to_colwise": LaunchConfig(256, 512, 8, "f16x2_smem"),
    "mxfp4_rowwise_to_fp8_colwise": LaunchConfig(256, 256, 4, "f16x2_tiles"),
}


def _configs(variant: str, shapes: list[tuple[int, int, int]]) -> tuple[LaunchConfig, ...]:
    return tuple(LaunchConfig(m, k, w, variant) for m, k, w in shapes)


# Alternatives for the benchmark's --sweep, per conversion (all satisfy the constraints above).
SWEEP: dict[str, tuple[LaunchConfig, ...]] = {
    "fp8_to_mxfp4": _configs("f32", [(16, 256, 4), (32, 256, 8), (16, 512, 8), (4, 1024, 4), (8, 1024, 8),
                                     (8, 512, 4)])
    + _configs("swar", [(8, 1024, 8), (4, 1024, 4), (16, 512, 8), (8, 512, 4), (16, 256, 4), (32, 256, 8),
                        (16, 1024, 8), (1, 1024, 1), (2, 1024, 2), (8, 1024, 4), (2, 512, 1), (4, 1024, 2),
                        (2, 1024, 1), (4, 512, 1), (8, 1024, 2), (4, 512, 2)]),
    "mxfp4_to_fp8": _configs("f32", [(16, 256, 4), (32, 256, 8), (4, 1024, 4), (8, 1024, 8)])
    + _configs("lut", [(4, 1024, 4), (8, 1024, 8), (2, 1024, 2), (1, 1024, 1), (4, 512, 2), (8, 512, 4),
                       (8, 1024, 4), (16, 1024, 4), (16, 512, 4), (4, 1024, 1)]),
    "fp8_rowwise_to_colwise": _configs("bytes", [(128, 32, 1), (128, 32, 2), (128, 64, 2), (128, 64, 4)])
    + _configs("words", [(128, 128, 4), (128, 128, 8), (128, 64, 2), (128, 64, 4), (128, 32, 1), (128, 32, 2)]),
    "mxfp4_rowwise_to_colwise": _configs("planes", [(32, 64, 2), (64, 64, 4), (64, 128, 4), (128, 64, 4),
                                                    (128, 128, 8), (256, 64, 8), (64, 256, 8)])
    + _configs("f16x2", [(64, 256, 1), (64, 512, 1), (128, 256, 2), (128, 512, 2), (128, 1024, 2), (256, 256, 4),
                         (256, 512, 4), (256, 1024, 4), (128, 2048, 2), (512, 512, 8)])
    + _configs("f16x2_smem", [(256, 512, 8), (256, 256, 8), (256, 128, 8), (128, 512, 4), (128, 256, 4),
                              (512, 512, 16)]),
    "mxfp4_rowwise_to_fp8_colwise": _configs("planes", [(128, 32, 2), (128, 64, 4), (128, 128, 4), (128, 128, 8),
                                                        (128, 256, 8)])
    + _configs("f32_words", [(128, 256, 1), (128, 512, 2), (128, 1024, 4), (128, 2048, 8)])
    + _configs("f16x2", [(128, 256, 1), (128, 512, 2), (128, 1024, 2), (128, 512, 4), (128, 1024, 4),
                         (128, 2048, 4), (128, 1024, 8), (128, 2048, 8), (128, 256, 2)])
    + _configs("f16x2_tiles", [(256, 256, 4), (256, 512, 8), (512, 256, 8), (128, 256, 2), (128, 512, 4),
                               (512, 128, 4)]),
}


def pick_config(name: str, config: LaunchConfig | None) -> LaunchConfig:
    """`config`, or conversion `name`'s tuned default when it is None; raises unless it is a
    `LaunchConfig` whose `variant` is one of `VARIANTS[name]`."""
    cfg = CONFIGS[name] if config is None else config
    if not isinstance(cfg, LaunchConfig):
        raise TypeError(f"{name}: config must be a LaunchConfig or None, got {type(cfg).__name__}")
    if cfg.variant not in VARIANTS[name]:
        raise ValueError(f"{name}: config.variant must be one of {', '.join(map(repr, VARIANTS[name]))}, "
                         f"got config = {cfg}")
    return cfg
