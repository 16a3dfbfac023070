"""The Gluon (sm90) grouped GEMMs: compiled here for sm90 without a GPU (the promotion must sit between
the wgmma issue and its wait, or the overlap they exist for is gone); on a Hopper GPU, the same bits as
the Triton kernels on the edge cases of test_grouped_gemm.py and at real shapes; kernel choice errors.
Also the Triton GEMM and FP8-transpose kernels, compiled for sm90 with every option."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
import torch

from gemm_data import fp8_rows, offsets_of
from mxa2a.gemm import GemmConfig, grouped_gemm_fp8, grouped_gemm_fp8_wgrad, quantize_fp8_blocks
from test_grouped_gemm import SIZES, _aligned_operands, _weights


# Run in a fresh interpreter without TRITON_INTERPRET: under it, triton.language's own @jit helpers
# (the combine function of gl.sum) are interpreter objects that Gluon cannot compile.
_PRELUDE = r"""
import json, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from mxa2a.gemm.kernels import grouped_gemm_sm90 as k90

def desc(rows):
    layout = gl.NVMMASharedLayout.get_default_for([rows, 128], gl.float8e4nv)
    return f"tensordesc<fp8e4nv[{rows}, 128],{layout!r}>"
"""
_PTX_SCRIPT = _PRELUDE + r"""
from mxa2a.gemm.grouped import FORWARD_CONFIG, WGRAD_CONFIG

def ptx(fn, cfg, ints, consts):
    sig = dict(a_desc=desc(cfg.block_rows), b_desc=desc(cfg.block_cols), as_ptr="*u8", bs_ptr="*u8",
               c_ptr="*i16", offs_ptr="*i32", **{n: "i32" for n in ints}, **{n: "constexpr" for n in consts})
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 64), options=dict(num_warps=cfg.num_warps)).asm["ptx"]

def in_flight(text):
    m = re.search(r"wgmma[.]commit_group[.]sync[.]aligned;(.*?)wgmma[.]wait_group[.]sync[.]aligned", text, re.S)
    return len(re.findall(r"\bfma[.]rn[.]f32\b", m.group(1))) if m else -1

f, w = FORWARD_CONFIG, WGRAD_CONFIG
rows = ptx(k90._grouped_gemm_rows_sm90_kernel, f,
           ("N", "K", "G", "stride_asm", "stride_ask", "stride_bsg", "stride_bsn", "stride_bsk", "stride_cm"),
           dict(BLOCK_M=f.block_rows, BLOCK_N=f.block_cols, BLOCK_G=64, STAGES=f.num_stages, OUT_BF16=True,
                B_BLOCKS=True, num_warps=f.num_warps))
wgrad = ptx(k90._grouped_gemm_wgrad_sm90_kernel, w, ("N", "K", "T", "stride_asn", "stride_bsk", "stride_cg", "stride_cn"),
            dict(BLOCK_N=w.block_rows, BLOCK_K=w.block_cols, STAGES=w.num_stages, OUT_BF16=True, num_warps=w.num_warps))
