#!/usr/bin/env python3
"""One MoE layer, forward + backward, per recipe (`MoELayerConfig.recipe`: "bf16", "fp8" = FP8 experts
fed by the FP8 dispatch, "fp8-mxfp4" = the same keeping MXFP4 activations), same weights, same run, one
GPU (EP size 1, static dispatch layout from a `DispatchPlan`, router in the step).

Per recipe: ms per step (median of `--iters` CUDA-event timings of zero_grad + forward + backward),
tokens/s, peak memory (max allocated during a step), saved-activation bytes (every tensor autograd
keeps for backward, through `saved_tensors_hooks`, parameters excluded, storages counted once), the
forward split into route / dispatch (permute) / experts / combine / shared by CUDA events, and the GPU
kernel time of the whole step by kind from a torch.profiler trace: routed-expert GEMMs, other GEMMs
(router, shared experts), FP8 quantize / convert / SwiGLU kernels, everything else. `non-GEMM %` is
the step time not spent in GEMM kernels. `weights_ms`: re-quantizing the FP8 weights (once per
optimizer step, not in the step time).
    python benchmarks/moe_layer.py --json benchmarks/results/moe_layer_h100.json
Shape of record (defaults): T = 16384, H = 2048, F = 1408, E = 64, top-6, 2 shared experts, bf16.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import _bench_common as bc  # noqa: E402

ROUTED = re.compile(r"_grouped_gemm_|group", re.I)  # ours, and CUTLASS's GroupProblemShape (torch._grouped_mm)
GEMM = re.compile(r"gemm|cutlass|nvjet|xmma|wgmma|_mm_", re.I)
QUANT = re.compile(r"fp8|mxfp4|quantiz|swiglu|transpose|colwise|e4m3|gather_rows", re.I)


def build(args, dev):
    from mxa2a.moe import DispatchPlan, MoELayer, MoELayerConfig

    torch.manual_seed(0)
    cfg = MoELayerConfig(hidden=args.hidden, d_expert=args.d_expert, num_experts=args.experts,
                         top_k=args.top_k, n_shared=args.shared)
    layers = {"bf16": MoELayer(cfg)}
    for recipe in args.recipes:
        if recipe != "bf16":
            layers[recipe] = MoELayer(dataclasses.replace(cfg, recipe=recipe))
            layers[recipe].load_state_dict(layers["bf16"].state_dict())
    for k in list(layers):
        layers[k] = layers[k].to(dev, torch.bfloat16)
    x = torch.randn(args.tokens, args.hidden, device=dev, dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    with torch.no_grad():
        record = layers["bf16"].router(x)
    plan = DispatchPlan.build(record.topk_ids.cpu(), args.experts, gates=record.gates.cpu(), device=dev)
    return layers, x, dy, plan


def step_fn(layer, x, dy, layout):
    xl = x.detach().requires_grad_(True)

    def step():
        layer.zero_grad(set_to_none=True)
        xl.grad = None
        y, _ = layer(xl, layout=layout)
        y.backward(dy)
    return step


def saved_bytes(layer, x, layout) -> int:
    params = {p.data_ptr() for p in layer.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t
    xl = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = layer(xl, layout=layout)
    del y
    return sum(seen.values())


def forward_phases(layer, x, layout, iters: int) -> dict[str, float]:
    d, totals = layer.dispatcher, collections.defaultdict(list)
    for _ in range(iters):
        ev = []

        def mark():
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            ev.append(e)
        mark()
        record = layer.router(x)
        mark()
        if layer.config.fp8_dispatch:
            rows, rows_fp8 = d.dispatch_fp8(x, layout, backend=layer.experts.fp8_backend)
        else:
            rows, rows_fp8 = d.dispatch(x, layout), None
        mark()
        y_local, _ = layer.experts(rows, layout.tokens_per_local_expert, offsets=layout.expert_offsets,
                                   x_fp8=rows_fp8)
        mark()
        y = d.combine(y_local, layout, record.gates)
        mark()
        if layer.shared is not None:
            y = y + layer.shared(x)
        mark()
        torch.cuda.synchronize()
        for name, a, b in zip(("route", "dispatch", "experts", "combine", "shared"), ev, ev[1:]):
            totals[name].append(a.elapsed_time(b))
    return {k: bc.median(v) for k, v in totals.items()}


def kernel_breakdown(step, steps: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """GPU kernel ms per step by kind, and the ten largest non-GEMM kernels (ms per step)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    kinds, names, gemms = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") != "kernel":
            continue
        name, ms = e["name"], e["dur"] / 1e3 / steps
        kind = ("routed_gemm" if ROUTED.search(name) and GEMM.search(name) or "_grouped_gemm_" in name
                else "other_gemm" if GEMM.search(name) else "quantize" if QUANT.search(name) else "other")
        kinds[kind] += ms
        (names if kind in ("quantize", "other") else gemms)[f"{kind}: {name[:100]}"] += ms
    return dict(kinds), names.most_common(10), gemms.most_common(8)


