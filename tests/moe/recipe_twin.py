"""A pure-torch twin of one MoE layer under a recipe (docs/RECIPE.md): every quantization point of the
fast path as a quantize-dequantize by the reference codecs, everything else fp32 math.

Forward: router (the layer's own module) -> x quantized FP8 1x128 (fp8_dispatch) -> dispatch wire
(MXFP4: FP8 -> MXFP4 values) -> the experts of each EP rank on that rank's row buffer (so 128-token
column-wise tiles fall where the fast path's do) -> combine wire -> gate-weighted sum in fp32.
Backward: autograd, except the experts, whose backward is written out with the recipe's points
(row-wise FP8 dy and dh for the data gradients; column-wise FP8 operands for the weight gradients,
made from the saved FP8 or MXFP4 rows), and the wires' straight-through gradients with grad wires.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mxa2a.gemm import quantize_fp8_blocks
from mxa2a.quant import (dequantize_fp8, dequantize_mxfp4, fp8_rowwise_to_colwise, quantize_fp8,
                         quantize_mxfp4)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def layer_step(layer, x: torch.Tensor, probe: torch.Tensor, **kwargs) -> tuple:
    """Forward and backward of `sum(layer(x) * probe)`: (y, dx, {parameter name: gradient})."""
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y, _ = layer(x, **kwargs)
    (y * probe).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}


def q_fp8(x: torch.Tensor) -> torch.Tensor:
    return dequantize_fp8(quantize_fp8(x.float(), backend="torch"), torch.float32, backend="torch")


def q_mxfp4(x: torch.Tensor, scale_mode: str = "rceil") -> torch.Tensor:
    return dequantize_mxfp4(quantize_mxfp4(x.float(), scale_mode=scale_mode, backend="torch"), torch.float32,
                            backend="torch")


def wire(x: torch.Tensor, name: str) -> torch.Tensor:
    return {"raw": lambda t: t, "bf16": lambda t: t.bfloat16().float(), "fp8": q_fp8, "mxfp4": q_mxfp4}[name](x)


def _pad(x: torch.Tensor) -> torch.Tensor:
    out = x.new_zeros(-(-x.shape[0] // 128) * 128, x.shape[1])
    out[: x.shape[0]] = x
    return out


def colwise(rows: torch.Tensor, saved: str) -> torch.Tensor:
    """The column-wise FP8 operand `[K, M]` of rows that hold FP8 (saved "fp8": the scaling-aware
    transpose of their 1x128 tiles) or MXFP4 values (saved "mxfp4": FP8 1x128 tiles of the transpose)."""
    p = _pad(rows.float())
    if saved == "mxfp4":
        t = quantize_fp8(p.t().contiguous(), backend="torch")
    else:
        t = fp8_rowwise_to_colwise(quantize_fp8(p, backend="torch"), backend="torch")
    return dequantize_fp8(t, torch.float32, backend="torch")[:, : rows.shape[0]]


class _Wire(torch.autograd.Function):
    """Forward through `fwd`, backward through `bwd` (straight-through otherwise)."""

    @staticmethod
    def forward(ctx, x, fwd, bwd):
        ctx.bwd = bwd
        return wire(x, fwd)

    @staticmethod
    def backward(ctx, g):
        return wire(g, ctx.bwd), None, None


class _Experts(torch.autograd.Function):
    """The FP8 expert MLP of one rank: rows `x [M, H]` grouped by `sizes`."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down, sizes, saved, out_dtype, recompute_h=False):
        ends = torch.tensor(sizes).cumsum(0).tolist()
        bounds = list(zip([0] + ends[:-1], ends))
        w1 = dequantize_fp8(quantize_fp8_blocks(torch.cat([w_gate, w_up], 1)), torch.float32)   # (E, 2F, H)
        w2 = dequantize_fp8(quantize_fp8_blocks(w_down), torch.float32)                        # (E, H, F)
        xq = q_fp8(x)
        h = torch.cat([xq[s:e] @ w1[g].t() for g, (s, e) in enumerate(bounds)]).bfloat16().float()
        gate, up = h.chunk(2, -1)
        z = q_fp8(F.silu(gate) * up)
        y = torch.cat([z[s:e] @ w2[g].t() for g, (s, e) in enumerate(bounds)])
        keep = q_mxfp4 if saved == "mxfp4" else (lambda t: t)
        h_kept = keep(h).bfloat16().float()
        if recompute_h:  # GEMM 1 again, on the kept x
            x_k = q_fp8(keep(xq))
            h_kept = torch.cat([x_k[s:e] @ w1[g].t() for g, (s, e) in enumerate(bounds)]).bfloat16().float()
        ctx.kept = (keep(xq), h_kept, keep(z))
        ctx.w, ctx.bounds, ctx.saved, ctx.f, ctx.x_dtype = (w1, w2), bounds, saved, w_gate.shape[1], x.dtype
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx, dy):
        (x_k, h, z_k), (w1, w2), bounds, saved = ctx.kept, ctx.w, ctx.bounds, ctx.saved
        cat = lambda parts: torch.cat(parts) if parts else h.new_zeros(0, 0)  # noqa: E731
        dyq = q_fp8(dy)
        dz = cat([dyq[s:e] @ w2[g] for g, (s, e) in enumerate(bounds)]).bfloat16().float()
        gate, up = h.chunk(2, -1)
        sg = torch.sigmoid(gate)
        dh = q_fp8(torch.cat([dz * up * sg * (1 + gate * (1 - sg)), dz * gate * sg], -1))
        dx = cat([dh[s:e] @ w1[g] for g, (s, e) in enumerate(bounds)])
        # each expert's column-wise tiles from its own rows (the group-aligned layout of the wgrad GEMM)
        dw2 = torch.stack([colwise(dyq[s:e], "fp8") @ colwise(z_k[s:e], saved).t() for s, e in bounds])
        dw1 = torch.stack([colwise(dh[s:e], "fp8") @ colwise(x_k[s:e], saved).t() for s, e in bounds])
        f = ctx.f
        return dx.to(ctx.x_dtype), dw1[:, :f], dw1[:, f:], dw2, None, None, None, None