print(json.dumps(dict(rows_fp8_wgmma="wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3" in rows,
                      rows_in_flight=in_flight(rows), wgrad_in_flight=in_flight(wgrad),
                      rows_per_thread=f.block_rows * f.block_cols // (32 * f.num_warps),
                      wgrad_per_thread=w.block_rows * w.block_cols // (32 * w.num_warps))))
"""


def test_sm90_kernels_compile_with_the_promotion_overlapping_the_mma():
    pytest.importorskip("triton.experimental.gluon")
    got = _run_offline(_PTX_SCRIPT)
    assert got["rows_fp8_wgmma"]
    # one FMA per accumulator element a thread holds: the whole previous step's promotion is issued
    # after this step's wgmma and before the wait for it
    assert got["rows_in_flight"] == got["rows_per_thread"], got
    assert got["wgrad_in_flight"] == got["wgrad_per_thread"], got


# The persistent warp-specialized kernels: compiled for sm90 and assembled by the ptxas Triton uses for
# sm90, which reports (C7514) when it has to serialize the wgmmas, e.g. because an MMA's registers are
# read or copied while it runs (what carrying an in-flight product across a loop's back edge causes).
_WS_SCRIPT = _PRELUDE + r"""
from triton.backends.nvidia.compiler import get_ptxas

def assemble(fn, rows, cols, ints, consts, scales="*u8"):
    sig = dict(a_desc=desc(rows), b_desc=desc(cols), c_ptr="*i16", offs_ptr="*i32",
               **{n: scales for n in ("as_ptr", "bs_ptr", "bst_ptr") if n in fn.arg_names},
               **{n: "i32" for n in ints}, **{n: "constexpr" for n in consts})
    warps = consts["num_warps"]
    opts = dict(num_warps=warps, maxnreg=k90.ws_maxnreg(warps))
    ptx = triton.compile(GluonASTSource(fn=fn, signature=sig, constexprs=consts),
                         target=GPUTarget("cuda", 90, 64), options=opts).asm["ptx"]
    with tempfile.TemporaryDirectory() as d:
        open(d + "/k.ptx", "w").write(ptx)
        run = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", d + "/k.ptx", "-o", d + "/k.cubin"],
                             capture_output=True, text=True)
    return dict(ok=run.returncode == 0, log=run.stderr[-2000:], wgmma="m64n%dk32.f32.e4m3.e4m3" % cols in ptx,
                setmaxnreg="setmaxnreg" in ptx)

rows = assemble(k90._grouped_gemm_rows_ws_kernel, 128, 128,
                ("N", "K", "G", "stride_asm", "stride_ask", "stride_bsg", "stride_bsn", "stride_bsk", "stride_cm"),
                dict(BLOCK_M=128, BLOCK_N=128, BLOCK_G=64, STAGES=4, OUT_BF16=True, LOADER_REGS=k90.LOADER_REGS,
                     num_warps=8))
wgrad_args = (k90._grouped_gemm_wgrad_ws_kernel, 128, 64,
              ("N", "K", "T", "G", "stride_asn", "stride_bst", "stride_cg", "stride_cn"),
              dict(BLOCK_N=128, BLOCK_K=64, STAGES=4, OUT_BF16=True, OVERLAP=True, LOADER_REGS=k90.LOADER_REGS,
                   num_warps=8))
wgrad, wgrad_f32 = assemble(*wgrad_args), assemble(*wgrad_args, scales="*fp32")  # f32_scales
print(json.dumps(dict(rows=rows, wgrad=wgrad, wgrad_f32=wgrad_f32)))
"""


def _run_offline(script: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = pathlib.Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as shim:  # the repository imported as `mxa2a`, as in an install
        os.symlink(root, os.path.join(shim, "mxa2a"))
        env["PYTHONPATH"] = os.pathsep.join([shim, env.get("PYTHONPATH", "")])
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                             timeout=300, cwd=shim)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_ws_kernels_assemble_for_sm90_without_serialized_wgmma():
    pytest.importorskip("triton.experimental.gluon")
    got = _run_offline(_WS_SCRIPT)
    for name, k in got.items():
        assert k["ok"], f"{name}: {k['log']}"
        assert k["wgmma"] and k["setmaxnreg"], f"{name}: no FP8 wgmma or no register split"
        assert "C7514" not in k["log"] and "serialized" not in k["log"], f"{name}: {k['log']}"


# The Triton kernels with every option, compiled for sm90 by the installed Triton (no GPU): the
# interpreter runs the Python of a constexpr branch but does not compile it, so a branch a newer Triton
# refuses (e.g. code after an `if CONSTEXPR: return`) shows up only here.
_TRITON_SCRIPT = r"""
import inspect, json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mxa2a.gemm.kernels import grouped_gemm as gg
from mxa2a.quant.kernels import fp8_rowwise_to_colwise as tr

def compile_ptx(fn, consts, pointers, warps=4):
    order = list(inspect.signature(fn.fn).parameters)
    sig = {n: "constexpr" if n in consts else pointers.get(n, "i32") for n in order}
    attrs = {(order.index(n),): [["tt.divisibility", 16]] for n in order if sig[n] != "constexpr"}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 64), options=dict(num_warps=warps, num_stages=3))
    return "wgmma" in k.asm["ptx"] or "ld.global" in k.asm["ptx"]

gemm = dict(a_ptr="*fp8e4nv", b_ptr="*fp8e4nv", c_ptr="*i16", offs_ptr="*i32")
done = []
for prefetch in (False, True):
    for bn, blocks in ((128, True), (256, True), (128, False)):
        done.append(compile_ptx(gg._grouped_gemm_rows_kernel, dict(BLOCK_M=64, BLOCK_N=bn, BLOCK_G=64, OUT_BF16=True,
                    B_BLOCKS=blocks, PREFETCH=prefetch), dict(gemm, as_ptr="*u8", bs_ptr="*u8")))
    for aligned in (False, True):
        for scales in ("*u8", "*fp32"):
            done.append(compile_ptx(gg._grouped_gemm_wgrad_kernel, dict(BLOCK_N=64, BLOCK_K=128, OUT_BF16=True,
                        ALIGNED=aligned, PREFETCH=prefetch), dict(gemm, as_ptr=scales, bs_ptr=scales)))
