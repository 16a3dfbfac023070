#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the CUDA tests, then the benchmarks, results into OUTDIR.
#
#   benchmarks/run_gpu_suite.sh OUTDIR [tests] [codec] [convert] [a2a] [a2a-quick] [probe] [fp8-tests] [gemm] [layer]
#       [recipe-tests] [train] [convergence] [optim]
#   default: tests codec convert a2a. The FP8 expert-compute phases (issue 19): probe (does torch's
#   scaled_grouped_mm take 1x128 / 128x128 block scales), fp8-tests (the GPU tests of mxa2a.gemm and
#   the FP8 experts only), gemm (gemm_throughput.py --sweep), layer (moe_layer.py, with gemm's fastest
#   launch configurations when gemm ran first); recipe-tests, train
#   (train_throughput.py per recipe), convergence (convergence.py, 6 variants), optim (optimizers.py).
#
# Works from a checkout without installing: if `import mxa2a` fails, a link to the checkout is put on
# PYTHONPATH. Each phase's log goes to OUTDIR/<phase>.log; a short table of every phase ends the output.
set -uo pipefail
out=${1:?usage: run_gpu_suite.sh OUTDIR [phases...]}
shift
phases=("$@")
[[ ${#phases[@]} -gt 0 ]] || phases=(tests codec convert a2a)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
py=${PYTHON:-python3}
mkdir -p "$out"
if ! "$py" -c "import mxa2a" 2>/dev/null; then
    shim=$(mktemp -d)
    ln -s "$root" "$shim/mxa2a"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nvidia-smi topo -m 2>/dev/null | head -5
    "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'nccl', torch.cuda.nccl.version())"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

summary=()
run_phase() {  # name, command...
    local name=$1; shift
    local t0=$SECONDS
    echo "=== $name: $*"
    "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.log"
    summary+=("$(printf '%-10s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
}
for phase in "${phases[@]}"; do
    case $phase in
        tests)     run_phase tests "$py" -m pytest -q -m gpu -x "$root/tests" -p no:cacheprovider ;;
        codec)     run_phase codec "$py" "$here/codec_throughput.py" --json "$out/codec_throughput.json" ${CODEC_ARGS:-} ;;
        convert)   run_phase convert "$py" "$here/conversion_throughput.py" --json "$out/conversion_throughput.json" ${CONVERT_ARGS:-} ;;
        a2a)       run_phase a2a bash "$here/run_a2a_suite.sh" "$out/a2a" ;;
        a2a-quick) run_phase a2a-quick "$py" "$here/a2a_bandwidth.py" --nproc auto -b 1M -e 1G -f 4 \
                       --wire nccl,raw,fp8,mxfp4 --splits equal --breakdown --json "$out/a2a_quick.json" ${A2A_ARGS:-} ;;
        probe)     run_phase probe "$py" "$here/probe_scaled_grouped_mm.py" ;;
        fp8-tests) run_phase fp8-tests "$py" -m pytest -q -m gpu -p no:cacheprovider "$root/tests/gemm" \
                       "$root/tests/moe/test_fp8_experts.py" "$root/tests/moe/test_static_dispatch_gpu.py" -k "not ep2" ;;
        gemm)      run_phase gemm timeout "${GEMM_TIMEOUT:-600}" "$py" "$here/gemm_throughput.py" --sweep \
                       --json "$out/gemm_throughput.json" ;;
        layer)     cfg=(); [[ -f "$out/gemm_throughput.json" ]] && cfg=(--configs-from "$out/gemm_throughput.json")
                   run_phase layer timeout "${LAYER_TIMEOUT:-600}" "$py" "$here/moe_layer.py" ${cfg[@]+"${cfg[@]}"} \
                       --json "$out/moe_layer.json" ;;
        recipe-tests) run_phase recipe-tests "$py" -m pytest -q -m gpu -p no:cacheprovider \
                       "$root/tests/moe/test_recipe.py" "$root/tests/moe/test_static_dispatch_gpu.py" -k "not ep2" ;;
        train)     run_phase train timeout "${TRAIN_TIMEOUT:-330}" "$py" "$here/train_throughput.py" --iters 5 --warmup 2 \
                       --json "$out/train_throughput.json" --png "$out/train_throughput.png" ${TRAIN_ARGS:-} ;;
        convergence) run_phase convergence timeout "${CONVERGENCE_TIMEOUT:-300}" "$py" "$here/convergence.py" \
                       --time-limit-s "${CONVERGENCE_LIMIT_S:-230}" --json "$out/convergence.json" \
                       --png "$out/convergence.png" ${CONVERGENCE_ARGS:-} ;;
        optim)     run_phase optim timeout "${OPTIM_TIMEOUT:-325}" "$py" "$here/optimizers.py" --budget-s 260 \
                       --deadline-s 290 --json "$out/optimizers.json" --png "$out/optimizers.png" ${OPTIM_ARGS:-} ;;
        *) echo "unknown phase $phase" >&2; exit 2 ;;
    esac
done
printf '%s\n' "${summary[@]}"
