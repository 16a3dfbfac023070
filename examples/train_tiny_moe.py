"""Train the small MoE language model with each all-to-all wire format and print the loss curves side
by side.

Data: the bytes of the Python standard library's own sources (offline, real text), vocabulary 256. One
model per wire (`raw`, `bf16`, `fp8`, `mxfp4`), all from the same initial weights and trained in lockstep
on the same batches, so the columns differ only by what the expert-parallel all-to-alls send.

    python examples/train_tiny_moe.py --nproc 2   # CPU: 2 gloo ranks, expert parallel, own batches each
    python examples/train_tiny_moe.py --nproc 1   # one process, the wire emulated (quantize-dequantize)
    torchrun --nproc-per-node 8 examples/train_tiny_moe.py   # GPUs, NCCL (or mpirun -np 8 python ...)
The defaults finish on 2 CPU cores in a few minutes.
`--optimizer muon_lite` (or muon, soap, soap_lite) trains with `mxa2a.optim` instead of torch's AdamW,
stepped after `sync_gradients` has all-reduced the replicated gradients.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import socket
import sys
import sysconfig
import time
from dataclasses import asdict, replace

import torch
import torch.distributed as dist

from mxa2a.moe import MoEModel, MoEModelConfig, MoELayerConfig, routing_metrics
from mxa2a.moe.experts import GroupedExperts


OPTIMIZERS = ("adamw", "muon", "muon_lite", "soap", "soap_lite")  # mxa2a.optim.FAMILIES


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wires", default="raw,fp8,mxfp4", help="comma-separated wire formats to compare")
    p.add_argument("--grad-wire", default="raw", help="wire of the backward all-to-alls")
    p.add_argument("--nproc", type=int, default=2, help="CPU gloo ranks to spawn (ignored under torchrun/mpirun)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--batch", type=int, default=8, help="sequences per rank per step")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128, help="model width (a multiple of 128 allows fp8)")
    p.add_argument("--d-expert", type=int, default=64)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--shared", type=int, default=0, help="number of shared experts")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="adamw: torch.optim.AdamW (no weight decay); else an mxa2a.optim family")
    p.add_argument("--lb-weight", type=float, default=0.01)
    p.add_argument("--data-mb", type=float, default=4.0, help="megabytes of stdlib source to read")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="model and activation dtype (bfloat16 on GPUs uses the grouped GEMM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the curves and settings to this JSON file")
    return p.parse_args(argv)


def load_corpus(megabytes: float, recursive: bool = False) -> torch.Tensor:
    """uint8 bytes of the stdlib's top-level .py files (all of its .py files, site-packages excluded,
    with `recursive`), in sorted order (the same on every rank)."""
    root = sysconfig.get_paths()["stdlib"]
    chunks, total = [], 0
    pattern = os.path.join(root, "**", "*.py") if recursive else os.path.join(root, "*.py")
    for path in sorted(p for p in glob.glob(pattern, recursive=recursive) if "site-packages" not in p):
        with open(path, "rb") as f:
            chunks.append(f.read())
        total += len(chunks[-1])
        if total >= megabytes * 1e6:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)


def batches(data: torch.Tensor, batch: int, seq_len: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch,), generator=g)
        rows = torch.stack([data[s: s + seq_len + 1] for s in starts.tolist()]).long()
        yield rows[:, :-1], rows[:, 1:]


def build_model(args, wire: str, group, ws: int, rank: int, device) -> MoEModel:
    """The same initial weights for every wire and every EP size: build the full model from the seed,
    then keep this rank's slice of each expert stack."""
    moe = MoELayerConfig(hidden=args.hidden, d_expert=args.d_expert, num_experts=args.experts,
                         top_k=args.top_k, n_shared=args.shared, wire=wire, grad_wire=args.grad_wire,
                         emulate_wire=(ws == 1))
    config = MoEModelConfig(moe=moe, seq_len=args.seq_len, n_layers=args.layers, n_heads=args.heads,
                            lb_weight=args.lb_weight)
    torch.manual_seed(args.seed)
    full = MoEModel(replace(config, moe=replace(moe, emulate_wire=False, wire="raw", grad_wire="raw")))
    model = MoEModel(config, group=group if ws > 1 else None)
    n_local = args.experts // ws
    state = {k: (v[rank * n_local:(rank + 1) * n_local] if ".experts.w_" in k else v)
             for k, v in full.state_dict().items()}
    model.load_state_dict(state)
    return model.to(device=device, dtype=getattr(torch, args.dtype))


def make_optimizers(model: MoEModel, args) -> list[torch.optim.Optimizer]:
    """torch's AdamW over every parameter, or the optimizers of an `mxa2a.optim` family (a matrix
    optimizer for the attention and this rank's expert stacks, AdamW(-LITE) for the rest)."""
    if args.optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)]
    from mxa2a.optim import build_optimizers

    return build_optimizers(model, args.optimizer, args.lr, weight_decay=0.0)


def sync_gradients(model: MoEModel, ws: int) -> None:
    """Data parallel over the EP group: average replicated gradients; expert gradients already hold
    every rank's tokens (through the all-to-all backward), so they are only scaled to match."""
    if ws == 1:
        return
    expert_params = {id(p) for m in model.modules() if isinstance(m, GroupedExperts) for p in m.parameters()}
    replicated = [p.grad for p in model.parameters() if id(p) not in expert_params and p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in replicated])
    dist.all_reduce(flat)
    flat /= ws
    offset = 0
    for g in replicated:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()
    for p in model.parameters():
        if id(p) in expert_params and p.grad is not None:
            p.grad /= ws


