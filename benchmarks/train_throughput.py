#!/usr/bin/env python3
"""The MoEModel training step (forward, backward, AdamW step) per recipe (`recipe=`, docs/RECIPE.md),
same model shape, same initial weights, same batch, same run, one GPU (EP size 1).

Per recipe (and fp8-mxfp4 with `recompute_h`, h recomputed in backward instead of kept): ms per step (median of `--iters` CUDA-event timings), tokens/s and its ratio to bf16, peak
memory (max allocated during a step), static memory (weights, gradients, optimizer state and the FP8
weight caches, allocated between steps), activation memory = peak - static, and the bytes autograd
keeps for backward in the whole model and in the MoE layers alone (`saved_tensors_hooks`, parameters
and the FP8 weight caches excluded, each storage counted once). `--emulate-wire`: with EP size 1 the
dispatcher skips the all-to-all, so this applies every wire as the codec's quantize / convert kernels
where the all-to-all would be (the codec cost without the copy; `emulate_wire=True`).
    python benchmarks/train_throughput.py --json benchmarks/results/train_throughput_h100.json
    python benchmarks/train_throughput.py --quick            # CPU smoke run (seconds)
Model of record (defaults): 8 layers, hidden 2048, 64 experts (d_expert 1408) top-6, 2 shared, seq 4096,
vocab 32768, bf16 weights. `--batch 0` (default) picks the largest batch up to `--max-batch` at which
every recipe asked for runs (the same tokens per step for all); `--own-batch` runs each recipe at its
own largest batch (what its memory savings buy in throughput), and then the memory ratios are per
sequence.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import _bench_common as bc  # noqa: E402
from mxa2a.moe import MoELayer, MoELayerConfig, MoEModel, MoEModelConfig  # noqa: E402

# The rows: a recipe each, and fp8-mxfp4 with h recomputed in backward instead of kept in MXFP4.
SETTINGS = {"bf16": dict(recipe="bf16"), "fp8": dict(recipe="fp8"), "fp8-mxfp4": dict(recipe="fp8-mxfp4"),
            "fp8-mxfp4-recompute": dict(recipe="fp8-mxfp4", recompute_h=True)}

QUICK = dict(layers=1, hidden=128, d_expert=128, experts=4, top_k=2, shared=1, heads=2, seq_len=32,
             batch=2, vocab=256, iters=2, warmup=1)


def largest_fitting(fits, upper: int) -> int:
    """The largest `b` in 1..upper with `fits(b)`, by bisection (fits is taken to be monotone: what
    runs at b runs at every smaller batch); 0 when not even 1 fits."""
    lo, hi = 0, upper  # fits(lo) holds (0 by convention); the answer is in lo..hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(SETTINGS), help=f"rows, from {tuple(SETTINGS)}")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--d-expert", type=int, default=1408)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=6)
    p.add_argument("--shared", type=int, default=2)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--batch", type=int, default=0, help="sequences per step; 0: the largest that fits")
    p.add_argument("--max-batch", type=int, default=8, help="the largest batch --batch 0 tries")
    p.add_argument("--own-batch", action="store_true",
                   help="each recipe at its own largest batch (instead of the largest all recipes fit)")
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--emulate-wire", action="store_true", help="apply the wires' codecs at EP size 1")
    args = bc.parse_with_quick(p, argv, QUICK)
    args.recipes = bc.choice_list(p, args.recipes, SETTINGS, "recipes")
    return args


def model_config(args, recipe: str) -> MoEModelConfig:
    moe = MoELayerConfig(hidden=args.hidden, d_expert=args.d_expert, num_experts=args.experts,
                         top_k=args.top_k, n_shared=args.shared, emulate_wire=args.emulate_wire,
                         **SETTINGS[recipe])
    return MoEModelConfig(moe=moe, vocab_size=args.vocab, seq_len=args.seq_len, n_layers=args.layers,
                          n_heads=args.heads)


@contextlib.contextmanager
def bf16_on(dev: torch.device):
    """Build modules on `dev` in bf16 straight away (no fp32 copy of billions of weights)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with dev:
            yield
    finally:
        torch.set_default_dtype(old)


