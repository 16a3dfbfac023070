"""Expert-parallel dispatch: the only module of `moe/` that knows about ranks (`docs/MOE.md`).

`ExpertParallelDispatcher` moves the (token, slot) rows of a batch to the ranks that own their experts
(rank `r` owns global experts `[r * E_local, (r + 1) * E_local)`) and brings the outputs back, in three
calls, so that a static plan (`moe/plan.py`, via `layout_from_plan`) can replace the first:
1. `plan(topk_ids [T, k]) -> DispatchLayout`: the `T * k` rows permuted by destination expert, the splits
   per rank, the rows per local expert; one count `all_to_all_single` and the ONE device->host sync.
2. `dispatch(x [T, H], layout) -> [N_local, H]` and 3. `combine(y_local, layout, gates [T, k]) -> [T, H]`
   (gate-weighted sum: `moe/weighted_unpermute.py`): all-to-alls through `mxa2a.comm` with `wire`
   (`grad_wire` backward); no host sync but `mxa2a.comm`'s header check (`wire_check`, by default on the
   first call of a signature), and none at all with a static layout (`check=False`).
A token routed to two experts on one rank is sent once per expert, which keeps the layout a permutation.
With EP size 1 nothing is sent; `emulate_wire=True` then applies the wire's quantize-dequantize where the
all-to-all would be: a one-process twin that agrees exactly with any EP run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..comm import all_to_all_autograd, all_to_all_single
from ..quant import dequantize_fp8, dequantize_mxfp4, fp8_to_mxfp4, mxfp4_to_fp8, quantize_fp8, quantize_mxfp4
from ..quant.formats import E4M3_DTYPE, FP8_TILE, MXFP4_BLOCK, FP8Tensor
from .gather_sum import gather_sum
from .weighted_unpermute import weighted_unpermute

WIRE_NAMES = ("raw", "bf16", "fp8", "mxfp4")
_WIRE_BLOCK = {"mxfp4": MXFP4_BLOCK, "fp8": FP8_TILE}


def check_wire(wire: Any, hidden: int, name: str = "wire") -> None:
    """Raise ValueError unless `wire` is a known wire name (or a codec object) usable for rows of
    `hidden` elements: MXFP4 needs a multiple of 32, FP8 a multiple of 128."""
    if isinstance(wire, str):
        if wire not in WIRE_NAMES:
            raise ValueError(f"{name} must be one of {WIRE_NAMES} or a codec object, got {wire!r}")
        block = _WIRE_BLOCK.get(wire)
    else:
        block = getattr(wire, "block", None)
    if block is not None and hidden % block != 0:
        raise ValueError(f"{name}={wire!r} encodes rows in blocks of {block} elements, so the hidden "
                         f"size must be a multiple of {block}; got hidden={hidden}")


def wire_roundtrip(x: torch.Tensor, wire: str, scale_mode: str = "rceil") -> torch.Tensor:
    """What `x [N, H]` looks like after crossing the wire: `dequantize(quantize(x))` in x's dtype
    (identity for "raw", a bf16 cast for "bf16"). Not differentiable; see `_WireLoopback`."""
    if wire == "raw":
        return x
    if wire == "bf16":
        return x.to(torch.bfloat16).to(x.dtype)
    if wire == "mxfp4":
        return dequantize_mxfp4(quantize_mxfp4(x, scale_mode=scale_mode), dtype=x.dtype)
    if wire == "fp8":
        return dequantize_fp8(quantize_fp8(x), dtype=x.dtype)
    raise ValueError(f"emulate_wire supports the wire names {WIRE_NAMES}, got {wire!r}")


class _WireLoopback(torch.autograd.Function):
    """EP-size-1 stand-in for a compressed all-to-all: forward rounds through `wire`, backward
    rounds the gradient through `grad_wire` (straight-through otherwise, as in `comm/`)."""

    @staticmethod
    def forward(ctx, x, wire, grad_wire, scale_mode):
        ctx.grad_wire, ctx.scale_mode = grad_wire, scale_mode
        out = wire_roundtrip(x, wire, scale_mode)
        return out.clone() if out is x else out

    @staticmethod
    def backward(ctx, grad):
        return wire_roundtrip(grad.contiguous(), ctx.grad_wire, ctx.scale_mode), None, None, None


class _GatherTokenRows(torch.autograd.Function):
    """`x [T, H] -> x[token_index] [T * k, H]` whose backward sums each token's k row gradients in slot
    order (`moe/gather_sum.py`). (The backward of `index_select`, `index_add_`, sums them with atomics on
    CUDA, in an order that changes from run to run: input gradients would not be reproducible bit for bit.)"""

    @staticmethod
    def forward(ctx, x, token_index, inverse_permutation, top_k):
        ctx.save_for_backward(inverse_permutation)
        ctx.top_k = top_k
        return x.index_select(0, token_index)

    @staticmethod
    def backward(ctx, grad_rows):
        (inverse_permutation,) = ctx.saved_tensors
        # Row t * k + s (token t, slot s) was sent at position inverse_permutation[t * k + s].
        return gather_sum(grad_rows, inverse_permutation, ctx.top_k), None, None, None


class _FP8DispatchGrad(torch.autograd.Function):
    """The autograd link of `dispatch_fp8`: forward returns a zero-stride `[N_local, H]` placeholder of
    x's dtype (no memory; the FP8 rows travel beside it); backward takes the gradient of the expert
    rows back as `dispatch`'s backward does: ungroup, reverse all-to-all with `grad_wire`, and the sum
    of each token's k rows in slot order (the quantization's gradient is the identity)."""

    @staticmethod
    def forward(ctx, x, dispatcher, layout):
        ctx.dispatcher, ctx.layout = dispatcher, layout
        return x.new_zeros(()).expand(layout.num_local_rows, x.shape[1])

    @staticmethod
    def backward(ctx, grad_rows):
        d, layout = ctx.dispatcher, ctx.layout
        g = d.send_grad(d.ungroup(grad_rows.contiguous(), layout), layout)     # (T * k, H) send order
        return gather_sum(g, layout.inverse_permutation, layout.top_k), None, None


def _index_rows(t: FP8Tensor, index: torch.Tensor) -> FP8Tensor:
    return FP8Tensor(t.data.index_select(0, index), t.scales.index_select(0, index))


@dataclass(frozen=True)
class DispatchLayout:
    """Where each (token, slot) row of one micro-batch goes, for one EP rank.

    Index tensors live on the device; split sizes and per-expert counts are host tuples.
    - `num_tokens` T and `top_k` k: the batch has `T * k` (token, slot) rows, row `i` = token `i // k`,
      slot `i % k`.
    - `permutation`: int64 `[T * k]`, the row index of each row sent, in send order (by destination
      rank, then by local expert there); `inverse_permutation` its inverse.
    - `send_splits` / `recv_splits`: rows sent to / received from each rank (`[ep_size]` each).
    - `regroup`: int64 `[N_local]`, for each row handed to the experts (grouped by local expert) its
      index in the receive buffer (grouped by source rank); `inverse_regroup` its inverse. None when
      the receive order already is the expert order (EP size 1).
    - `tokens_per_local_expert`: rows per local expert (host), and `expert_offsets`, their int32
      cumulative sums on the device (the `offs` of a grouped GEMM).
    - `static`: built ahead of the step (`moe/plan.py`); the all-to-alls then skip comm's format check
      (`check=False`), so nothing in dispatch / combine syncs the host.
    - `token_index`: int64 `[T * k]`, `permutation // top_k` (the token of each row sent), precomputed
      by static plans; None = computed on the device at dispatch.
    """

    num_tokens: int
    top_k: int
    permutation: torch.Tensor
    inverse_permutation: torch.Tensor
    send_splits: tuple[int, ...]
    recv_splits: tuple[int, ...]
    regroup: torch.Tensor | None
    inverse_regroup: torch.Tensor | None
    tokens_per_local_expert: tuple[int, ...]
    expert_offsets: torch.Tensor
    static: bool = False
    token_index: torch.Tensor | None = None

    @property
    def num_local_rows(self) -> int:
        return sum(self.recv_splits)


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


class ExpertParallelDispatcher:
    """Routes (token, slot) rows between the ranks of `group` (None: EP size 1, no communication).

    `num_experts` E must be divisible by the group size; rank `r` owns experts
    `[r * E_local, (r + 1) * E_local)`. `wire` / `grad_wire` / `scale_mode` are passed to
    `mxa2a.comm.all_to_all_autograd` for the dispatch all-to-all, `combine_wire` / `combine_grad_wire`
    (None: the same as `wire` / `grad_wire`) for the combine; each moves `N` rows of `H` elements, i.e.
    `N * row_bytes(wire, H)` bytes per direction. `dispatch_fp8` sends FP8 rows (wire "fp8"/"mxfp4").
    `wire_check` is comm's `check`: None (default) uses comm's policy, which verifies the format once
    per call signature (no per-call host sync); True checks every call (a host sync each: debug);
    False never checks. Static layouts never check.
    """

    def __init__(self, num_experts: int, hidden: int, group: Any = None, *, wire: Any = "raw",
                 grad_wire: Any = "raw", combine_wire: Any = None, combine_grad_wire: Any = None,
                 scale_mode: str = "rceil", emulate_wire: bool = False,
                 wire_check: bool | None = None) -> None:
        self.group = group
        self.ep_size = dist.get_world_size(group) if group is not None else 1
        self.ep_rank = dist.get_rank(group) if group is not None else 0
        if num_experts % self.ep_size != 0:
            raise ValueError(f"num_experts ({num_experts}) must be divisible by the EP group size "
                             f"({self.ep_size})")
        combine_wire = wire if combine_wire is None else combine_wire
        combine_grad_wire = grad_wire if combine_grad_wire is None else combine_grad_wire
        wires = dict(wire=wire, grad_wire=grad_wire, combine_wire=combine_wire,
                     combine_grad_wire=combine_grad_wire)
        for name, w in wires.items():
            check_wire(w, hidden, name)
        if emulate_wire and self.ep_size != 1:
            raise ValueError("emulate_wire is for EP size 1 only (with EP > 1 the wire is real)")
        if emulate_wire and not all(isinstance(w, str) for w in wires.values()):
            raise ValueError(f"emulate_wire needs wire names from {WIRE_NAMES}, not codec objects")
        self.num_experts, self.hidden = num_experts, hidden
        self.num_local = num_experts // self.ep_size
        self.wire, self.grad_wire, self.scale_mode = wire, grad_wire, scale_mode
        self.combine_wire, self.combine_grad_wire = combine_wire, combine_grad_wire
        self.emulate_wire, self.wire_check = emulate_wire, wire_check

    @property
    def local_experts(self) -> range:
        """Global ids of the experts this rank owns."""
        return range(self.ep_rank * self.num_local, (self.ep_rank + 1) * self.num_local)

    # -- 1. plan: the only step that syncs --------------------------------------------------------
    def plan(self, topk_ids: torch.Tensor) -> DispatchLayout:
        """topk_ids int `[T, k]` (global expert ids) -> DispatchLayout. Dynamic path: one
        `all_to_all_single` of `E` int64 counts (EP > 1) and ONE device->host sync."""
        if not isinstance(topk_ids, torch.Tensor) or topk_ids.dtype.is_floating_point \
                or topk_ids.dtype.is_complex or topk_ids.dtype == torch.bool:
            got = topk_ids.dtype if isinstance(topk_ids, torch.Tensor) else type(topk_ids).__name__
            raise TypeError(f"topk_ids must be an integer tensor of expert ids [T, k], got {got}")
        if topk_ids.dim() != 2:
            raise ValueError(f"topk_ids must be [T, k], got shape {tuple(topk_ids.shape)}")
        num_tokens, top_k = topk_ids.shape
        flat = topk_ids.reshape(-1)
        # Sorting by global expert id sorts by destination rank too (experts are contiguous per rank).
        permutation = torch.argsort(flat, stable=True)
        counts, num_bad = self._count_rows(flat)
        if self.ep_size == 1:
            host = counts.tolist()  # the one sync
            if host[0] < 0:
                self._raise_bad_ids(flat, num_bad)
            return DispatchLayout(num_tokens, top_k, permutation, _inverse(permutation),
                                  (flat.numel(),), (flat.numel(),), None, None, tuple(host),
                                  counts.cumsum(0).to(torch.int32))
        recv_counts = torch.empty_like(counts)  # (ep * E_local,): from rank s, rows for my experts
        dist.all_to_all_single(recv_counts, counts, group=self.group)
        host = torch.cat([counts, recv_counts]).tolist()  # the one sync
        send_host, recv_host = host[: self.num_experts], host[self.num_experts:]
        n_loc = self.num_local
        if send_host[0] < 0:
            self._raise_bad_ids(flat, num_bad)
        bad_peers = [r for r in range(self.ep_size) if recv_host[r * n_loc] < 0]
        if bad_peers:
            raise ValueError(f"EP ranks {bad_peers} were given expert ids outside [0, {self.num_experts}) "
                             f"(their plan() raised too); no rows were exchanged")
        send_splits = tuple(sum(send_host[r * n_loc:(r + 1) * n_loc]) for r in range(self.ep_size))
        recv_splits = tuple(sum(recv_host[r * n_loc:(r + 1) * n_loc]) for r in range(self.ep_size))
        per_expert = tuple(sum(recv_host[r * n_loc + e] for r in range(self.ep_size))
                           for e in range(n_loc))
        # Received rows come grouped by source rank, then local expert; regroup to expert-major.
        local_expert_of_row = torch.arange(n_loc, device=flat.device).repeat(self.ep_size)
        local_expert_of_row = local_expert_of_row.repeat_interleave(recv_counts,
                                                                    output_size=sum(recv_splits))
        regroup = torch.argsort(local_expert_of_row, stable=True)
        offsets = recv_counts.view(self.ep_size, n_loc).sum(0).cumsum(0).to(torch.int32)
        return DispatchLayout(num_tokens, top_k, permutation, _inverse(permutation), send_splits,
                              recv_splits, regroup, _inverse(regroup), per_expert, offsets)

    def _count_rows(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows per global expert `[E]` int64 and the number of ids outside `[0, E)`, on the device.
        When any id is outside, every count is -1: the count exchange then tells the peers too, and
        the caller raises after its one host sync instead of syncing again to look."""
        e = self.num_experts
        inside = (flat >= 0) & (flat < e)
        counts = torch.bincount(torch.where(inside, flat, e), minlength=e + 1)  # (E + 1,): last = outside
        num_bad = counts[e]
        return torch.where(num_bad > 0, -1, counts[:e]), num_bad

    def _raise_bad_ids(self, flat: torch.Tensor, num_bad: torch.Tensor) -> None:
        lo, hi = int(flat.min()), int(flat.max())
        raise ValueError(f"topk_ids must hold expert ids in [0, {self.num_experts}), got {int(num_bad)} "
                         f"of {flat.numel()} outside (values in [{lo}, {hi}])")

    def layout_from_plan(self, plan: Any) -> DispatchLayout:
        """The `DispatchLayout` of a `moe.plan.DispatchPlan`, after checking that the plan was made for
        this dispatcher's expert count and EP group (size and rank). Reads no device value."""
        layout = getattr(plan, "layout", None)
        if not isinstance(layout, DispatchLayout):
            raise TypeError(f"plan must be a mxa2a.moe.DispatchPlan, got {type(plan).__name__}")
        if (plan.num_experts, plan.ep_size, plan.ep_rank) != (self.num_experts, self.ep_size, self.ep_rank):
            raise ValueError(f"plan was built for E={plan.num_experts}, EP size {plan.ep_size}, rank "
                             f"{plan.ep_rank}; this dispatcher has E={self.num_experts}, EP size "
                             f"{self.ep_size}, rank {self.ep_rank}")
        return layout

    # -- 2. dispatch ------------------------------------------------------------------------------
    def dispatch(self, x: torch.Tensor, layout: DispatchLayout) -> torch.Tensor:
        """x `[T, H]` -> rows for this rank's experts `[N_local, H]`, grouped by local expert
        (`layout.tokens_per_local_expert`). Differentiable; no host sync here (see `mxa2a.comm`;
        none at all with a static layout). Equals `regroup(send(permute(x)))`."""
        return self.regroup(self.send(self.permute(x, layout), layout), layout)

    def permute(self, x: torch.Tensor, layout: DispatchLayout) -> torch.Tensor:
        """x `[T, H]` -> the (token, slot) rows in send order `[T * k, H]` (a gather)."""
        if x.dim() != 2 or x.shape[0] != layout.num_tokens or x.shape[1] != self.hidden:
            raise ValueError(f"x must be [T={layout.num_tokens}, H={self.hidden}], got {tuple(x.shape)}")
        index = layout.token_index if layout.token_index is not None else layout.permutation // layout.top_k
        return _GatherTokenRows.apply(x, index, layout.inverse_permutation, layout.top_k)

    def send(self, rows: torch.Tensor, layout: DispatchLayout) -> torch.Tensor:
        """The dispatch all-to-all (encode + transfer + decode): rows in send order -> received rows
        `[N_local, H]`, grouped by source rank."""
        return self._exchange(rows, layout.recv_splits, layout.send_splits, static=layout.static)

    def regroup(self, rows: torch.Tensor, layout: DispatchLayout) -> torch.Tensor:
        """Received rows (by source rank) -> rows grouped by local expert."""
        return rows if layout.regroup is None else rows.index_select(0, layout.regroup)

    # -- 2'. FP8-native dispatch (docs/RECIPE.md, forward steps 2-3) -----------------------------
    def dispatch_fp8(self, x: torch.Tensor, layout: DispatchLayout, *,
                     backend: str = "auto") -> tuple[torch.Tensor, FP8Tensor]:
        """x `[T, H]` -> (`grad_link`, FP8 rows `[N_local, H]` grouped by local expert).

        x is quantized to FP8 1x128 once (T rows, before the permute); the FP8 rows (data and scales)
        are permuted, sent with `wire` ("fp8", or "mxfp4": FP8 -> MXFP4 on the wire -> FP8 by the
        direct conversions; with EP size 1 only under `emulate_wire`) and regrouped, never widened.
        `grad_link` is a zero-stride `[N_local, H]` tensor of x's dtype that ties the rows into
        autograd: hand it to the experts with the rows; the gradient they return for it goes back as
        `dispatch`'s does (`grad_wire`). No host sync (none at all with a static layout)."""
        if self.wire not in ("fp8", "mxfp4"):
            raise ValueError(f"dispatch_fp8 moves FP8 rows: the dispatcher's wire must be 'fp8' or 'mxfp4', "
                             f"got {self.wire!r}")
        if x.dim() != 2 or x.shape[0] != layout.num_tokens or x.shape[1] != self.hidden:
            raise ValueError(f"x must be [T={layout.num_tokens}, H={self.hidden}], got {tuple(x.shape)}")
        index = layout.token_index if layout.token_index is not None else layout.permutation // layout.top_k
        with torch.no_grad():
            rows = _index_rows(quantize_fp8(x.detach().contiguous(), backend=backend), index)  # (T * k, H)
            rows = self._send_fp8(rows, layout)                                               # by source
            if layout.regroup is not None:
                rows = _index_rows(rows, layout.regroup)                                      # by expert
        return _FP8DispatchGrad.apply(x, self, layout), rows

    def _send_fp8(self, rows: FP8Tensor, layout: DispatchLayout) -> FP8Tensor:
        if self.ep_size == 1:
            if self.emulate_wire and self.wire == "mxfp4":
                return mxfp4_to_fp8(fp8_to_mxfp4(rows, scale_mode=self.scale_mode))
            return rows
        n, h = layout.num_local_rows, self.hidden
        out = FP8Tensor(torch.empty(n, h, dtype=E4M3_DTYPE, device=rows.device),
                        torch.empty(n, h // FP8_TILE, dtype=torch.uint8, device=rows.device))
        all_to_all_single(out, rows, list(layout.recv_splits), list(layout.send_splits), self.group,
                          wire=self.wire, scale_mode=self.scale_mode,
                          check=False if layout.static else self.wire_check)
        return out

    def send_grad(self, grad_rows: torch.Tensor, layout: DispatchLayout) -> torch.Tensor:
        """The backward of `send`, outside autograd: received-row gradients (by source rank)
        `[N_local, H]` -> `[T * k, H]` in send order, sent with `grad_wire`."""
        if self.ep_size == 1:
            return wire_roundtrip(grad_rows, self.grad_wire, self.scale_mode) if self.emulate_wire else grad_rows
        out = grad_rows.new_empty(layout.num_tokens * layout.top_k, grad_rows.shape[1])
        all_to_all_single(out, grad_rows, list(layout.send_splits), list(layout.recv_splits), self.group,
                          wire=self.grad_wire, scale_mode=self.scale_mode,
                          check=False if layout.static else self.wire_check)
        return out

    # -- 3. combine -------------------------------------------------------------------------------
    def combine(self, y_local: torch.Tensor, layout: DispatchLayout, gates: torch.Tensor
                ) -> torch.Tensor:
        """Expert outputs `[N_local, H]` (expert order) and gates fp32 `[T, k]` ->
        `y [T, H] = sum_slots gate * expert_output` in y_local's dtype (fp32 products added in slot
        order, see `moe/weighted_unpermute.py`). Differentiable; no host sync here (see `mxa2a.comm`;
        none at all with a static layout). Equals `unpermute_weighted(send_back(ungroup(y_local)))`."""
        rows = self.send_back(self.ungroup(y_local, layout), layout)
        return self.unpermute_weighted(rows, layout, gates)

    @staticmethod
    def unpermute_weighted(rows: torch.Tensor, layout: DispatchLayout, gates: torch.Tensor) -> torch.Tensor:
        """Rows in send order `[T * k, H]` and gates fp32 `[T, k]` -> `[T, H]`: each token's k rows
        gathered and gate-weighted-summed in one pass (Triton on CUDA)."""
        if gates.shape != (layout.num_tokens, layout.top_k):
            raise ValueError(f"gates must be [T={layout.num_tokens}, k={layout.top_k}], got {tuple(gates.shape)}")
        return weighted_unpermute(rows, layout.inverse_permutation, layout.permutation, gates)

    def return_rows(self, rows: torch.Tensor, layout: DispatchLayout, *, wire: Any = None,
                    grad_wire: Any = None) -> torch.Tensor:
        """Send per-row results `[N_local, D]` (expert order) back to their tokens: `[T, k, D]`
        (slot order). `wire` / `grad_wire` default to the dispatcher's (D must suit them).
        Equals `unpermute(send_back(ungroup(rows)))`."""
        rows = self.send_back(self.ungroup(rows, layout), layout, wire=wire, grad_wire=grad_wire)
        return self.unpermute(rows, layout)

    def ungroup(self, rows: torch.Tensor, layout: DispatchLayout) -> torch.Tensor:
        """Rows grouped by local expert -> rows grouped by source rank (undoes `regroup`)."""
        return rows if layout.inverse_regroup is None else rows.index_select(0, layout.inverse_regroup)

    def send_back(self, rows: torch.Tensor, layout: DispatchLayout, *, wire: Any = None,
                  grad_wire: Any = None) -> torch.Tensor:
        """The combine all-to-all (encode + transfer + decode): rows by source rank -> `[T * k, D]`
        in send order. `wire` / `grad_wire` default to the combine wires."""
        wire = self.combine_wire if wire is None else wire
        grad_wire = self.combine_grad_wire if grad_wire is None else grad_wire
        return self._exchange(rows, layout.send_splits, layout.recv_splits, wire=wire, grad_wire=grad_wire,
                              static=layout.static)

    def unpermute(self, rows: torch.Tensor, layout: DispatchLayout) -> torch.Tensor:
        """Rows in send order `[T * k, D]` -> `[T, k, D]` in (token, slot) order (undoes `permute`)."""
        rows = rows.index_select(0, layout.inverse_permutation)
        return rows.view(layout.num_tokens, layout.top_k, *rows.shape[1:])

    def _exchange(self, rows: torch.Tensor, output_splits, input_splits, *, wire: Any = None,
                  grad_wire: Any = None, static: bool = False) -> torch.Tensor:
        wire = self.wire if wire is None else wire
        grad_wire = self.grad_wire if grad_wire is None else grad_wire
        if self.ep_size == 1:
            if self.emulate_wire:
                return _WireLoopback.apply(rows, wire, grad_wire, self.scale_mode)
            return rows
        return all_to_all_autograd(rows, list(output_splits), list(input_splits), self.group,
                                   wire=wire, grad_wire=grad_wire, scale_mode=self.scale_mode,
                                   check=False if static else self.wire_check)