def train(rank: int, ws: int, args, device) -> dict | None:
    group = dist.group.WORLD if ws > 1 else None
    wires = args.wires.split(",")
    data = load_corpus(args.data_mb)
    split = int(data.numel() * 0.95)
    train_data, val_data = data[:split], data[split:]
    models = {w: build_model(args, w, group, ws, rank, device) for w in wires}
    opts = {w: make_optimizers(m, args) for w, m in models.items()}
    warmup = max(1, args.steps // 20)
    lr_at = lambda s: args.lr * min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps))  # noqa: E731
    stream = batches(train_data, args.batch, args.seq_len, args.seed * 1000 + rank)
    window = {w: [] for w in wires}
    seconds = {w: 0.0 for w in wires}
    curves = {w: [] for w in wires}
    logged_steps = []
    if rank == 0:
        print(f"{ws} rank(s), {args.experts} experts ({args.experts // ws} per rank), top-{args.top_k}, "
              f"hidden {args.hidden}, {args.layers} layers, {args.batch}x{args.seq_len} tokens per rank, "
              f"{data.numel() / 1e6:.1f} MB of stdlib source; train loss (mean of the last "
              f"{args.log_every} steps, all ranks):")
        print(f"{'step':>6} " + " ".join(f"{w:>9}" for w in wires))
    for step in range(args.steps):
        ids, targets = (t.to(device) for t in next(stream))
        for w in wires:
            for group_ in (g for opt in opts[w] for g in opt.param_groups):
                group_["lr"] = lr_at(step)
            t0 = time.perf_counter()
            out = models[w](ids, targets)
            for opt in opts[w]:
                opt.zero_grad(set_to_none=True)
            out.loss.backward()
            sync_gradients(models[w], ws)  # before the step: replicated gradients must agree
            for opt in opts[w]:
                opt.step()
            seconds[w] += time.perf_counter() - t0
            window[w].append(out.lm_loss.detach())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            row = torch.stack([torch.stack(window[w]).mean() for w in wires])
            if ws > 1:
                dist.all_reduce(row)
                row /= ws
            for w, v in zip(wires, row.tolist()):
                curves[w].append(v)
                window[w].clear()
            logged_steps.append(step + 1)
            if rank == 0:
                print(f"{step + 1:>6} " + " ".join(f"{v:>9.4f}" for v in row.tolist()), flush=True)
    final = evaluate(models, val_data, args, rank, ws, device)
    if rank == 0:
        print(f"\n{'wire':>6} {'val loss':>9} {'val bpb':>8} {'vs raw':>8} {'MaxVio':>7} {'s/step':>7}")
        base = final.get("raw", {}).get("val_loss")
        for w in wires:
            f = final[w]
            rel = f"{(f['val_loss'] / base - 1) * 100:+7.2f}%" if base else "      -"
            print(f"{w:>6} {f['val_loss']:>9.4f} {f['val_loss'] / math.log(2):>8.4f} {rel:>8} "
                  f"{f['maxvio']:>7.2f} {seconds[w] / args.steps:>7.3f}")
        result = {"settings": vars(args), "world_size": ws, "steps": logged_steps, "train_loss": curves,
                  "final": final, "seconds_per_step": {w: seconds[w] / args.steps for w in wires},
                  "model": asdict(models[wires[0]].config) | {"moe": str(models[wires[0]].config.moe)}}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1, default=str)
            print(f"wrote {args.json}")
        return result
    return None


@torch.no_grad()
def evaluate(models, val_data, args, rank, ws, device, n_batches: int = 8) -> dict:
    """Validation loss on the same held-out batches for every wire (averaged over ranks) and the mean
    MaxVio over layers."""
    out = {}
    for w, model in models.items():
        model.eval()
        stream = batches(val_data, args.batch, args.seq_len, 10_000 + rank)
        vals, vios = [], []
        for _ in range(n_batches):
            ids, targets = (t.to(device) for t in next(stream))
            res = model(ids, targets)
            vals.append(res.lm_loss)
            m = routing_metrics(res.records, dist.group.WORLD if ws > 1 else None)
            vios.append(sum(v for k, v in m.items() if k.startswith("maxvio")) / len(res.records))
        val = torch.stack(vals).mean()
        if ws > 1:
            dist.all_reduce(val)
            val /= ws
        out[w] = {"val_loss": val.item(), "maxvio": sum(vios) / len(vios)}
        model.train()
    return out


def _spawned(rank: int, ws: int, port: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=ws, timeout=datetime.timedelta(minutes=10))
    try:
        train(rank, ws, args, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    args = parse_args(argv)
    launched = any(k in os.environ for k in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"))
    if launched:  # torchrun / mpirun: one process per GPU (or CPU rank)
        from mxa2a.comm import init_distributed
        info = init_distributed()
        try:
            train(info.rank, info.world_size, args, info.device)
        finally:
            dist.destroy_process_group()
    elif args.nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(_spawned, args=(args.nproc, port, args), nprocs=args.nproc)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        train(0, 1, args, device)


if __name__ == "__main__":
    sys.exit(main())
