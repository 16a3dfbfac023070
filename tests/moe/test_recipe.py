"""The recipe setting (`MoELayerConfig.recipe`, moe/recipe.py) and what it builds: the fields each recipe
fills and their overrides, clear errors for combinations that cannot work, the formats of every tensor
kept for backward, and the fast path against the pure-torch twin of its recipe (recipe_twin.py), EP 1."""

from dataclasses import replace

import pytest
import torch

from mxa2a.moe import DispatchPlan, MoELayer, MoELayerConfig, MoEModel, MoEModelConfig
from mxa2a.moe.experts import GroupedExperts
from mxa2a.moe.recipe import RECIPES
from recipe_twin import layer_step, layer_twin, rel_error

BASE = dict(hidden=128, d_expert=256, num_experts=4, top_k=2)


def test_each_recipe_fills_its_fields():
    for name, fields in RECIPES.items():
        cfg = MoELayerConfig(**BASE, recipe=name)
        assert {n: getattr(cfg, n) for n in fields} == fields, name
    mx = MoELayerConfig(**BASE, recipe="fp8-mxfp4")
    assert (mx.wire, mx.saved_activations, mx.combine_wire, mx.fp8_dispatch) == ("mxfp4", "mxfp4", "raw", True)


def test_fields_set_by_hand_win_and_survive_a_recipe_change():
    cfg = MoELayerConfig(**BASE, recipe="fp8-mxfp4", combine_wire="mxfp4")
    assert cfg.combine_wire == "mxfp4" and cfg.wire == "mxfp4"
    moved = replace(cfg, recipe="fp8")
    assert (moved.wire, moved.saved_activations, moved.combine_wire) == ("fp8", "fp8", "mxfp4")
    back = replace(moved, recipe="bf16", combine_wire="raw")
    assert {n: getattr(back, n) for n in RECIPES["bf16"]} == RECIPES["bf16"]
    # the bf16 recipe with FP8 experts by hand: FP8's saved format, no FP8 dispatch (the old behaviour)
    hand = MoELayerConfig(**BASE, expert_precision="fp8")
    assert (hand.saved_activations, hand.fp8_dispatch, hand.wire) == ("fp8", False, "raw")
    assert replace(MoELayerConfig(**BASE), expert_precision="fp8").saved_activations == "fp8"
    model = MoEModelConfig(moe=MoELayerConfig(**BASE, grad_wire="fp8"), recipe="fp8-mxfp4")
    assert (model.moe.recipe, model.moe.wire, model.moe.grad_wire) == ("fp8-mxfp4", "mxfp4", "fp8")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(recipe="fp4"), ValueError, "recipe must be one of"),
    (dict(recipe="fp8", wire="bf16"), ValueError, "fp8_dispatch=True moves FP8 rows"),
    (dict(fp8_dispatch=True), ValueError, "needs expert_precision='fp8'"),
    (dict(saved_activations="mxfp4"), ValueError, "saved_activations='mxfp4' needs expert_precision='fp8'"),
    (dict(recipe="fp8", saved_activations="bf16"), ValueError, "must be one of \\('fp8', 'mxfp4'\\)"),
    (dict(expert_precision="fp4"), ValueError, "expert_precision must be one of"),
    (dict(recipe="fp8", fp8_dispatch=1), TypeError, "fp8_dispatch must be a bool"),
    (dict(combine_grad_wire="fp6"), ValueError, "combine_grad_wire must be one of"),
    (dict(recompute_h=True), ValueError, "recompute_h=True recomputes"),
    (dict(recipe="fp8", recompute_h=1), TypeError, "recompute_h must be a bool"),
])
def test_bad_recipe_fields_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        MoELayerConfig(**BASE, **kwargs)
    with pytest.raises(ValueError, match="saved_activations must be one of"):
        GroupedExperts(2, 128, 128, precision="fp8", saved_activations="bf16")


def _saved_tensors(fn):
    kept = []

    def pack(t):
        kept.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, kept