def configs_from(path: str, args) -> tuple:
    """The fastest FP8 launch configurations for this layer's shape in a gemm_throughput.py JSON:
    (row-grouped, weight-gradient), each the one most often fastest over its GEMM kinds."""
    from mxa2a.gemm import GemmConfig

    with open(path) as f:
        rows = [r for r in json.load(f)["rows"]  # the layer's wgrad runs on the group-aligned layout
                if (r["H"], r["F"], r["E"]) == (args.hidden, args.d_expert, args.experts)
                and r.get("layout") in (None, "aligned")]
    if not rows:
        raise SystemExit(f"{path} has no rows for H={args.hidden}, F={args.d_expert}, E={args.experts}")
    pick = lambda wg: collections.Counter(r["config"] for r in rows if r["kind"].startswith("wgrad") == wg)  # noqa: E731
    return tuple(GemmConfig(*map(int, pick(wg).most_common(1)[0][0].split("x"))) for wg in (False, True))


VARIANT_PARTS = ("triton", "sm90", "f32", "prefetch")


def variant_configs(variant: str, base: tuple) -> tuple:
    """(row-grouped, weight-gradient) GemmConfigs of an FP8 kernel variant: "+"-joined parts, "sm90"
    (the Gluon kernels at their default configurations; else Triton at `base`), "f32" (fp32 scales in
    the weight gradient), "prefetch" (scale bytes one step ahead; Triton only), e.g. "sm90+f32"."""
    from mxa2a.gemm.grouped import FORWARD_CONFIG, SM90_FORWARD_CONFIG, SM90_WGRAD_CONFIG, WGRAD_CONFIG

    parts = set(variant.split("+"))
    if parts - set(VARIANT_PARTS):
        raise SystemExit(f"--fp8-kernels: unknown parts {sorted(parts - set(VARIANT_PARTS))} in {variant!r}; "
                         f"parts are {VARIANT_PARTS}")
    fwd, wgrad = ((SM90_FORWARD_CONFIG, SM90_WGRAD_CONFIG) if "sm90" in parts
                  else tuple(c or d for c, d in zip(base, (FORWARD_CONFIG, WGRAD_CONFIG))))
    wgrad = dataclasses.replace(wgrad, f32_scales=wgrad.f32_scales or "f32" in parts)
    if "prefetch" in parts:
        fwd, wgrad = (dataclasses.replace(c, prefetch_scales=True) for c in (fwd, wgrad))
    return fwd, wgrad