done.append(compile_ptx(gg._e8m0_decode_kernel, dict(BLOCK=1024), dict(src_ptr="*u8", dst_ptr="*fp32")))
rows = dict(q_ptr="*u8", qs_ptr="*u8", o_ptr="*u8", os_ptr="*u8", map_ptr="*i32")
for mapped in (False, True):
    done.append(compile_ptx(tr._fp8_rowwise_to_colwise_words_kernel, dict(BLOCK_K=128, ASM=True, MAPPED=mapped), rows, 8))
    for even in (False, True):
        done.append(compile_ptx(tr._fp8_rowwise_to_colwise_bytes_kernel, dict(BLOCK_K=32, EVEN=even, MAPPED=mapped), rows))
print(json.dumps(dict(compiled=len(done), all_code=all(done))))
"""


def test_triton_kernels_compile_for_sm90_with_every_option():
    got = _run_offline(_TRITON_SCRIPT)
    assert got == dict(compiled=21, all_code=True), got


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="GemmConfig.kernel"):
        GemmConfig(kernel="cutlass")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's Triton path (CPU tensors)")
def test_kernel_choice_off_a_hopper_gpu():
    a, b, off = fp8_rows(8, 256), _weights(2, 32, 256), offsets_of([4, 4])
    with pytest.raises(ValueError, match="kernel='sm90' needs a Hopper"):
        grouped_gemm_fp8(a, b, off, backend="triton", config=GemmConfig(block_rows=16, block_cols=32, kernel="sm90"))
    # "auto" off a Hopper GPU is the Triton kernel
    out = grouped_gemm_fp8(a, b, off, backend="triton", config=GemmConfig(block_rows=16, block_cols=32, kernel="auto"))
    ref = grouped_gemm_fp8(a, b, off, backend="triton", config=GemmConfig(block_rows=16, block_cols=32))
    assert torch.equal(out.view(torch.int16), ref.view(torch.int16))


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return torch.equal(x.view(torch.int32 if x.element_size() == 4 else torch.int16),
                       y.view(torch.int32 if y.element_size() == 4 else torch.int16))


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU")
@pytest.mark.parametrize("case", sorted(SIZES))
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_gpu_sm90_forward_equals_the_triton_kernel(case, out_dtype, seed):
    sizes, k = SIZES[case], 384
    offsets = offsets_of(sizes, "cuda")
    a = fp8_rows(sum(sizes), k, "cuda")
    b = quantize_fp8_blocks(torch.randn(len(sizes), 256, k, device="cuda"))
    m = int(offsets[-1])
    ref = grouped_gemm_fp8(a, b, offsets, out_dtype=out_dtype, b_block_scales=True)
    for rows, cols, warps in ((64, 128, 4), (64, 64, 4), (128, 128, 8)):
        out = grouped_gemm_fp8(a, b, offsets, out_dtype=out_dtype, b_block_scales=True,
                               config=GemmConfig(block_rows=rows, block_cols=cols, num_warps=warps, kernel="sm90"))
        assert _same(out[:m], ref[:m]), f"{rows}x{cols}, {warps} warps"
    with pytest.raises(ValueError, match="b_block_scales=True"):
        grouped_gemm_fp8(a, b, offsets, config=GemmConfig(kernel="sm90"))
    with pytest.raises(ValueError, match="16 [*] num_warps"):
        grouped_gemm_fp8(a, b, offsets, b_block_scales=True, config=GemmConfig(block_rows=128, kernel="sm90"))


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU")
def test_gpu_sm90_forward_keeps_a_nan_in_its_rows(seed):
    sizes, k = [70, 0, 90], 256
    x = torch.randn(sum(sizes), k, device="cuda")
    x[75, 5] = float("nan")
    from mxa2a.quant import quantize_fp8
    a, offsets = quantize_fp8(x), offsets_of(sizes, "cuda")
    b = quantize_fp8_blocks(torch.randn(3, 128, k, device="cuda"))
    out = grouped_gemm_fp8(a, b, offsets, out_dtype=torch.float32, b_block_scales=True,
                           config=GemmConfig(kernel="sm90"))
    assert out[75].isnan().all() and not out[:75].isnan().any() and not out[76:].isnan().any()


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU")
@pytest.mark.parametrize("sizes", [[5, 0, 1, 100, 30], [0, 0, 256], [1, 0], [129, 127, 0, 128]],
                         ids=["mixed", "empty_first", "tiny", "around_128"])
def test_gpu_sm90_aligned_wgrad_equals_the_triton_kernel(sizes, seed):
    a_t, b_t, layout = _aligned_operands(sizes, 256, 384, "cuda", nan_row=None)
    for dtype in (torch.float32, torch.bfloat16):
        outs = [grouped_gemm_fp8_wgrad(a_t, b_t, layout, out_dtype=dtype, config=GemmConfig(kernel=kern))
                for kern in ("triton", "sm90")]
        assert _same(*outs), f"{dtype}"
    with pytest.raises(ValueError, match="GroupAlignedLayout only"):
        grouped_gemm_fp8_wgrad(a_t, b_t, layout.padded_offsets, config=GemmConfig(kernel="sm90"))


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU")
@pytest.mark.parametrize("g,n,k", [(64, 2816, 2048), (64, 2048, 1408), (8, 4096, 7168)])
def test_gpu_sm90_equals_the_triton_kernel_at_real_shapes(g, n, k, seed):
    m = 8192
    p = torch.distributions.Dirichlet(torch.full((g,), 0.3)).sample()
    sizes = torch.distributions.Multinomial(m, p).sample().long().tolist()
    offsets = offsets_of(sizes, "cuda")
    a, b = fp8_rows(m, k, "cuda"), quantize_fp8_blocks(torch.randn(g, n, k, device="cuda"))
    outs = [grouped_gemm_fp8(a, b, offsets, b_block_scales=True, config=GemmConfig(kernel=kern))
            for kern in ("triton", "sm90")]
    assert _same(*outs)
    a_t, b_t, layout = _aligned_operands(sizes, n, k, "cuda")
    outs = [grouped_gemm_fp8_wgrad(a_t, b_t, layout, out_dtype=torch.bfloat16, config=GemmConfig(kernel=kern))
            for kern in ("triton", "sm90")]
    assert _same(*outs)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU")
@pytest.mark.parametrize("case", sorted(SIZES))
@pytest.mark.parametrize("k", [128, 256, 384])  # one, two and three reduction steps (odd and even)
def test_gpu_ws_forward_equals_the_triton_kernel(case, k, seed):
    from mxa2a.gemm.kernels.grouped_gemm_sm90 import launch_rows_ws
    sizes = SIZES[case]
    offsets = offsets_of(sizes, "cuda")
    a = fp8_rows(sum(sizes), k, "cuda")
    b = quantize_fp8_blocks(torch.randn(len(sizes), 384, k, device="cuda"))
    m = int(offsets[-1])
    for out_dtype in (torch.float32, torch.bfloat16):
        ref = grouped_gemm_fp8(a, b, offsets, out_dtype=out_dtype, b_block_scales=True)
        out = torch.empty_like(ref)
        launch_rows_ws(a, b, offsets, out, GemmConfig(block_rows=128, block_cols=128, num_warps=8, num_stages=3))
        assert _same(out[:m], ref[:m]), f"{out_dtype}"


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU")
@pytest.mark.parametrize("sizes", [[5, 0, 1, 100, 30], [0, 0, 256], [1, 0], [129, 127, 0, 128]],
                         ids=["mixed", "empty_first", "tiny", "around_128"])
@pytest.mark.parametrize("overlap, f32", [(True, False), (False, False), (True, True)])
def test_gpu_ws_aligned_wgrad_equals_the_triton_kernel(sizes, overlap, f32, seed):
    from mxa2a.gemm.kernels.grouped_gemm_sm90 import launch_wgrad_ws
    a_t, b_t, layout = _aligned_operands(sizes, 192, 384, "cuda", nan_row=None)
    for dtype in (torch.float32, torch.bfloat16):
        ref = grouped_gemm_fp8_wgrad(a_t, b_t, layout, out_dtype=dtype)
        out = torch.empty_like(ref)
        launch_wgrad_ws(a_t, b_t, layout.padded_offsets, out,
                        GemmConfig(block_rows=128, block_cols=64, num_warps=8, num_stages=4, f32_scales=f32),
                        overlap=overlap)
        assert _same(out, ref), f"{dtype}"
