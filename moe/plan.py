"""Static dispatch plans: the routing of a micro-batch worked out on the host, before the step
(`docs/MOE.md`, "Grouter (preemptive, frozen routing) and static dispatch planning").

When a frozen Grouter or a pre-dispatched data set fixes the expert ids ahead of the forward,
`DispatchPlan.build(topk_ids, num_experts, group=..., device=...)` and `build_plans([ids, ...])` compute
the counts, the stable permutation and the splits: the same integers as the dynamic
`ExpertParallelDispatcher.plan`, so the outputs match bit for bit. They do it in numpy, on the calling
thread (torch CPU ops, one intra-op thread pool per rank, oversubscribe a multi-GPU host). ONE
`all_to_all_single` of int64 counts per call serves every micro-batch and layer of the step: on a CPU
group (gloo, "cpu:gloo,cuda:nccl") it touches no GPU; on an NCCL-only group it is the step's one
device->host sync and waits for the GPU work queued before it, so a planner that runs ahead wants a CPU
group (`dist.new_group(backend="gloo")`). Index tensors and gates reach `device` in one asynchronous copy
from a reused pinned buffer; splits stay host ints. `plan.layout` goes to `layout_from_plan`;
`plan.routing()` is the `RoutingRecord` that replaces each layer's router.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .dispatch import DispatchLayout
from .router import RoutingRecord


def exchange_counts(counts: torch.Tensor, group: Any) -> torch.Tensor:
    """The one collective of a plan: `counts` int64 `[ep, M, E_local]` (rows for each destination rank,
    CPU) -> `[ep, M, E_local]`: what each source rank sends to this rank's experts, CPU.

    One `all_to_all_single` of `M * E` int64 over `group`. CPU backend: host only. NCCL-only group: an
    asynchronous H2D copy through the plans' pinned staging buffer (a pageable copy would block the
    host: a second sync), the collective, and one D2H copy that syncs the host (the one sync of the step).
    """
    send = counts.reshape(-1).contiguous()
    if _needs_cuda(group):
        send_d = _upload([send], torch.device("cuda", torch.cuda.current_device()))[0]
        recv_d = torch.empty_like(send_d)
        dist.all_to_all_single(recv_d, send_d, group=group)
        return recv_d.cpu().view(counts.shape)  # the one device->host sync of the plan
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.view(counts.shape)


def _needs_cuda(group: Any) -> bool:
    backend = str(dist.get_backend(group)).lower()
    return "nccl" in backend and "gloo" not in backend and "mpi" not in backend


class _PinnedUpload:
    """Host -> device copies through a small ring of reused pinned buffers: one asynchronous copy per
    call, however many tensors (a plan build makes one call for all its micro-batches, plus one for the
    counts on an NCCL group).

    `pin_memory()` per tensor page-locks fresh memory each time (slow: benchmarks/results/README.md,
    "moe and benchmark history"); the buffers here grow once and are reused. Before a buffer is overwritten the host
    waits for the copy made from it `SLOTS` calls earlier, which is long done when plans are built a step
    ahead (waiting on the previous call's copy instead would stall the host until the GPU had finished
    everything queued before it).
    """

    SLOTS = 4

    def __init__(self) -> None:
        self.bufs: list[torch.Tensor | None] = [None] * self.SLOTS
        self.copied: list[torch.cuda.Event | None] = [None] * self.SLOTS
        self.next = 0

    def __call__(self, tensors: list[torch.Tensor | None], device: torch.device) -> list[torch.Tensor | None]:
        if device.type == "cpu":
            return tensors
        offsets, total = [], 0
        for t in tensors:
            offsets.append(total)
            if t is not None:
                total += -(-t.numel() * t.element_size() // 16) * 16  # 16-byte aligned slots
        slot, self.next = self.next, (self.next + 1) % self.SLOTS
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()
        if self.bufs[slot] is None or self.bufs[slot].numel() < total:
            self.bufs[slot] = torch.empty(max(total, 1), dtype=torch.uint8).pin_memory()
        buf = self.bufs[slot]
        staging = buf.numpy()  # host copies in numpy: see the module docstring (thread pools)
        for t, off in zip(tensors, offsets):
            if t is not None:
                n = t.numel() * t.element_size()
                staging[off:off + n] = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        on_device = buf[:total].to(device, non_blocking=True)
        self.copied[slot] = torch.cuda.Event()
        self.copied[slot].record()
        out = []
        for t, off in zip(tensors, offsets):
            if t is None:
                out.append(None)
                continue
            n = t.numel() * t.element_size()
            out.append(on_device[off:off + n].view(t.dtype).view(t.shape))
        return out


_upload = _PinnedUpload()


def _host_ids(topk_ids: Any, num_experts: int, name: str = "topk_ids") -> torch.Tensor:
    if isinstance(topk_ids, np.ndarray):
        topk_ids = torch.from_numpy(np.ascontiguousarray(topk_ids))
    if not isinstance(topk_ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of expert ids [..., k], "
                        f"got {type(topk_ids).__name__}")
    if topk_ids.dtype.is_floating_point or topk_ids.dtype.is_complex or topk_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer expert ids, got dtype {topk_ids.dtype}")
    if topk_ids.dim() < 2:
        raise ValueError(f"{name} must have shape [T, k] or [B, S, k], got {tuple(topk_ids.shape)}")
    ids = topk_ids.detach().reshape(-1, topk_ids.shape[-1]).cpu().numpy().astype(np.int64)  # (T, k); syncs if on GPU
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
        raise ValueError(f"{name} must hold expert ids in [0, {num_experts}), got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    return ids


def _stable_argsort(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """int64 positions that sort `keys` (ints in [0, num_keys)) stably: numpy's stable sort is a radix
    sort on 8- and 16-bit keys, so narrow them first."""
    narrow = np.uint8 if num_keys <= 256 else np.uint16 if num_keys <= 65536 else np.int64
    return np.argsort(keys.astype(narrow, copy=False), kind="stable").astype(np.int64)


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


@dataclass(frozen=True)
class DispatchPlan:
    """The routing of one micro-batch for one EP rank, planned on the host.

    Host fields (CPU int64): `topk_ids [T, k]`, `send_counts [E]` (rows this rank sends to each
    global expert), `recv_counts [ep, E_local]` (rows each source rank sends to this rank's experts).
    `layout`: the `DispatchLayout` with index tensors on `device` and split sizes as host tuples.
    `topk_ids_device` / `gates`: the routing on `device` (gates fp32 `[T, k]`, None when not given).
    """

    num_experts: int
    ep_size: int
    ep_rank: int
    topk_ids: torch.Tensor
    send_counts: torch.Tensor
    recv_counts: torch.Tensor
    layout: DispatchLayout
    topk_ids_device: torch.Tensor
    gates: torch.Tensor | None
    device: torch.device

    @property
    def num_tokens(self) -> int:
        return self.layout.num_tokens

    @property
    def top_k(self) -> int:
        return self.layout.top_k

    @property
    def tokens_per_expert(self) -> tuple[int, ...]:
        """Rows this rank sends to each global expert (host ints)."""
        return tuple(self.send_counts.tolist())

    def routing(self) -> RoutingRecord:
        """The `RoutingRecord` that replaces a layer's router: ids and gates on the device. `probs` and
        `logits` are None: the router distribution belongs to the (frozen) Grouter, not to the model."""
        if self.gates is None:
            raise ValueError("this plan was built without gates; pass gates= to DispatchPlan.build")
        return RoutingRecord(probs=None, logits=None, topk_ids=self.topk_ids_device, gates=self.gates,
                             static_num_experts=self.num_experts)

    @classmethod
    def build(cls, topk_ids: Any, num_experts: int, *, group: Any = None, gates: Any = None,
              device: torch.device | str | None = None) -> "DispatchPlan":
        """Plan one micro-batch: `topk_ids` integer `[T, k]` or `[B, S, k]` (torch on any device or
        numpy; values in `[0, E)`), optional `gates` float `[..., k]` of the same shape. `group`: the EP
        group (None: EP size 1, no exchange). `device`: where the layers run (None: CPU).
        One count exchange (EP > 1); see the module docstring for host syncs."""
        return build_plans([topk_ids], num_experts, group=group,
                           gates=None if gates is None else [gates], device=device)[0]


def build_plans(topk_ids: Sequence[Any], num_experts: int, *, group: Any = None,
                gates: Sequence[Any] | None = None,
                device: torch.device | str | None = None) -> list[DispatchPlan]:
    """Plan several micro-batches (e.g. all those of one step) with ONE count exchange of
    `len(topk_ids) * E` int64. Arguments as in `DispatchPlan.build`, one entry per micro-batch."""
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
    if isinstance(topk_ids, (torch.Tensor, np.ndarray)) or len(topk_ids) == 0:
        raise ValueError("topk_ids must be a non-empty list of per-micro-batch expert-id tensors")
    if gates is not None and len(gates) != len(topk_ids):
        raise ValueError(f"gates must have one entry per micro-batch ({len(topk_ids)}), got {len(gates)}")
    ep_size = dist.get_world_size(group) if group is not None else 1
    ep_rank = dist.get_rank(group) if group is not None else 0
    if num_experts % ep_size != 0:
        raise ValueError(f"num_experts ({num_experts}) must be divisible by the EP group size ({ep_size})")
    n_loc = num_experts // ep_size
    device = torch.device("cpu") if device is None else torch.device(device)

    ids_list = [_host_ids(ids, num_experts, f"topk_ids[{i}]") for i, ids in enumerate(topk_ids)]
    counts = torch.from_numpy(np.stack([np.bincount(ids.reshape(-1), minlength=num_experts)
                                        for ids in ids_list]).astype(np.int64))  # (M, E)
    if ep_size == 1:
        recv = counts.view(len(ids_list), 1, n_loc).transpose(0, 1)  # (1, M, E)
    else:
        by_dest = counts.view(len(ids_list), ep_size, n_loc).transpose(0, 1).contiguous()  # (ep, M, E_loc)
        recv = exchange_counts(by_dest, group)                                               # (ep src, M, E_loc)

    host_gates: list[torch.Tensor | None] = []
    for m, ids in enumerate(ids_list):
        g = None
        if gates is not None:
            g = gates[m]
            if isinstance(g, np.ndarray):
                g = torch.from_numpy(np.ascontiguousarray(g))
            if not isinstance(g, torch.Tensor) or not g.is_floating_point():
                raise TypeError(f"gates[{m}] must be a floating-point tensor [..., k]")
            if g.numel() != ids.size or g.shape[-1] != ids.shape[1]:
                raise ValueError(f"gates[{m}] must have the shape of topk_ids[{m}], got {tuple(g.shape)}")
            g = g.detach().reshape(ids.shape).to(torch.float32)
        host_gates.append(g)

    host = [_host_layout(ids, counts[m], recv[:, m].contiguous(), num_experts, ep_size)
            for m, ids in enumerate(ids_list)]
    # Everything goes to the device in one copy; gates already on a GPU are moved directly.
    uploads = [torch.from_numpy(a) if a is not None else None for h in host for a in h.arrays]
    uploads += [g if g is not None and g.device.type == "cpu" else None for g in host_gates]
    on_device = _upload(uploads, device)
    plans = []
    for m, (h, ids) in enumerate(zip(host, ids_list)):
        perm_d, inv_d, regroup_d, inv_regroup_d, offsets_d, token_index_d, ids_d = \
            on_device[m * _HostLayout.NUM_ARRAYS:(m + 1) * _HostLayout.NUM_ARRAYS]
        g = host_gates[m]
        if g is not None:
            g = on_device[len(host) * _HostLayout.NUM_ARRAYS + m] if g.device.type == "cpu" else \
                g.to(device, non_blocking=True)
        num_tokens, top_k = ids.shape
        layout = DispatchLayout(num_tokens, top_k, perm_d, inv_d, h.send_splits, h.recv_splits, regroup_d,
                                inv_regroup_d, h.per_expert, offsets_d, static=True, token_index=token_index_d)
        plans.append(DispatchPlan(num_experts, ep_size, ep_rank, torch.from_numpy(ids), counts[m],
                                  recv[:, m].contiguous().view(ep_size, n_loc), layout, ids_d, g, device))
    return plans


@dataclass(frozen=True)
class _HostLayout:
    """A micro-batch's layout on the host: `arrays` = (permutation, inverse permutation, regroup,
    inverse regroup, expert offsets, token index, ids), the index arrays that go to the device."""

    NUM_ARRAYS = 7
    arrays: tuple[np.ndarray | None, ...]
    send_splits: tuple[int, ...]
    recv_splits: tuple[int, ...]
    per_expert: tuple[int, ...]


def _host_layout(ids: np.ndarray, counts: torch.Tensor, recv_counts: torch.Tensor, num_experts: int,
                 ep_size: int) -> _HostLayout:
    """The integer work of `ExpertParallelDispatcher.plan`, on the host in numpy: the same stable sorts,
    so the same permutation and regrouping (a stable sort's result is unique)."""
    top_k = ids.shape[1]
    flat = ids.reshape(-1)
    n_loc = num_experts // ep_size
    permutation = _stable_argsort(flat, num_experts)
    send_host = counts.tolist()
    recv_np = recv_counts.reshape(-1).numpy()  # (ep * E_local,): source-rank-major
    recv_host = recv_np.tolist()
    if ep_size == 1:
        send_splits = recv_splits = (flat.size,)
        per_expert = tuple(send_host)
        regroup = inverse_regroup = None
        offsets = np.cumsum(counts.numpy()).astype(np.int32)
    else:
        send_splits = tuple(sum(send_host[r * n_loc:(r + 1) * n_loc]) for r in range(ep_size))
        recv_splits = tuple(sum(recv_host[r * n_loc:(r + 1) * n_loc]) for r in range(ep_size))
        per_expert = tuple(sum(recv_host[r * n_loc + e] for r in range(ep_size)) for e in range(n_loc))
        local_expert_of_row = np.repeat(np.tile(np.arange(n_loc), ep_size), recv_np)
        regroup = _stable_argsort(local_expert_of_row, n_loc)
        inverse_regroup = _inverse(regroup)
        offsets = np.cumsum(recv_np.reshape(ep_size, n_loc).sum(0)).astype(np.int32)
    arrays = (permutation, _inverse(permutation), regroup, inverse_regroup, offsets, permutation // top_k, ids)
    return _HostLayout(arrays, send_splits, recv_splits, per_expert)
