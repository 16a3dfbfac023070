#!/usr/bin/env python3
"""AdamW vs Muon vs Muon-LITE vs SOAP vs SOAP-LITE on the MoE language model (`mxa2a.optim`).

The `MoEModel` of examples/train_tiny_moe.py (byte vocabulary) on the bytes of Python's standard
library sources, one process, one device. Every run starts from the same initial weights and reads the
same batches; the schedule (warmup-stable-decay by default, as the LITE MoE runs) and step budget are
shared. Learning rates: AdamW, Muon and SOAP each sweep their own grid (`--sweep`) with short runs
(`--sweep-frac` of the steps, same schedule shape) and train once at the best; Muon-LITE and SOAP-LITE
take the LR of their base optimizer (`--lite-lr base`, the published protocol: the LITE MoE scripts run
Muon and Muon-LITE at one LR, and a short sweep favours the base, whose LITE gains come later).
Reported per family: final validation loss (mean of the last `--final-evals` evaluations), the first
evaluated step at which it reaches Muon's (and SOAP's) final loss, median ms per training step and the
optimizers' share of it (CUDA events), all optimizers and the matrix one alone; table, JSON (with the
sweep), PNG. On CUDA the expert GEMMs take bf16 inputs (`--expert-gemm grouped`): under autocast the
MoE layer sees the fp32 LayerNorm output and would otherwise run its per-expert loop.
`--steps 0` (default) picks the step count from a short timed calibration so that sweeps and final runs
fit in `--budget-s`; a run that would end after `--deadline-s` is skipped (and said so); the JSON and
PNG are rewritten after every final run. `--extra-variants muon_lite` adds a run "muon_lite+chi1": the
LITE family with chi `--extra-adamw-chi` (1) on embeddings and norms instead of the published 8, i.e.
the damping of the matrices alone. `--quick` is a CPU smoke run of a few seconds.
Run from a checkout: `python benchmarks/optimizers.py --json out.json --png out.png` (puts the checkout
on the path as `mxa2a` when `import mxa2a` fails).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))
try:
    import mxa2a  # noqa: F401
except ImportError:  # a bare checkout: expose the repository root as the package `mxa2a`
    shim = tempfile.mkdtemp(prefix="mxa2a_shim_")
    os.symlink(ROOT, os.path.join(shim, "mxa2a"))
    sys.path.insert(0, shim)

import torch  # noqa: E402

import _bench_common as bc  # noqa: E402
from mxa2a.moe import MoELayerConfig, MoEModel, MoEModelConfig  # noqa: E402
from mxa2a.moe.experts import GroupedExperts  # noqa: E402
from mxa2a.optim import FAMILIES, LITE_DEFAULTS, Schedule, apply_schedule, build_optimizers  # noqa: E402
from train_tiny_moe import batches, load_corpus  # noqa: E402

QUICK = dict(hidden=32, d_expert=32, experts=4, layers=2, heads=2, seq_len=32, batch=4, steps=30,
             sweep="adamw:2e-3,4e-3;muon:2e-3,4e-3;soap:2e-3,4e-3", sweep_frac=0.34, eval_every=5,
             eval_batches=2, data_mb=0.3)
SWEEP = "adamw:1e-3,2e-3,4e-3;muon:2e-3,4e-3,8e-3;soap:1e-3,2e-3,4e-3"
LITE_BASE = {"muon_lite": "muon", "soap_lite": "soap"}
HOST_OVERHEAD = 1.08  # model builds, batches and timing events beyond the calibrated step
ORDER = ("muon", "muon_lite", "soap", "soap_lite", "adamw")  # the claim's runs first


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--sweep", default=SWEEP, help="'family:lr,lr;...' grids of the swept families")
    p.add_argument("--lite-lr", default="base", choices=["base", "sweep"],
                   help="base: a LITE family takes its base's best LR; sweep: it sweeps the base's grid")
    p.add_argument("--steps", type=int, default=0, help="0: from the calibration and --budget-s")
    p.add_argument("--lite-adamw-chi", type=float, default=8.0,
                   help="chi of the embeddings and norms in the LITE families (8: the published MoE setting)")
    p.add_argument("--extra-variants", default="", help="LITE families run once more with --extra-adamw-chi")
    p.add_argument("--extra-adamw-chi", type=float, default=1.0)
    p.add_argument("--budget-s", type=float, default=270.0, help="seconds for calibration, sweep and runs")
    p.add_argument("--deadline-s", type=float, default=0.0, help="skip runs that would end later (0: budget + 30)")
    p.add_argument("--min-steps", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=4000)
    p.add_argument("--sweep-frac", type=float, default=0.25, help="sweep run length / final run length")
    p.add_argument("--schedule", default="wsd", choices=["wsd", "cosine"])
    p.add_argument("--warmup-frac", type=float, default=0.05)
    p.add_argument("--min-lr-ratio", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=0, help="0: steps / 40 (sweeps: / 10)")
    p.add_argument("--eval-batches", type=int, default=6)
    p.add_argument("--final-evals", type=int, default=3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--d-expert", type=int, default=256)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--data-mb", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--expert-gemm", default="grouped", choices=["grouped", "loop"],
                   help="CUDA: grouped = bf16 inputs to the experts (one grouped GEMM per projection)")
    args = bc.parse_with_quick(p, argv, QUICK)
    args.families = args.families.split(",")
    unknown = set(args.families) - set(FAMILIES)
    if unknown:
        p.error(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    args.grids = parse_sweep(p, args.sweep)
    args.extra_variants = [f for f in args.extra_variants.split(",") if f]
    if set(args.extra_variants) - set(LITE_BASE):
        p.error(f"--extra-variants takes LITE families {sorted(LITE_BASE)}, got {args.extra_variants}")
    args.deadline_s = args.deadline_s or args.budget_s + 30.0
    return args


def parse_sweep(p: argparse.ArgumentParser, text: str) -> dict[str, list[float]]:
    grids = {}
    for part in filter(None, text.split(";")):
        family, _, lrs = part.partition(":")
        if family not in FAMILIES or not lrs:
            p.error(f"--sweep wants 'family:lr,lr;...' with families from {FAMILIES}, got {part!r}")
        grids[family] = [float(x) for x in lrs.split(",")]
    for family in ("adamw", "muon", "soap"):
        grids.setdefault(family, [2e-3])
    for lite, base in LITE_BASE.items():
        grids.setdefault(lite, grids[base])
    return grids


class Setup:
    """Device, data, initial weights and validation batches shared by every run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            torch.set_num_threads(1)  # the model is tiny on CPU: threads only contend
        data = load_corpus(args.data_mb)
        split = int(data.numel() * 0.95)
        self.train_data, val_data = data[:split], data[split:]
        stream = batches(val_data, args.batch, args.seq_len, 10_000)
        self.val = [tuple(t.to(self.device) for t in next(stream)) for _ in range(args.eval_batches)]
        layer = MoELayerConfig(hidden=args.hidden, d_expert=args.d_expert, num_experts=args.experts,
                               top_k=args.top_k)
        self.config = MoEModelConfig(moe=layer, seq_len=args.seq_len, n_layers=args.layers, n_heads=args.heads)
        torch.manual_seed(args.seed)
        self.initial = {k: v.clone() for k, v in MoEModel(self.config).state_dict().items()}
        self.tokens = data.numel()
        self.bf16_experts = self.device.type == "cuda" and args.expert_gemm == "grouped"
        self.expert_gemm_error = None
        if self.bf16_experts:  # one forward and backward, else fall back to the loop (and say so)
            try:
                ids, targets = self.val[0]
                with self.autocast():
                    self.model()(ids, targets).loss.backward()
            except RuntimeError as error:
                self.bf16_experts, self.expert_gemm_error = False, f"{type(error).__name__}: {error}"[:300]
                print(f"bf16 grouped expert GEMM failed, using the loop: {self.expert_gemm_error}", flush=True)

    def model(self) -> MoEModel:
        model = MoEModel(self.config)
        model.load_state_dict(self.initial)
        if self.bf16_experts:
            for module in model.modules():
                if isinstance(module, GroupedExperts):
                    module.register_forward_pre_hook(_bf16_rows)
        return model.to(self.device)

    def batch(self, stream) -> tuple[torch.Tensor, torch.Tensor]:
        ids, targets = next(stream)
        if self.device.type == "cuda":  # pinned: the copy does not wait for the GPU
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in (ids, targets))
        return ids, targets

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _bf16_rows(module, args):
    """Forward pre-hook of `GroupedExperts`: the dispatched rows in bf16, so the layer picks its grouped
    GEMM (it decides by the input dtype; the weights stay fp32 and are cast inside, as autocast would)."""
    return (args[0].to(torch.bfloat16),) + tuple(args[1:])


