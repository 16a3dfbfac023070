"""Making a Grouter (`docs/MOE.md`, "Grouter"): distillation, expert folding and expert tuning.

- Distillation: train the Grouter so that `softmax(G(ids))` matches a trained router's full softmax at a
  chosen layer, minimising `KL(teacher || student)` with no temperature.
- Expert folding (E_S source -> E_T target experts): co-activation `A = R^T R` (R the one-hot top-k map),
  zero diagonal; groups built greedily, each seeded by the lowest unused expert and grown by the unused
  expert of largest summed affinity to it; the first `E_S mod E_T` groups get `floor(E_S/E_T) + 1`
  experts, the others `floor(E_S/E_T)`. New score weights `W' = M W`, `M[t, s] = 1` iff s is in group t,
  so a group's logit is the sum of its members'. The target top-k may differ from the source's.
- Expert tuning: fine-tune only the score layer with `losses.load_balancing_loss` on new data, all else
  frozen; MaxVio (`losses.max_violation`, `max c / mean c`) is reported before and after.
Runs where the Grouter's parameters are (CPU or one GPU); nothing here is distributed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Sequence

import torch

from .grouter import Grouter
from .losses import load_balancing_loss, max_violation

Log = Callable[[str], None]


# --- distillation ---------------------------------------------------------------------------------

def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """`mean_t KL(softmax(teacher[t]) || softmax(student[t]))` over all leading dims, no temperature.

    Both `[..., E]` of the same shape; computed in fp32. Gradients flow into `student_logits` only
    (the teacher is detached). Zero when the two distributions agree.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher logits must have the student's shape {tuple(student_logits.shape)} "
                         f"([..., E] with the same E), got {tuple(teacher_logits.shape)}")
    e = student_logits.shape[-1]
    log_q = torch.log_softmax(student_logits.float().reshape(-1, e), dim=-1)
    log_p = torch.log_softmax(teacher_logits.detach().float().reshape(-1, e), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def _like(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Teacher logits `[B*S, E]` viewed as the student's `[B, S, E]`; other shapes are left to fail."""
    if teacher.shape != student.shape and teacher.numel() == student.numel():
        return teacher.reshape(student.shape)  # equal numel and T, so equal E
    return teacher


def _batch_stream(batches: Iterable[torch.Tensor], steps: int, name: str) -> Iterator[torch.Tensor]:
    """Yield `steps` batches, starting `batches` over when it runs out (it must then be re-iterable)."""
    produced = 0
    while True:
        started = produced
        for batch in batches:
            if produced == steps:
                return
            yield batch
            produced += 1
        if produced == steps:
            return
        if produced == started:
            raise ValueError(f"{name} ran out after {produced} of {steps} steps; pass a re-iterable "
                             f"(a list or DataLoader) or fewer steps")


def _check_steps_lr(steps: int, lr: float) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")


def model_router_teacher(model: torch.nn.Module, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A `teacher_logits_fn` reading the router logits `[B*S, E]` of MoE layer `layer` of `model`.

    `model(ids)` must return an object with `records`, one `RoutingRecord` per MoE layer (as
    `MoEModel` does); the whole model runs in eval mode under `torch.no_grad`, and the record's raw
    `logits` are returned, so distillation matches their full softmax over all E (in sigmoid mode too).
    """
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise TypeError(f"layer must be an int (the MoE layer index), got {type(layer).__name__}")

    @torch.no_grad()
    def teacher_logits(ids: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            records = model(ids).records
        finally:
            model.train(was_training)
        if not -len(records) <= layer < len(records):
            raise ValueError(f"layer must index one of the model's {len(records)} MoE layers, got {layer}")
        return records[layer].logits

    return teacher_logits


def distill_grouter(grouter: Grouter, teacher_logits_fn: Callable[[torch.Tensor], torch.Tensor],
                    batches: Iterable[torch.Tensor], steps: int, lr: float, *, weight_decay: float = 0.0,
                    grad_clip: float | None = 1.0, log_every: int = 50, log: Log = print) -> list[float]:
    """Train `grouter` in place so its softmax matches the teacher router's full softmax.

    Arguments:
        teacher_logits_fn: token ids `[B, S]` -> router logits `[B, S, E]` (or `[B*S, E]`) of the trained
            MoE at the chosen layer, e.g. `model_router_teacher(model, l)`. Called under `torch.no_grad`.
        batches: token-id tensors `[B, S]`; cycled if `steps` exceeds their number.
        steps, lr: AdamW steps and learning rate.
        log_every: print `step, KL, tokens/s` every this many steps through `log` (0: silent).
    Returns the per-step KL values (before each update). Turns gradients on for every Grouter parameter
    and leaves it in train mode; call `grouter.freeze()` before using it to route.
    """
    if not isinstance(grouter, Grouter):
        raise TypeError(f"grouter must be a Grouter, got {type(grouter).__name__}")
    if not callable(teacher_logits_fn):
        raise TypeError("teacher_logits_fn must be callable: token ids [B, S] -> router logits [B, S, E]")
    _check_steps_lr(steps, lr)
    device = next(grouter.parameters()).device
    grouter.train()
    grouter.requires_grad_(True)
    opt = torch.optim.AdamW(grouter.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    tokens, t0 = 0, time.perf_counter()
    for step, ids in enumerate(_batch_stream(batches, steps, "batches"), start=1):
        ids = ids.to(device)
        with torch.no_grad():
            teacher = teacher_logits_fn(ids)
        student = grouter(ids)
        loss = distillation_kl(student, _like(teacher, student))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(grouter.parameters(), grad_clip)
        opt.step()
        losses.append(loss.item())
        tokens += ids.numel()
        if log_every and (step % log_every == 0 or step == steps):
            rate = tokens / max(time.perf_counter() - t0, 1e-9)
            log(f"[grouter distill] step {step}/{steps}  KL {losses[-1]:.5f}  {rate:,.0f} tokens/s")
    return losses


@torch.no_grad()
def evaluate_kl(grouter: Grouter, teacher_logits_fn: Callable[[torch.Tensor], torch.Tensor],
                batches: Iterable[torch.Tensor]) -> float:
    """Token-weighted mean `KL(teacher || grouter)` over `batches` (no training)."""
    device = next(grouter.parameters()).device
    total, count = 0.0, 0
    for ids in batches:
        ids = ids.to(device)
        student = grouter(ids)
        n = student.numel() // student.shape[-1]
        total += distillation_kl(student, _like(teacher_logits_fn(ids), student)).item() * n
        count += n
    if count == 0:
        raise ValueError("batches held no tokens")
    return total / count


# --- expert folding -------------------------------------------------------------------------------

def _check_topk_ids(topk_ids: torch.Tensor, num_experts: int, name: str = "topk_ids") -> torch.Tensor:
    if not isinstance(topk_ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [..., k] of expert ids, "
                        f"got {type(topk_ids).__name__}")
    if topk_ids.dtype.is_floating_point or topk_ids.dtype.is_complex or topk_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer expert ids, got dtype {topk_ids.dtype}")
    if topk_ids.dim() < 1:
        raise ValueError(f"{name} must have shape [..., k], got a 0-d tensor")
    ids = topk_ids.reshape(-1, topk_ids.shape[-1]).long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
        raise ValueError(f"{name} must lie in [0, num_experts={num_experts}), "
                         f"got values in [{int(ids.min())}, {int(ids.max())}]")
    return ids


_AFFINITY_CHUNK = 1 << 16


def coactivation_affinity(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """`A = R^T R` with a zero diagonal: `A[a, b]` counts the tokens routed to both a and b (a != b).

    `topk_ids [..., k]` integer; the experts within a token must be distinct. Returns int64 `[E, E]`,
    symmetric, on the ids' device. Sum the results of several calls to count over a whole data set.
    """
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
    ids = _check_topk_ids(topk_ids, num_experts)
    k = ids.shape[1]
    if k > 1:
        s = ids.sort(dim=1).values
        if bool((s[:, 1:] == s[:, :-1]).any()):
            raise ValueError("topk_ids: each token's k experts must be distinct (a one-hot top-k map)")
    a = torch.zeros(num_experts * num_experts, dtype=torch.int64, device=ids.device)
    for chunk in ids.split(_AFFINITY_CHUNK):  # bounds the [chunk, k, k] pair index in memory
        pairs = (chunk[:, :, None] * num_experts + chunk[:, None, :]).reshape(-1)
        a += torch.bincount(pairs, minlength=num_experts * num_experts)
    a = a.view(num_experts, num_experts)
    a.fill_diagonal_(0)
    return a


def fold_group_sizes(num_source: int, num_target: int) -> list[int]:
    """Group sizes in build order: the first `E_S mod E_T` groups hold one expert more than the rest."""
    if not isinstance(num_target, int) or num_target < 1:
        raise ValueError(f"num_target must be a positive int, got {num_target!r}")
    if num_target > num_source:
        raise ValueError(f"num_target (E_T={num_target}) must be <= the number of source experts "
                         f"(E_S={num_source}): folding only merges experts")
    base, extra = divmod(num_source, num_target)
    return [base + 1 if t < extra else base for t in range(num_target)]


def fold_groups(affinity: torch.Tensor, num_target: int) -> list[tuple[int, ...]]:
    """Greedy affinity grouping of E_S source experts into `num_target` groups (MOE.md, "Expert folding").

    Group t is seeded with the lowest-numbered unused expert, then grown one expert at a time by the
    unused expert with the largest summed affinity to the current members (ties: the lowest number),
    up to `fold_group_sizes(E_S, E_T)[t]`: groups 0 .. (E_S mod E_T) - 1 are the larger ones.
    `affinity` is a symmetric `[E_S, E_S]` tensor (the diagonal is ignored). Each group is returned in
    the order its members were added; every source expert is in exactly one group.
    """
    if not (isinstance(affinity, torch.Tensor) and affinity.dim() == 2
            and affinity.shape[0] == affinity.shape[1]):
        got = tuple(affinity.shape) if isinstance(affinity, torch.Tensor) else type(affinity).__name__
        raise ValueError(f"affinity must be a square tensor [E_S, E_S], got {got}")
    a = affinity.detach().to("cpu", torch.float64)
    if not torch.equal(a, a.T):
        raise ValueError("affinity must be symmetric (A = R^T R)")
    num_source = a.shape[0]
    sizes = fold_group_sizes(num_source, num_target)
    a.fill_diagonal_(0)
    used = torch.zeros(num_source, dtype=torch.bool)
    groups: list[tuple[int, ...]] = []
    for size in sizes:
        seed = int((~used).nonzero()[0])
        members = [seed]
        used[seed] = True
        summed = a[seed].clone()
        while len(members) < size:
            candidate = int(summed.masked_fill(used, float("-inf")).argmax())  # argmax: first of ties
            members.append(candidate)
            used[candidate] = True
            summed += a[candidate]
        groups.append(tuple(members))
    assert bool(used.all())
    return groups


def folding_matrix(groups: Sequence[Sequence[int]], num_source: int) -> torch.Tensor:
    """`M [E_T, E_S]` float32 with `M[t, s] = 1` iff source expert s is in group t.

    Raises if a source expert is missing from the groups or sits in more than one.
    """
    m = torch.zeros(len(groups), num_source)
    for t, group in enumerate(groups):
        for s in group:
            if not isinstance(s, int) or not 0 <= s < num_source:
                raise ValueError(f"groups[{t}] holds {s!r}; expected source expert ids in [0, {num_source})")
            m[t, s] += 1
    per_source = m.sum(0)
    if not bool((per_source == 1).all()):
        bad = sorted(int(s) for s in (per_source != 1).nonzero().flatten())
        raise ValueError(f"groups must hold every source expert exactly once; "
                         f"experts {bad} are missing or repeated")
    return m


def fold_grouter(grouter: Grouter, groups: Sequence[Sequence[int]],
                 target_top_k: int | None = None) -> Grouter:
    """A new Grouter routing to `len(groups)` experts: same trunk, score weights `W' = M W`.

    A folded logit is the sum of its group's source logits. `target_top_k` defaults to the source's
    top-k and must be in `[1, E_T]`. The source Grouter is not modified.
    """
    if not isinstance(grouter, Grouter):
        raise TypeError(f"grouter must be a Grouter, got {type(grouter).__name__}")
    cfg = grouter.config
    num_target = len(groups)
    fold_group_sizes(cfg.num_experts, num_target)  # validates E_T against E_S
    k = cfg.top_k if target_top_k is None else target_top_k
    if not isinstance(k, int) or not 1 <= k <= num_target:
        raise ValueError(f"target_top_k must be an int in [1, E_T={num_target}], got {k!r}")
    weight = grouter.score.weight.detach()
    m = folding_matrix(groups, cfg.num_experts).to(weight.device)
    folded = Grouter(replace(cfg, num_experts=num_target, top_k=k))
    folded = folded.to(device=weight.device, dtype=weight.dtype)
    state = {name: t.detach().clone() for name, t in grouter.state_dict().items()}
    state["score.weight"] = (m @ weight.float()).to(weight.dtype)  # [E_T, E_S] @ [E_S, d] -> [E_T, d]
    folded.load_state_dict(state)
    return folded.train(grouter.training)


@dataclass(frozen=True)
class FoldResult:
    grouter: Grouter                    # the folded Grouter (E_T experts, target top-k)
    groups: tuple[tuple[int, ...], ...]  # groups[t]: the source experts folded into target expert t
    affinity: torch.Tensor              # int64 [E_S, E_S] co-activation counts, zero diagonal


@torch.no_grad()
def fold_experts(grouter: Grouter, batches: Iterable[torch.Tensor], num_target: int,
                 target_top_k: int | None = None) -> FoldResult:
    """Route `batches` (token ids `[B, S]`) with `grouter`, count co-activation, group, and fold."""
    if not isinstance(grouter, Grouter):
        raise TypeError(f"grouter must be a Grouter, got {type(grouter).__name__}")
    fold_group_sizes(grouter.config.num_experts, num_target)
    device = next(grouter.parameters()).device
    e = grouter.config.num_experts
    affinity = torch.zeros(e, e, dtype=torch.int64)
    for ids in batches:
        topk_ids, _ = grouter.route(ids.to(device))
        affinity += coactivation_affinity(topk_ids, e).cpu()
    groups = fold_groups(affinity, num_target)
    return FoldResult(fold_grouter(grouter, groups, target_top_k), tuple(groups), affinity)


# --- expert tuning --------------------------------------------------------------------------------

@torch.no_grad()
def routing_max_violation(grouter: Grouter, batches: Iterable[torch.Tensor]) -> float:
    """MaxVio (`max c / mean c`, c the per-expert assignment counts) of `grouter`'s routing over `batches`."""
    device = next(grouter.parameters()).device
    e = grouter.config.num_experts
    counts = torch.zeros(e, dtype=torch.int64)
    for ids in batches:
        topk_ids, _ = grouter.route(ids.to(device))
        counts += torch.bincount(topk_ids.reshape(-1).cpu(), minlength=e)
    return float(max_violation(counts))


@dataclass(frozen=True)
class TuneResult:
    maxvio_before: float
    maxvio_after: float
    losses: tuple[float, ...]  # load-balancing loss at each step, before its update


def tune_score_layer(grouter: Grouter, batches: Iterable[torch.Tensor], steps: int, lr: float, *,
                     eval_batches: Iterable[torch.Tensor] | None = None, log_every: int = 50,
                     log: Log = print) -> TuneResult:
    """Fine-tune only `grouter.score` in place with the load-balancing loss; everything else stays as is.

    `batches`: token ids `[B, S]` of the new data, cycled for `steps` AdamW steps. MaxVio is measured on
    `eval_batches` (default: `batches`, which must then be re-iterable) before and after, and logged.
    The trunk runs under `torch.no_grad`, so only the score weights can change; the other parameters'
    `requires_grad` flags are restored afterwards.
    """
    if not isinstance(grouter, Grouter):
        raise TypeError(f"grouter must be a Grouter, got {type(grouter).__name__}")
    _check_steps_lr(steps, lr)
    if eval_batches is None:
        eval_batches = batches
    eval_batches = list(eval_batches)
    device = next(grouter.parameters()).device
    e, k = grouter.config.num_experts, grouter.config.top_k
    was_training = grouter.training
    flags = {name: p.requires_grad for name, p in grouter.named_parameters()}
    maxvio_before = routing_max_violation(grouter.eval(), eval_batches)
    if log_every:
        log(f"[grouter tune] MaxVio before {maxvio_before:.4f}")
    grouter.requires_grad_(False)
    grouter.score.weight.requires_grad_(True)
    opt = torch.optim.AdamW([grouter.score.weight], lr=lr, weight_decay=0.0)
    losses: list[float] = []
    try:
        for step, ids in enumerate(_batch_stream(batches, steps, "batches"), start=1):
            with torch.no_grad():
                h = grouter.features(ids.to(device))
            logits = grouter.score(h).float().reshape(-1, e)
            p = torch.softmax(logits, dim=-1)
            topk_ids = torch.topk(logits.detach(), k, dim=-1).indices
            loss = load_balancing_loss(p, topk_ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if log_every and (step % log_every == 0 or step == steps):
                log(f"[grouter tune] step {step}/{steps}  load-balancing loss {losses[-1]:.5f}")
    finally:
        for name, p in grouter.named_parameters():
            p.requires_grad_(flags[name])
        grouter.score.weight.grad = None
    maxvio_after = routing_max_violation(grouter, eval_batches)
    grouter.train(was_training)
    if log_every:
        log(f"[grouter tune] MaxVio after {maxvio_after:.4f} (before {maxvio_before:.4f})")
    return TuneResult(maxvio_before, maxvio_after, tuple(losses))
