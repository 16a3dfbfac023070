"""torchtitan's own routed experts (AllToAllTokenDispatcher + GroupedExperts) with expert parallelism,
their token exchanges sent by mxa2a: one import, one call naming the wires.

Launch: `torchrun --standalone --nproc-per-node 2 examples/torchtitan_ep.py` (CPU: gloo; GPUs: NCCL, one
per rank). Each rank builds the same layer (E experts, E / world of them local), runs forward and backward
once per wire setting on the same tokens and prints the output's and the input gradient's relative
error against the all-raw run (bit-identical to torchtitan without mxa2a), then `--compile` repeats the
lossy run under torch.compile(fullgraph=True).
"""

from __future__ import annotations

import argparse

import torch
from torch.distributed.device_mesh import init_device_mesh
from torchtitan.distributed.spmd_types import set_spmd_meshes
from torchtitan.models.common.moe import GroupedExperts, RoutedExperts
from torchtitan.models.common.token_dispatcher import AllToAllTokenDispatcher

from mxa2a.comm import init_distributed
from mxa2a.integrations.torchtitan import use_mxa2a

SETTINGS = {
    "raw": {},
    "fp8 dispatch, bf16 combine": dict(dispatch="fp8", combine="bf16"),
    "mxfp4 both, fp8 gradients": dict(dispatch="mxfp4", combine="mxfp4", dispatch_grad="fp8", combine_grad="fp8"),
}


def build(world: int, dim: int, hidden: int, experts: int, top_k: int, device: torch.device) -> RoutedExperts:
    cfg = RoutedExperts.Config(inner_experts=GroupedExperts.Config(dim=dim, hidden_dim=hidden,
                                                                   num_experts=experts // world),
                               token_dispatcher=AllToAllTokenDispatcher.Config(num_experts=experts, top_k=top_k))
    layer = cfg.build().to(device)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, dim ** -0.5)
    return layer


def step(layer, x, scores, ids, counts) -> tuple[torch.Tensor, torch.Tensor]:
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = layer(x, scores, ids, counts)
    out.square().sum().backward()
    return out.detach(), x.grad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    info = init_distributed()
    mesh = init_device_mesh(info.device.type, (info.world_size,), mesh_dim_names=("ep",))
    set_spmd_meshes(dense_mesh=mesh, sparse_mesh=mesh)
    torch.manual_seed(0)  # the same weights on every rank; each rank keeps its own experts' share
    layer = build(info.world_size, args.dim, 2 * args.dim, args.experts, 2, info.device)
    layer.token_dispatcher.wire_meshes(ep_mesh=mesh)

    torch.manual_seed(1 + info.rank)
    x = torch.randn(1, args.tokens, args.dim, device=info.device)
    logits = torch.randn(1, args.tokens, args.experts, device=info.device)
    scores, ids = logits.softmax(-1).topk(2, dim=-1)
    counts = torch.bincount(ids.flatten(), minlength=args.experts)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    exact = None
    for name, wires in SETTINGS.items():
        use_mxa2a(layer, **wires)
        out, grad = step(layer, x, scores, ids, counts)
        exact = exact or (out, grad)
        if info.rank == 0:
            print(f"{name:28s} output rel. error {rel(out, exact[0]):.2e}   input grad {rel(grad, exact[1]):.2e}")
    if args.compile:
        torch._dynamo.config.capture_scalar_outputs = True  # split sizes are .tolist() values
        out, grad = step(torch.compile(layer, fullgraph=True), x, scores, ids, counts)
        if info.rank == 0:
            print(f"{'compiled, last setting':28s} output rel. error {rel(out, exact[0]):.2e}   "
                  f"input grad {rel(grad, exact[1]):.2e}")
    # Both ranks done before either tears gloo down (a rank leaving first can abort its peer's teardown).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
