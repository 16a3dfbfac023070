"""Parameter groups by module type (optim/param_groups.py) for MoEModel and a plain module, frozen
parameters, per-role overrides, and one training step of every family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mxa2a.moe import MoELayerConfig, MoEModel, MoEModelConfig
from mxa2a.optim import SOAPLITE, AdamWLITE, Muon, MuonLITE, build_optimizers, param_groups


def tiny_model(**moe) -> MoEModel:
    layer = MoELayerConfig(hidden=32, d_expert=16, num_experts=4, top_k=2, **moe)
    return MoEModel(MoEModelConfig(moe=layer, seq_len=8, n_layers=2, n_heads=2))


def test_moe_model_parameters_get_their_roles_by_module_type():
    groups = param_groups(tiny_model(n_shared=1))
    names = groups.names
    assert names["experts"] == [f"blocks.{i}.moe.experts.w_{w}" for i in range(2) for w in ("gate", "up", "down")]
    assert names["router"] == ["blocks.0.moe.router.weight", "blocks.1.moe.router.weight"]
    assert names["head"] == ["wte.weight"]  # tied with lm_head: the head's role wins
    assert names["embedding"] == ["wpe.weight"]
    assert len(names["norm"]) == 2 * 2 * 2 + 2 and names["other"] == []
    assert "blocks.0.attn.qkv.weight" in names["hidden"] and "blocks.0.moe.shared.down_proj.weight" in names["hidden"]
    assert all(p.ndim == 3 for p in groups.params["experts"])
    total = sum(len(v) for v in groups.params.values())
    assert total == len(list(tiny_model(n_shared=1).parameters()))


def test_frozen_parameters_are_skipped():
    model = tiny_model()
    model.wpe.requires_grad_(False)
    model.blocks[0].attn.requires_grad_(False)
    groups = param_groups(model)
    assert groups.names["embedding"] == [] and not any(n.startswith("blocks.0.attn") for n in groups.names["hidden"])


def test_any_module_without_head_and_explicit_head():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    assert param_groups(model).names["hidden"] == ["1.weight", "1.bias", "3.weight", "3.bias"][::2]
    assert param_groups(model).names["other"] == ["1.bias", "3.bias"]
    assert param_groups(model, head=model[3]).names["head"] == ["3.weight", "3.bias"]


@pytest.mark.parametrize("family, classes", [("adamw", (torch.optim.AdamW,)), ("muon", (Muon, AdamWLITE)),
                                             ("muon_lite", (MuonLITE, AdamWLITE)), ("soap_lite", (SOAPLITE, AdamWLITE))])
def test_build_optimizers_takes_each_parameter_once_and_trains(seed, family, classes):
    model = tiny_model()
    opts = build_optimizers(model, family, 1e-3, overrides={"router": {"lr": 5e-4}})
    assert tuple(type(o) for o in opts) == classes
    params = [p for o in opts for g in o.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    router = [g for o in opts for g in o.param_groups if g.get("role") == "router"]
    assert len(router) == 1 and router[0]["lr"] == 5e-4
    ids = torch.randint(0, 256, (2, 8))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):  # SOAP's first step only builds its bases
        out = model(ids, ids)
        for o in opts:
            o.zero_grad()
        out.loss.backward()
        for o in opts:
            o.step()
    assert all(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


def test_lite_defaults_are_the_published_moe_setting():
    opts = build_optimizers(tiny_model(), "muon_lite", 1e-3)
    by_role = {g["role"]: g for o in opts for g in o.param_groups}
    assert (by_role["experts"]["b1"], by_role["experts"]["b2"], by_role["experts"]["chi"]) == (0.0, 1.0, 1.0)
    assert by_role["embedding"]["chi"] == 8.0 and by_role["norm"]["chi"] == 8.0
    assert by_role["head"]["subspace_ratio"] == 1.0 and by_role["router"]["subspace_ratio"] == 1.0


def test_unknown_family_or_role_is_rejected():
    with pytest.raises(ValueError, match="family"):
        build_optimizers(tiny_model(), "lion", 1e-3)
    with pytest.raises(ValueError, match="roles"):
        build_optimizers(tiny_model(), "muon", 1e-3, overrides={"mlp": {}})
