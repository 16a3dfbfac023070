"""mxa2a.comm: drop-in replacements for `torch.distributed.all_to_all_single` / `all_to_all` that send
MXFP4 / FP8 / bf16 rows instead of the input's bytes, a differentiable variant, and a launch helper
for torchrun and mpirun."""

from .all_to_all import AllToAllWork, all_to_all, all_to_all_single, release_staging_buffers
from .autograd import all_to_all_autograd
from .launch import DistInfo, init_distributed

__all__ = ["AllToAllWork", "all_to_all", "all_to_all_single", "all_to_all_autograd", "DistInfo",
           "init_distributed", "release_staging_buffers"]