class Run:
    """One recipe's model, optimizer and step on `dev`. The weights come from seed 0 on `dev`, so every
    recipe starts from the same ones (the recipe changes no parameter shape)."""

    def __init__(self, args, recipe: str, dev: torch.device) -> None:
        torch.manual_seed(0)
        with bf16_on(dev):
            self.model = MoEModel(model_config(args, recipe))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.0,
                                     fused=dev.type == "cuda")

    def step(self, ids, targets) -> None:
        self.opt.zero_grad(set_to_none=False)  # gradients stay allocated: static memory
        self.model(ids, targets).loss.backward()
        self.opt.step()


def saved_mb(model: MoEModel, ids, targets) -> tuple[float, float]:
    """MB autograd keeps for backward in the whole model and inside the MoE layers (one forward)."""
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for m in model.modules():
        if isinstance(m, MoELayer):
            w = m.experts.fp8_weights
            skip |= {t.data.untyped_storage().data_ptr() for t in (w.w1, w.w1_t, w.w2, w.w2_t) if t is not None}
            skip |= {t.scales.untyped_storage().data_ptr() for t in (w.w1, w.w1_t, w.w2, w.w2_t) if t is not None}
    seen: dict[int, tuple[int, bool]] = {}
    inside = [False]

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen.setdefault(s.data_ptr(), (s.nbytes(), inside[0]))
        # A detached alias keeps the storage alive for the forward (distinct storages, distinct
        # pointers) without the reference cycle that returning a node's own output would make
        # (grad_fn -> saved tensor -> grad_fn: the graph, weights included, would outlive `out`).
        return t.detach()
    hooks = []
    for m in model.modules():
        if isinstance(m, MoELayer):
            hooks.append(m.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True)))
            hooks.append(m.register_forward_hook(lambda *_: inside.__setitem__(0, False)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(ids, targets)
        del out
    finally:
        for h in hooks:
            h.remove()
    total = sum(n for n, _ in seen.values())
    moe = sum(n for n, flag in seen.values() if flag)
    return total / 2**20, moe / 2**20


def measure(args, recipe: str, batch: int, dev: torch.device) -> dict:
    cuda = dev.type == "cuda"
    run = Run(args, recipe, dev)
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, args.vocab, (batch, args.seq_len + 1), generator=g).to(dev)
    ids, targets = rows[:, :-1], rows[:, 1:]
    step = lambda: run.step(ids, targets)  # noqa: E731
    step()  # optimizer state, FP8 weight caches, Triton compilation
    if cuda:
        torch.cuda.synchronize()
        static = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        times_ms = [us / 1e3 for us in bc.time_cuda(step, args.iters, max(0, args.warmup - 2))]
    else:
        static = peak = float("nan")
        times_ms = [us / 1e3 for us in bc.time_host(step, args.iters, max(0, args.warmup - 1))]
    total_mb, moe_mb = saved_mb(run.model, ids, targets)
    ms = bc.median(times_ms)
    row = {"recipe": recipe, "batch": batch, "ms": ms, "tokens_per_s": batch * args.seq_len / (ms / 1e3),
           "peak_gb": peak / 2**30, "static_gb": static / 2**30, "activation_gb": (peak - static) / 2**30,
           "saved_mb": total_mb, "moe_saved_mb": moe_mb, "times_ms": times_ms}
    del run, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def _fits(args, recipe: str, batch: int, dev: torch.device) -> bool:
    """Whether `recipe` runs two training steps at `batch` (the second holds the optimizer state that
    the first one creates only at its end, after its activations are gone)."""
    run = None
    try:
        run = Run(args, recipe, dev)
        rows = torch.randint(0, args.vocab, (batch, args.seq_len + 1), device=dev)
        for _ in range(2):
            run.step(rows[:, :-1], rows[:, 1:])
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        run = None
        gc.collect()
        torch.cuda.empty_cache()


def largest_batch(args, recipes: list[str], dev: torch.device) -> int:
    """The largest batch up to `--max-batch` at which every one of `recipes` runs (bf16 keeps the most
    activations, fp8 has the FP8 weight caches: which one binds depends on the batch)."""
    if dev.type != "cuda":
        return 1

    def fits(b: int) -> bool:
        failed = next((r for r in recipes if not _fits(args, r, b, dev)), None)
        print(f"batch {b}: " + ("fits" if failed is None else f"{failed} out of memory"), flush=True)
        return failed is None
    batch = largest_fitting(fits, args.max_batch)
    if batch == 0:
        raise SystemExit("even batch 1 does not fit: pass a smaller model (--layers, --experts, --seq-len)")
    return batch


COLUMNS = [bc.Column("recipe", "recipe", "{}", 19), bc.Column("batch", "batch", "{}", 5),
           bc.Column("ms", "ms/step", "{:.1f}", 9), bc.Column("tokens_per_s", "tokens/s", "{:.0f}", 10),
           bc.Column("speedup", "x bf16", "{:.3f}", 7), bc.Column("peak_gb", "peak GB", "{:.2f}", 8),
           bc.Column("static_gb", "static GB", "{:.2f}", 9), bc.Column("activation_gb", "act GB", "{:.2f}", 7),
           bc.Column("act_ratio", "act x bf16", "{:.3f}", 10), bc.Column("saved_mb", "kept MB", "{:.1f}", 9),
           bc.Column("moe_saved_mb", "MoE kept MB", "{:.1f}", 11),
           bc.Column("moe_ratio", "MoE x bf16", "{:.3f}", 10)]


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    common = None if args.batch == 0 and args.own_batch else (args.batch or largest_batch(args, args.recipes, dev))
    rows = []
    for recipe in args.recipes:
        batch = common or largest_batch(args, [recipe], dev)
        try:
            rows.append(measure(args, recipe, batch, dev))
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{recipe}: out of memory at batch {batch} ({exc})", flush=True)
            torch.cuda.empty_cache()
            continue
        print(f"{recipe}: {rows[-1]['ms']:.1f} ms/step ({time.perf_counter() - t0:.0f} s)", flush=True)
    base = next((r for r in rows if r["recipe"] == "bf16"), None)
    print(f"batch {common or 'per recipe'}; {time.perf_counter() - t0:.0f} s in all")
    for r in rows:
        if base is not None:  # memory ratios per sequence (the batches differ with --own-batch)
            per_seq = base["batch"] / r["batch"]
            r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["act_ratio"] = r["activation_gb"] / base["activation_gb"] * per_seq if dev.type == "cuda" else None
            r["moe_ratio"] = r["moe_saved_mb"] / base["moe_saved_mb"] * per_seq
    shape = {k: getattr(args, k) for k in ("layers", "hidden", "d_expert", "experts", "top_k", "shared",
                                           "heads", "seq_len", "vocab", "emulate_wire")}
    print(f"# MoEModel training step, one {dev.type} device, EP size 1, {shape}")
    print(bc.format_table(COLUMNS, rows))
    if args.json:
        bc.write_json(args.json, {"machine": bc.machine_description(), "shape": shape, "rows": rows})
        print(f"wrote {args.json}")
    if args.png:
        plot(rows, args.png)
    return 0


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["recipe"] for r in rows]
    axes[0].bar(names, [r["tokens_per_s"] for r in rows])
    axes[0].set_ylabel("tokens/s")
    axes[1].bar(names, [r["moe_saved_mb"] for r in rows])
    axes[1].set_ylabel("MoE layers: MB kept for backward")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