def layer_twin(layer, x: torch.Tensor, ep_size: int = 1, weights=None) -> torch.Tensor:
    """`y [T, H]` of `layer` (an fp8-expert MoELayer, EP size 1, all E experts, or `weights` =
    (w_gate, w_up, w_down) of all E experts) on all tokens `x [T, H]`, computed as the recipe says, with
    the expert row buffers of an EP group of `ep_size` ranks whose rank r holds tokens
    `[r * T / ep_size, (r + 1) * T / ep_size)`. Differentiable in x, the router and the weights."""
    cfg = layer.config
    w_gate, w_up, w_down = weights or (layer.experts.w_gate, layer.experts.w_up, layer.experts.w_down)
    rec = layer.router(x)
    t, k, e_all = x.shape[0], cfg.top_k, cfg.num_experts
    xs = _Wire.apply(x, "fp8", "raw") if cfg.fp8_dispatch else x
    flat = rec.topk_ids.reshape(-1)
    owner = torch.arange(t * k) // k * ep_size // t                     # rank that holds each row's token
    order = torch.argsort(flat * ep_size + owner, stable=True)           # by expert, then source rank
    sent = cfg.emulate_wire or ep_size > 1                              # EP 1 without emulation: no wire
    names = ("wire", "grad_wire", "combine_wire", "combine_grad_wire")
    w = {n: (getattr(cfg, n) if sent else "raw") for n in names}
    rows = _Wire.apply(xs[order // k], w["wire"], w["grad_wire"])      # (T * k, H) by expert
    counts = torch.bincount(flat, minlength=e_all).tolist()
    n_loc, outs, start = e_all // ep_size, [], 0
    for r in range(ep_size):
        sizes = counts[r * n_loc:(r + 1) * n_loc]
        part = rows[start:start + sum(sizes)]
        sl = slice(r * n_loc, (r + 1) * n_loc)
        outs.append(_Experts.apply(part, w_gate[sl], w_up[sl], w_down[sl], sizes, cfg.saved_activations,
                                   x.dtype, cfg.recompute_h))
        start += sum(sizes)
    y_rows = _Wire.apply(torch.cat(outs), w["combine_wire"], w["combine_grad_wire"])
    back = torch.empty_like(order)
    back[order] = torch.arange(order.numel())
    y = (y_rows[back].view(t, k, -1).float() * rec.gates.float().unsqueeze(-1)).sum(1).to(x.dtype)
    if layer.shared is not None:
        y = y + layer.shared(x)
    return y
