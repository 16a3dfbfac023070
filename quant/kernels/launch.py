"""Launch configurations of the conversion kernels, in one table.

Tile sizes and warps only change speed, never bits (every configuration computes the same function;
the tests pin the bits). `benchmarks/conversion_throughput.py --sweep` times alternatives on a GPU;
`CONFIGS` holds the measured winners.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchConfig:
    """`block_m` rows x `block_k` columns of the input per program, `num_warps` warps.

    Constraints: FP8-tile kernels need `block_k` a multiple of 128 (`fp8_to_mxfp4`, `mxfp4_to_fp8`);
    `fp8_rowwise_to_colwise` needs `block_m == 128` and `block_k` dividing 128;
    `mxfp4_rowwise_to_fp8_colwise` needs `block_m == 128` and `block_k` a multiple of 32 (variant 3: of
    128 * `num_warps`; variant 4: `block_m = 128 T`, `block_k = 128 S`, `num_warps = T S <= 8`, T in 1, 2, 4, 8);
    `mxfp4_rowwise_to_colwise` needs both multiples of 32 (variant 3: `block_m` a multiple of 64 * `num_warps`,
    `block_k` of 64; variant 4: `block_m` a multiple of 32 * `num_warps`, `block_k` 128, 256 or 512). All
    powers of two.

    `variant` picks a kernel body where a conversion has several (same bits, different schedule); variant 3
    of `mxfp4_to_fp8` (table lookups with a byte permute) needs `block_m * block_k / 128` to be a multiple of
    8 * `num_warps` (a thread per 32-block); variant 4 of `fp8_rowwise_to_colwise` works on 4x4-byte blocks
    of int32 words (see `transpose_fp8.py`);
    0 is the original; 1 for `fp8_to_mxfp4` / `mxfp4_to_fp8` takes each block maximum from the integer maximum of its
    codes and scales every value by one per-block power of two; 1 for the MXFP4 transposes quantizes in the input layout (even / odd column
    nibble planes, column-wise block maxima as reductions over rows) and transposes only the output
    bytes, instead of interleaving the nibbles and transposing fp32 values; 3 for `mxfp4_rowwise_to_colwise`
    and `mxfp4_rowwise_to_fp8_colwise` computes on packed fp16 pairs (see `transpose.py`,
    `transpose_mxfp4_fp8.py`); 4 for `mxfp4_rowwise_to_fp8_colwise` is variant 3 on several 128-row tiles per
    program, whose scale bytes leave together; 4 for `mxfp4_rowwise_to_colwise` is variant 3's arithmetic
    with one word per lane, scale bytes held in registers and passed between lanes, and whole-line stores
    through shared memory (`transpose_mxfp4.py`)."""

    block_m: int
    block_k: int
    num_warps: int = 4
    variant: int = 0


# The winners of the sweeps on one H200 at M = 65536, K = 7168 (inputs ~10x the L2; at 16384 the L2 holds
# part of them and skews the ranking), 2026-11-26 (benchmarks/results/conversion_throughput_h200_1126.*,
# conversion_ncu_h200.txt; mxfp4_rowwise_to_fp8_colwise: mxfp4_fp8_colwise_v4_h200_1126.txt);
# mxfp4_rowwise_to_colwise: one H100, 2026-11-26 (mxfp4_colwise_v4_h100_1126.txt, mxfp4_colwise_v4_h100_1126b.txt).
CONFIGS: dict[str, LaunchConfig] = {
    "fp8_to_mxfp4": LaunchConfig(2, 1024, 1, 2),
    "mxfp4_to_fp8": LaunchConfig(2, 1024, 2, 3),
    "fp8_rowwise_to_colwise": LaunchConfig(128, 128, 8, 4),
    "mxfp4_rowwise_to_colwise": LaunchConfig(256, 512, 8, 4),
    "mxfp4_rowwise_to_fp8_colwise": LaunchConfig(256, 256, 4, 4),
}

# Alternatives for the benchmark's --sweep, per kernel (all satisfy the constraints above).
SWEEP: dict[str, tuple[LaunchConfig, ...]] = {
    "fp8_to_mxfp4": tuple(LaunchConfig(m, k, w, v) for m, k, w, v in
                          [(16, 256, 4, 0), (32, 256, 8, 0), (16, 512, 8, 0), (4, 1024, 4, 0),
                           (16, 256, 4, 1), (32, 256, 8, 1), (16, 512, 8, 1), (4, 1024, 4, 1), (8, 1024, 8, 1),
                           (8, 512, 4, 1),
                           (8, 1024, 8, 2), (4, 1024, 4, 2), (16, 512, 8, 2), (8, 512, 4, 2), (16, 256, 4, 2),
                           (32, 256, 8, 2), (16, 1024, 8, 2), (1, 1024, 1, 2), (2, 1024, 2, 2), (8, 1024, 4, 2),
                           (2, 512, 1, 2), (4, 1024, 2, 2), (2, 1024, 1, 2), (4, 512, 1, 2), (8, 1024, 2, 2),
                           (4, 512, 2, 2)]),
    "mxfp4_to_fp8": tuple(LaunchConfig(m, k, w, v) for m, k, w, v in
                          [(16, 256, 4, 0), (32, 256, 8, 0), (4, 1024, 4, 0),
                           (16, 256, 4, 1), (32, 256, 8, 1), (4, 1024, 4, 1), (8, 1024, 8, 1),
                           (8, 1024, 8, 2), (4, 1024, 4, 2), (16, 512, 8, 2), (8, 512, 4, 2), (16, 256, 4, 2),
                           (32, 256, 8, 2),
                           (4, 1024, 4, 3), (8, 1024, 8, 3), (2, 1024, 2, 3), (1, 1024, 1, 3), (4, 512, 2, 3),
                           (8, 512, 4, 3), (8, 1024, 4, 3), (16, 1024, 4, 3), (16, 512, 4, 3), (4, 1024, 1, 3)]),
    "fp8_rowwise_to_colwise": tuple(LaunchConfig(128, k, w, v) for k, w, v in
                                    [(64, 4, 0), (64, 8, 0), (128, 8, 0), (128, 16, 0), (64, 4, 1),
                                     (32, 2, 2), (64, 4, 2), (128, 4, 2), (128, 8, 2),
                                     (32, 1, 3), (32, 2, 3), (64, 2, 3), (64, 4, 3),
                                     (128, 4, 4), (128, 8, 4), (64, 2, 4), (64, 4, 4), (32, 1, 4), (32, 2, 4)]),
    "mxfp4_rowwise_to_colwise": tuple(LaunchConfig(m, k, w, v) for m, k, w, v in
                                      [(64, 64, 4, 0), (128, 128, 8, 0),
                                       (32, 64, 2, 1), (64, 64, 4, 1), (64, 128, 4, 1), (128, 64, 4, 1),
                                       (128, 128, 8, 1), (256, 64, 8, 1), (64, 256, 8, 1),
                                       (32, 256, 1, 2), (32, 512, 2, 2), (32, 1024, 4, 2), (64, 512, 2, 2),
                                       (64, 1024, 4, 2), (32, 2048, 8, 2),
                                       (64, 256, 1, 3), (64, 512, 1, 3), (128, 256, 2, 3), (128, 512, 2, 3),
                                       (128, 1024, 2, 3), (256, 256, 4, 3), (256, 512, 4, 3), (256, 1024, 4, 3),
                                       (128, 2048, 2, 3), (512, 512, 8, 3),
                                       (256, 512, 8, 4), (256, 256, 8, 4), (256, 128, 8, 4), (128, 512, 4, 4),
                                       (128, 256, 4, 4), (512, 512, 16, 4)]),
    "mxfp4_rowwise_to_fp8_colwise": tuple(LaunchConfig(128, k, w, v) for k, w, v in
                                          [(64, 4, 0), (128, 4, 0),
                                           (32, 2, 1), (64, 4, 1), (128, 4, 1), (128, 8, 1), (256, 8, 1),
                                           (256, 1, 2), (512, 2, 2), (1024, 4, 2), (2048, 8, 2),
                                           (256, 1, 3), (512, 2, 3), (1024, 2, 3), (512, 4, 3), (1024, 4, 3),
                                           (2048, 4, 3), (1024, 8, 3), (2048, 8, 3), (256, 2, 3)])
                                          + tuple(LaunchConfig(m, k, w, 4) for m, k, w in
                                                  [(256, 256, 4), (256, 512, 8), (512, 256, 8), (128, 256, 2),
                                                   (128, 512, 4), (512, 128, 4)]),
}