class StepTimer:
    """Whole-step and optimizer-step times: CUDA events read once at the end, or perf_counter."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.marks = cuda, []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, *marks) -> None:
        """(step start, optimizers start, first optimizer done, step end)."""
        self.marks.append(marks)

    def times_ms(self) -> tuple[list[float], list[float], list[float]]:
        """Per step: whole step, all optimizers, the first optimizer (the matrix one)."""
        if self.cuda:
            torch.cuda.synchronize()
            span = lambda x, y: x.elapsed_time(y)  # noqa: E731
        else:
            span = lambda x, y: (y - x) * 1e3  # noqa: E731
        return ([span(a, d) for a, b, c, d in self.marks], [span(b, d) for a, b, c, d in self.marks],
                [span(b, c) for a, b, c, d in self.marks])


@torch.no_grad()
def evaluate(setup: Setup, model: MoEModel) -> float:
    model.eval()
    with setup.autocast():
        losses = [model(ids, targets).lm_loss.float() for ids, targets in setup.val]
    model.train()
    return torch.stack(losses).mean().item()


def train(setup: Setup, family: str, lr: float, steps: int, evals: bool = True, evals_per_run: int = 40) -> dict:
    """One run; returns the curve, timings and final loss. `evals=False`: timing only (calibration)."""
    args = setup.args
    model = setup.model()
    base, chi = split_variant(family, args.lite_adamw_chi)
    lite = {r: dict(LITE_DEFAULTS[r], chi=chi) for r in ("embedding", "norm")}
    opts = build_optimizers(model, base, lr, weight_decay=args.weight_decay, lite=lite)
    schedule = Schedule(steps, max(1, int(args.warmup_frac * steps)), args.schedule, args.min_lr_ratio)
    stream = batches(setup.train_data, args.batch, args.seq_len, args.seed)
    eval_every = args.eval_every or max(1, steps // evals_per_run)
    timer = StepTimer(setup.device.type == "cuda")
    curve, diverged, t0 = [], False, time.perf_counter()
    for step in range(steps):
        ids, targets = setup.batch(stream)
        apply_schedule(opts, step, schedule)
        start = timer.mark()
        with setup.autocast():
            loss = model(ids, targets).loss
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        before_opt = timer.mark()
        opts[0].step()
        first_done = timer.mark()
        for opt in opts[1:]:
            opt.step()
        timer.add(start, before_opt, first_done, timer.mark())
        if evals and ((step + 1) % eval_every == 0 or step + 1 == steps):
            val = evaluate(setup, model)
            curve.append((step + 1, val))
            if not math.isfinite(val):
                diverged = True
                break
    wall = time.perf_counter() - t0
    step_ms, opt_ms, matrix_ms = timer.times_ms()
    skip = min(3, len(step_ms) - 1)  # the first steps allocate state and warm caches
    tail = [v for _, v in curve[-args.final_evals:]]
    return {"family": family, "lr": lr, "steps": steps, "curve": curve, "diverged": diverged,
            "final_val": sum(tail) / len(tail) if tail else float("nan"), "wall_s": wall,
            "step_ms": bc.median(step_ms[skip:]), "opt_ms": bc.median(opt_ms[skip:]),
            "opt_share": sum(opt_ms[skip:]) / max(1e-9, sum(step_ms[skip:])),
            "matrix_opt_share": (sum(matrix_ms[skip:]) / max(1e-9, sum(step_ms[skip:]))
                                 if family != "adamw" else None)}


def split_variant(family: str, default_chi: float) -> tuple[str, float]:
    """"muon_lite+chi1" -> ("muon_lite", 1.0): a LITE family with another chi on embeddings and norms."""
    base, _, chi = family.partition("+chi")
    return base, float(chi) if chi else default_chi


def plan_runs(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """`(kind, family, lr source)` in run order: ("sweep", base, None) before the finals that need it;
    ("final", family, family whose sweep gives its LR)."""
    runs, swept = [], set()
    wanted = [f for f in ORDER if f in args.families]
    for family in wanted:
        source = LITE_BASE.get(family, family) if args.lite_lr == "base" else family
        if source not in swept:
            runs.append(("sweep", source, None))
            swept.add(source)
        runs.append(("final", family, source))
        if family in args.extra_variants:
            runs.append(("final", f"{family}+chi{args.extra_adamw_chi:g}", source))
    return runs


def choose_steps(setup: Setup, args: argparse.Namespace, started: float) -> tuple[int, dict]:
    """Time a few steps of every family (this also warms the caches); the largest step count whose
    sweeps and final runs fit in what is left of the budget."""
    families = sorted({split_variant(f, 0.0)[0] for _, f, _ in plan_runs(args)})
    probe = {f: train(setup, f, args.grids[f][0], 12, evals=False)["step_ms"] for f in families}
    probe.update({f: probe[split_variant(f, 0.0)[0]] for _, f, _ in plan_runs(args)})
    per_step_s = sum(probe[f] * (args.sweep_frac * len(args.grids[f]) if kind == "sweep" else 1.0)
                     for kind, f, _ in plan_runs(args)) / 1e3
    left = args.budget_s - (time.perf_counter() - started) - sum(
        eval_cost_s(probe[f], args, len(args.grids[f]) if kind == "sweep" else 1, kind == "sweep")
        for kind, f, _ in plan_runs(args))
    steps = int(left / (per_step_s * HOST_OVERHEAD)) // 50 * 50
    return max(args.min_steps, min(args.max_steps, steps)), probe


def eval_cost_s(step_ms: float, args: argparse.Namespace, runs: int, sweep: bool) -> float:
    """Seconds of evaluation of `runs` runs: (10 or 40) x eval_batches forwards of about a third of a step."""
    return runs * (10 if sweep else 40) * args.eval_batches * step_ms / 3e3


def steps_to_reach(curve: list, target: float) -> int | None:
    return next((s for s, v in curve if v <= target), None)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    setup = Setup(args)
    probe = None
    steps = args.steps
    if not steps:
        steps, probe = choose_steps(setup, args, started) if not args.quick else (QUICK["steps"], None)
    sweep_steps = max(10, int(args.sweep_frac * steps))
    grids = {f: args.grids[f] for kind, f, _ in plan_runs(args) if kind == "sweep"}
    print(f"{setup.device}: MoE LM hidden {args.hidden}, {args.layers} layers, {args.experts} experts "
          f"top-{args.top_k}, d_expert {args.d_expert}, {args.batch}x{args.seq_len} tokens/step, "
          f"{setup.tokens / 1e6:.1f} MB stdlib, expert GEMM {'bf16 grouped' if setup.bf16_experts else 'loop'}; "
          f"{steps} steps ({args.schedule}), sweeps {grids} at {sweep_steps} steps, LITE lr from "
          f"{args.lite_lr}" + (f"; calibration ms/step {probe}" if probe else ""), flush=True)
    sweep, best_lr, finals, skipped = [], {}, {}, []
    header = dict(args=args, steps=steps, sweep_steps=sweep_steps, probe=probe, started=started,
                  device=setup.device, expert_gemm="bf16 grouped" if setup.bf16_experts else (
                      "loop" + (f" (grouped failed: {setup.expert_gemm_error})"
                                if setup.expert_gemm_error else "")))

    def fits(family: str, n_steps: int, runs: int) -> bool:
        if probe is None:
            return True
        need = (probe[family] / 1e3 * n_steps * runs * HOST_OVERHEAD
                + eval_cost_s(probe[family], args, runs, n_steps != steps))
        return time.perf_counter() - started + need <= args.deadline_s

    for kind, family, source in plan_runs(args):
        if kind == "sweep":
            lrs = args.grids[family]
            if len(lrs) == 1:
                best_lr[family] = lrs[0]
                continue
            if not fits(family, sweep_steps, len(lrs)):
                skipped.append(f"sweep {family}")
                continue
            trials = [train(setup, family, lr, sweep_steps, evals_per_run=10) for lr in lrs]
            sweep += [{k: t[k] for k in ("family", "lr", "steps", "final_val", "diverged")} for t in trials]
            best = min(trials, key=lambda t: t["final_val"] if math.isfinite(t["final_val"]) else math.inf)
            best_lr[family] = best["lr"]
            print(f"  sweep {family:>9}: " + " ".join(f"{t['lr']:g}->{t['final_val']:.4f}" for t in trials)
                  + f" -> lr {best['lr']:g} [{time.perf_counter() - started:.0f} s]", flush=True)
            continue
        if source not in best_lr or not fits(family, steps, 1):
            skipped.append(f"final {family}")
            print(f"  {family:>14}: skipped (would end after --deadline-s {args.deadline_s:g} s)", flush=True)
            continue
        f = finals[family] = train(setup, family, best_lr[source], steps)
        grid = args.grids[source]
        f["lr_from"] = source
        f["lr_at_sweep_edge"] = len(grid) > 2 and f["lr"] in (min(grid), max(grid))
        print(f"  {family:>14}: lr {f['lr']:g} (from {source}'s sweep) val {f['final_val']:.4f}, "
              f"{f['step_ms']:.2f} ms/step ({100 * f['opt_share']:.1f} % optimizer) "
              f"[{time.perf_counter() - started:.0f} s]", flush=True)
        report(header, sweep, finals, skipped, final=False)
    report(header, sweep, finals, skipped, final=True)
    return 0


def report(header: dict, sweep: list, finals: dict, skipped: list, final: bool) -> None:
    """The table (at the end), the JSON and the PNG (after every final run, so a cut-off run keeps them)."""
    args, steps = header["args"], header["steps"]
    rows = summarize(finals)
    total = time.perf_counter() - header["started"]
    if final:
        columns = [bc.Column("family", "optimizer", "{}", 14), bc.Column("lr", "lr", "{:g}", 7),
                   bc.Column("final_val", "val loss", "{:.4f}", 8),
                   bc.Column("to_muon", "to Muon's", "{}", 9), bc.Column("to_muon_ratio", "x steps", "{:.2f}", 7),
                   bc.Column("to_soap", "to SOAP's", "{}", 9), bc.Column("to_soap_ratio", "x steps", "{:.2f}", 7),
                   bc.Column("step_ms", "ms/step", "{:.2f}", 8), bc.Column("opt_ms", "opt ms", "{:.2f}", 7),
                   bc.Column("opt_pct", "opt %", "{:.1f}", 6), bc.Column("matrix_pct", "matrix %", "{:.1f}", 8)]
        print(f"\n{steps} steps each; 'to X's' = first evaluated step with val loss <= X's final "
              f"(mean of its last {args.final_evals} evaluations), 'x steps' = that / {steps}; 'opt %' = all "
              f"optimizers' share of the step, 'matrix %' = Muon / SOAP (the hidden and expert matrices) alone"
              + ("; LITE families at their base's lr" if args.lite_lr == "base" else ""))
        print(bc.format_table(columns, rows))
        edge = [r["family"] for r in rows if r["lr_at_sweep_edge"]]
        if edge:
            print(f"best lr at the edge of the sweep for {', '.join(edge)}: widen --sweep to be sure")
        if skipped:
            print(f"skipped to keep within --deadline-s: {', '.join(skipped)}")
        print(f"total {total:.0f} s")
    payload = {"machine": bc.machine_description(), "settings": {k: v for k, v in vars(args).items()},
               "steps": steps, "sweep_steps": header["sweep_steps"], "lr_choice": (
                   "AdamW, Muon, SOAP: best of their sweep; Muon-LITE, SOAP-LITE: " +
                   ("their base's best lr (published protocol)" if args.lite_lr == "base" else "their own sweep")),
               "expert_gemm": header["expert_gemm"], "calibration_ms_per_step": header["probe"],
               "sweep": sweep, "rows": rows,
               "curves": {f: r["curve"] for f, r in finals.items()}, "skipped": skipped, "complete": final,
               "total_s": total}
    if args.json:
        bc.write_json(args.json, payload)
        if final:
            print(f"wrote {args.json}")
    if args.png and finals:
        plot(finals, args.png, f"MoE LM, {steps} steps, {header['device']}", quiet=not final)


def summarize(finals: dict) -> list[dict]:
    rows = []
    for family, f in finals.items():
        row = {k: f[k] for k in ("family", "lr", "lr_from", "lr_at_sweep_edge", "final_val", "step_ms", "opt_ms",
                                 "diverged")}
        row["opt_pct"] = 100 * f["opt_share"]
        row["matrix_pct"] = 100 * f["matrix_opt_share"] if f["matrix_opt_share"] is not None else None
        for base in ("muon", "soap"):
            if base in finals and math.isfinite(finals[base]["final_val"]):
                reached = steps_to_reach(f["curve"], finals[base]["final_val"])
                row[f"to_{base}"] = reached
                row[f"to_{base}_ratio"] = reached / f["steps"] if reached else None
        rows.append(row)
    return rows


def plot(finals: dict, path: str, title: str, quiet: bool = False) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, f in finals.items():
        xs, ys = zip(*f["curve"]) if f["curve"] else ((), ())
        ax.plot(xs, ys, label=f"{family} (lr {f['lr']:g})")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    finite = [v for f in finals.values() for _, v in f["curve"][len(f["curve"]) // 4:] if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) - 0.05, max(finite) + 0.1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    if not quiet:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