@pytest.mark.parametrize("recipe", ["fp8", "fp8-mxfp4", "fp8-mxfp4 recompute_h"])
def test_the_expert_mlp_keeps_only_quantized_rows(recipe, seed):
    """fp8-mxfp4: x, z, h kept as MXFP4 (uint8 codes + E8M0 bytes), no float tensor at all; fp8: x and z
    FP8, h bf16. Every kept tensor has the M = 40 rows (no padding: the weight-gradient operands are
    gathered group-aligned in backward)."""
    recompute = recipe.endswith("recompute_h")
    cfg = MoELayerConfig(**BASE, recipe=recipe.split()[0], emulate_wire=True, recompute_h=recompute)
    layer = MoELayer(cfg)
    x = torch.randn(20, 128)
    layout = layer.dispatcher.plan(layer.router(x).topk_ids)
    x_link, x_fp8 = layer.dispatcher.dispatch_fp8(x, layout, backend="torch")
    _, kept = _saved_tensors(lambda: layer.experts(x_link, layout.tokens_per_local_expert, x_fp8=x_fp8))
    h, f, m = 128, 256, 40
    if recipe.startswith("fp8-mxfp4"):
        want = [(torch.uint8, (m, h // 2)), (torch.uint8, (m, h // 32)),              # x
                (torch.uint8, (m, f)), (torch.uint8, (m, 2 * f // 32)),              # h [M, 2F]
                (torch.uint8, (m, f // 2)), (torch.uint8, (m, f // 32))]             # z
        if recompute:
            del want[2:4]
    else:
        want = [(torch.float8_e4m3fn, (m, h)), (torch.uint8, (m, 1)), (torch.bfloat16, (m, 2 * f)),
                (torch.float8_e4m3fn, (m, f)), (torch.uint8, (m, 2))]
    assert kept == want + [(torch.int32, (4,))]


def test_fp8_mxfp4_layer_keeps_no_wide_copy_of_an_expert_activation(seed):
    """The whole layer: the float tensors kept are the router's (its input x [T, H], logits-derived
    [T, E] / [T, k]) and the combine's expert outputs [T * k, H] (the gate gradient needs them);
    nothing of width d_expert or 2 * d_expert, and no [T * k, H] copy of the dispatched input."""
    layer = MoELayer(MoELayerConfig(**BASE, recipe="fp8-mxfp4", emulate_wire=True))
    x = torch.randn(20, 128, requires_grad=True)
    _, kept = _saved_tensors(lambda: layer(x)[0])
    wide = [(d, s) for d, s in kept if d.is_floating_point and d.itemsize >= 2]
    assert sorted(s for _, s in wide) == sorted([(128, 4), (20, 128), (20, 2), (20, 4), (40, 128), (20, 2)])


def _grads(layer, x, probe, **kwargs) -> list:
    y, dx, grads = layer_step(layer, x, probe, **kwargs)
    return [y, dx] + [grads[n] for n in sorted(grads)]


@pytest.mark.parametrize("recipe,overrides,backend", [
    ("fp8", {}, "torch"),
    ("fp8-mxfp4", {}, "torch"),
    ("fp8-mxfp4", {}, "triton"),
    ("fp8-mxfp4", dict(combine_wire="mxfp4", grad_wire="mxfp4", combine_grad_wire="mxfp4"), "torch"),
    ("fp8-mxfp4", dict(recompute_h=True), "torch"),
    ("fp8-mxfp4", dict(recompute_h=True, emulate_wire=False), "torch"),  # x not MXFP4 values: h differs
    ("fp8", dict(recompute_h=True), "torch"),
])
def test_the_fast_path_matches_the_recipe_twin(recipe, overrides, backend, seed):
    cfg = MoELayerConfig(**BASE, n_shared=1, recipe=recipe, **{"emulate_wire": True, **overrides})
    layer = MoELayer(cfg)
    layer.experts.fp8_backend = backend  # "triton": the kernels under the interpreter
    x, probe = torch.randn(48, 128) * 2, torch.randn(48, 128)
    got = _grads(layer, x, probe)
    xt = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    (layer_twin(layer, xt) * probe).sum().backward()
    want = [layer_twin(layer, x).detach(), xt.grad] + [p.grad for _, p in sorted(layer.named_parameters())]
    names = ["y", "dx"] + [n for n, _ in sorted(layer.named_parameters())]
    # Same quantization points and codecs; what may differ is fp32 summation order and sigmoid's last
    # bit, which can move one FP8 rounding of an intermediate by a step. Observed with the torch
    # backend: 0 to 2e-6 (bound 1e-4); the Triton bound, 1e-3, is test_fp8_experts'.
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, name
        assert rel_error(g, w) < (1e-3 if backend == "triton" else 1e-4), (name, rel_error(g, w))


def test_static_plan_and_dynamic_path_are_bit_identical(seed):
    layer = MoELayer(MoELayerConfig(**BASE, n_shared=1, recipe="fp8-mxfp4", emulate_wire=True))
    x, probe = torch.randn(32, 128), torch.randn(32, 128)
    dynamic = _grads(layer, x, probe)
    with torch.no_grad():
        rec = layer.router(x)
    plan = DispatchPlan.build(rec.topk_ids, 4, gates=rec.gates)
    layout = layer.dispatcher.layout_from_plan(plan)
    static = _grads(layer, x, probe, layout=layout)
    for a, b in zip(dynamic, static):
        assert torch.equal(a, b)


def test_moe_model_trains_under_each_recipe(seed):
    ids = torch.randint(0, 256, (2, 9))
    for recipe in RECIPES:
        moe = MoELayerConfig(hidden=128, d_expert=128, num_experts=4, top_k=2, emulate_wire=True)
        model = MoEModel(MoEModelConfig(moe=moe, seq_len=8, n_layers=1, n_heads=2, recipe=recipe))
        out = model(ids[:, :-1], ids[:, 1:])
        out.loss.backward()
        assert torch.isfinite(out.loss), recipe
        grads = [p.grad for n, p in model.named_parameters() if "experts.w_" in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), recipe


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["fp8", "fp8-mxfp4"])
def test_gpu_fast_path_matches_the_recipe_twin(recipe, seed):
    """The Triton kernels on a GPU against the twin on the CPU. Hopper's FP8 MMA accumulates each
    128-step with fewer bits than fp32 (about 2^-11 of sum |ab|), which can move an FP8 rounding of h,
    z or dh: 1e-2 relative, as test_fp8_experts' GPU test. In fp8-mxfp4 such a move can also move the
    E2M1 rounding of the kept z, x or h (steps of 1/4 to 1/2 of the value, E4M3 1/16 to 1/8): 2e-2. (An
    H100 gave 1.09e-2 on w_down's gradient on 2026-12-07, y and dx below 1e-2; the assertion stopped
    there, so the later gradients were not seen.)"""
    layer = MoELayer(MoELayerConfig(hidden=256, d_expert=256, num_experts=8, top_k=2, n_shared=1,
                                    recipe=recipe, emulate_wire=True))
    x, probe = torch.randn(300, 256) * 2, torch.randn(300, 256)
    xt = x.clone().requires_grad_(True)
    (layer_twin(layer, xt) * probe).sum().backward()
    # clones: layer.cuda() below moves each parameter's .grad to the GPU in place
    want = [layer_twin(layer, x).detach(), xt.grad] + [p.grad.clone() for _, p in sorted(layer.named_parameters())]
    got = _grads(layer.cuda(), x.cuda(), probe.cuda())
    names = ["y", "dx"] + [n for n, _ in sorted(layer.named_parameters())]
    for name, g, w in zip(names, got, want):
        assert rel_error(g.cpu(), w) < (2e-2 if recipe == "fp8-mxfp4" else 1e-2), (name, rel_error(g.cpu(), w))