def run(args) -> int:
    dev = torch.device("cuda")
    layers, x, dy, plan = build(args, dev)
    fp8_layers = [name for name in layers if name != "bf16"]
    if args.configs_from:
        for name in fp8_layers:
            layers[name].experts.fp8_gemm_configs = configs_from(args.configs_from, args)
        print(f"# FP8 GEMM configurations from {args.configs_from}: {layers[fp8_layers[0]].experts.fp8_gemm_configs}")
    layout = layers["bf16"].dispatcher.layout_from_plan(plan)
    rows_routed = args.tokens * args.top_k
    flops_routed = 18.0 * rows_routed * args.hidden * args.d_expert  # 6 GEMMs of 2*M*H*F (x2 for GEMM 1)
    variants = [(name, layer, None) for name, layer in layers.items()]
    kernel_layer = "fp8" if "fp8" in layers else (fp8_layers or [None])[0]
    variants += [(f"{kernel_layer}-{v}", layers[kernel_layer], v) for v in args.fp8_kernels
                 if v != "triton" and kernel_layer]
    base_configs = kernel_layer and layers[kernel_layer].experts.fp8_gemm_configs
    results = {}
    for name, layer, variant in variants:
        if variant:
            layer.experts.fp8_gemm_configs = variant_configs(variant, base_configs)
        step = step_fn(layer, x, dy, layout)
        us = bc.median(bc.time_cuda(step, args.iters, args.warmup))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        kinds, top, top_gemms = kernel_breakdown(step, 3)
        gemm_ms = kinds.get("routed_gemm", 0.0) + kinds.get("other_gemm", 0.0)
        r = dict(recipe=name, ms_per_step=us / 1e3, tokens_per_s=args.tokens / (us * 1e-6),
                 peak_gib=peak / 2**30, saved_mib=saved_bytes(layer, x, layout) / 2**20,
                 **{f"fwd_{k}_ms": v for k, v in forward_phases(layer, x, layout, 5).items()},
                 **{f"kernel_{k}_ms": v for k, v in kinds.items()},
                 non_gemm_pct=100.0 * (1 - gemm_ms / (us / 1e3)),
                 routed_gemm_tflops=(flops_routed / (kinds["routed_gemm"] * 1e-3) / 1e12
                                     if kinds.get("routed_gemm") else None),
                 top_non_gemm_kernels=top, top_gemm_kernels=top_gemms)
        if name.startswith("fp8"):
            r["weights_ms"] = bc.median(bc.time_cuda(layer.experts.refresh_fp8_weights, 5, 1)) / 1e3
        results[name] = r
    for name in results:
        if name != "bf16":
            results[name]["speedup"] = results["bf16"]["ms_per_step"] / results[name]["ms_per_step"]
    rows = list(results.values())
    print(bc.format_table(COLUMNS, rows))
    for r in rows:
        print(f"# {r['recipe']}: forward phases ms " +
              ", ".join(f"{k[4:-3]} {v:.2f}" for k, v in r.items() if k.startswith("fwd_")) +
              "; kernels ms " + ", ".join(f"{k[7:-3]} {v:.2f}" for k, v in r.items() if k.startswith("kernel_")))
        for kname, ms in r["top_gemm_kernels"] + r["top_non_gemm_kernels"]:
            print(f"#    {ms:7.3f} ms  {kname}")
    if args.json:
        bc.write_json(args.json, {"machine": bc.machine_description(), "config": vars(args), "rows": rows})
    return 0


COLUMNS = [bc.Column("recipe", "recipe", "{}", 9), bc.Column("ms_per_step", "ms/step", "{:.2f}", 8),
           bc.Column("tokens_per_s", "tokens/s", "{:.0f}", 9), bc.Column("speedup", "x bf16", "{:.2f}", 7),
           bc.Column("peak_gib", "peak GiB", "{:.2f}", 9), bc.Column("saved_mib", "saved MiB", "{:.0f}", 9),
           bc.Column("routed_gemm_tflops", "routed TF/s", "{:.0f}", 11),
           bc.Column("non_gemm_pct", "non-GEMM %", "{:.1f}", 10), bc.Column("weights_ms", "weights ms", "{:.2f}", 10)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--d-expert", type=int, default=1408)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=6)
    p.add_argument("--shared", type=int, default=2)
    p.add_argument("--recipes", default="bf16,fp8,fp8-mxfp4", type=lambda t: t.split(","),
                   help="comma-separated MoELayerConfig recipes (bf16 is always timed: the baseline)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--configs-from", default=None,
                   help="a gemm_throughput.py --sweep JSON: use its fastest FP8 configurations for this shape")
    p.add_argument("--fp8-kernels", default="triton", type=lambda t: t.split(","),
                   help="comma-separated FP8 GEMM variants: the fp8 recipe's layer is timed once per variant "
                        "(its defaults always); a variant joins parts of " + "/".join(VARIANT_PARTS) +
                        " with '+', e.g. triton,f32,sm90,sm90+f32 (see variant_configs)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("moe_layer.py needs a CUDA device", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
