"""The training recipes a `MoELayerConfig` / `MoEModelConfig` can name (docs/RECIPE.md): one setting,
`recipe=`, that fills the precision and format fields of the layer, each of which stays overridable.

| field               | "bf16"  | "fp8"                  | "fp8-mxfp4"               |
|---------------------|---------|------------------------|---------------------------|
| expert_precision    | bf16    | fp8                    | fp8                       |
| fp8_dispatch        | False   | True (quantize once)   | True                      |
| saved_activations   | bf16    | fp8 (h bf16)           | mxfp4 (x, z and h)        |
| wire (dispatch)     | raw     | fp8                    | mxfp4                     |
| combine_wire        | raw     | raw                    | raw                       |
| grad_wire (dx back) | raw     | raw                    | raw                       |
| combine_grad_wire   | raw     | fp8                    | fp8                       |
"raw" sends the activations' own dtype (bf16 in a bf16 model). Why these defaults: README "Recipes".
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "bf16": dict(expert_precision="bf16", fp8_dispatch=False, saved_activations="bf16", wire="raw",
                 combine_wire="raw", grad_wire="raw", combine_grad_wire="raw"),
    "fp8": dict(expert_precision="fp8", fp8_dispatch=True, saved_activations="fp8", wire="fp8",
                combine_wire="raw", grad_wire="raw", combine_grad_wire="fp8"),
    "fp8-mxfp4": dict(expert_precision="fp8", fp8_dispatch=True, saved_activations="mxfp4", wire="mxfp4",
                      combine_wire="raw", grad_wire="raw", combine_grad_wire="fp8"),
}
RECIPE_FIELDS = tuple(RECIPES["bf16"])
# What each expert precision can keep for backward: the bf16 experts keep what autograd keeps.
SAVED_FORMATS = {"bf16": ("bf16",), "fp8": ("fp8", "mxfp4")}
FP8_DISPATCH_WIRES = ("fp8", "mxfp4")


def check_recipe(recipe: object) -> str:
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
    return recipe


def resolve_recipe(recipe: str, given: dict[str, Any], filled_from: tuple) -> tuple[dict[str, Any], tuple]:
    """The recipe's fields with `given` (None = take the recipe's) laid over them.

    `filled_from` = (recipe, names) says which fields an earlier resolution filled in (`dataclasses.replace`
    passes them on): those that still hold that recipe's value are filled again, from the recipe now
    named and the fields now set (`replace(cfg, recipe="fp8")`, `replace(cfg, expert_precision="fp8")`),
    while fields set by hand keep their value. Returns (fields, new filled_from).
    """
    given = dict(given)
    if filled_from:
        old = RECIPES[filled_from[0]]
        for name in filled_from[1]:
            if given[name] == old[name]:
                given[name] = None
    preset = RECIPES[check_recipe(recipe)]
    filled = tuple(n for n in RECIPE_FIELDS if given[n] is None)
    out = {n: (preset[n] if given[n] is None else given[n]) for n in RECIPE_FIELDS}
    if "saved_activations" in filled and out["saved_activations"] not in SAVED_FORMATS.get(
            out["expert_precision"], ()):
        # e.g. recipe "bf16" with expert_precision="fp8" set by hand: that precision's first format
        out["saved_activations"] = SAVED_FORMATS.get(out["expert_precision"], ("bf16",))[0]
    if "fp8_dispatch" in filled and out["expert_precision"] != "fp8":
        out["fp8_dispatch"] = False
    return out, (recipe, filled)


def check_recipe_fields(f: dict[str, Any]) -> None:
    """Raise ValueError for combinations of the recipe fields that cannot work together."""
    precision, saved = f["expert_precision"], f["saved_activations"]
    if precision not in SAVED_FORMATS:
        raise ValueError(f"expert_precision must be one of {tuple(SAVED_FORMATS)}, got {precision!r}")
    if precision in SAVED_FORMATS and saved not in SAVED_FORMATS[precision]:
        raise ValueError(f"saved_activations={saved!r} needs expert_precision='fp8' (the FP8 expert MLP "
                         f"keeps its activations in {SAVED_FORMATS['fp8']}); with expert_precision="
                         f"{precision!r} it must be one of {SAVED_FORMATS[precision]}")
    if not isinstance(f["fp8_dispatch"], bool):
        raise TypeError(f"fp8_dispatch must be a bool, got {f['fp8_dispatch']!r}")
    if f["fp8_dispatch"] and precision != "fp8":
        raise ValueError(f"fp8_dispatch=True sends FP8 rows straight into the FP8 expert GEMMs: it needs "
                         f"expert_precision='fp8', got {precision!r}")
    if f["fp8_dispatch"] and f["wire"] not in FP8_DISPATCH_WIRES:
        raise ValueError(f"fp8_dispatch=True moves FP8 rows: wire must be one of {FP8_DISPATCH_WIRES}, got "
                         f"{f['wire']!r} (set fp8_dispatch=False to dispatch the activations as they are)")
