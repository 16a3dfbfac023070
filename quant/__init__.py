"""mxa2a.quant: MXFP4 (E2M1 + E8M0 per 32) and FP8 (E4M3, 1x128 power-of-two tiles) codecs.

Formats and containers: `formats.py`; the spec in torch: `reference.py`; Triton kernels: `kernels/`;
public functions with backend choice: `codecs.py`; direct conversions between the formats
(FP8 <-> MXFP4, row-wise -> column-wise): `conversions.py`.
"""

from .codecs import dequantize_fp8, dequantize_mxfp4, quantize_fp8, quantize_mxfp4
from .conversions import (fp8_rowwise_to_colwise, fp8_to_mxfp4, mxfp4_rowwise_to_colwise,
                          mxfp4_rowwise_to_fp8_colwise, mxfp4_to_fp8)
from .formats import FP8Tensor, MXFP4Tensor

__all__ = [
    "MXFP4Tensor",
    "FP8Tensor",
    "quantize_mxfp4",
    "dequantize_mxfp4",
    "quantize_fp8",
    "dequantize_fp8",
    "fp8_to_mxfp4",
    "mxfp4_to_fp8",
    "fp8_rowwise_to_colwise",
    "mxfp4_rowwise_to_colwise",
    "mxfp4_rowwise_to_fp8_colwise",
]
