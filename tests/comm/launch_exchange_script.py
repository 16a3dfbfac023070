"""Run by test_launch.py under mpirun, torchrun or plain python: join through init_distributed(), do one
uneven MXFP4 exchange, check it against torch.distributed's exchange of the quantize-dequantized rows,
and print one line `OK rank/world local_rank`."""

from datetime import timedelta

import torch
import torch.distributed as dist

from mxa2a.comm import all_to_all_single, init_distributed
from mxa2a.quant import reference as R


def main() -> None:
    info = init_distributed(timeout=timedelta(seconds=60))
    assert init_distributed() == info  # idempotent
    rank, world = info.rank, info.world_size
    assert (rank, world) == (dist.get_rank(), dist.get_world_size())
    ins = [(rank + j) % 3 + 1 for j in range(world)]
    outs = [(i + rank) % 3 + 1 for i in range(world)]
    x = torch.randn(sum(ins), 256, device=info.device) * (rank + 1)
    out = torch.empty(sum(outs), 256, device=info.device)
    all_to_all_single(out, x, outs, ins, wire="mxfp4")
    want = torch.empty_like(out)
    dist.all_to_all_single(want, R.dequantize_mxfp4(R.quantize_mxfp4(x.cpu(), "rceil"), torch.float32)
                           .to(info.device), outs, ins)
    assert torch.equal(out, want), "exchange differs from the reference"
    print(f"OK {rank}/{world} {info.local_rank} {info.device}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
