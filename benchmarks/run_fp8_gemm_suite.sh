#!/usr/bin/env bash
# The FP8 expert-compute checks and timings on one GPU, in one go (issue 19), results into OUTDIR:
#   benchmarks/run_fp8_gemm_suite.sh OUTDIR [probe] [tests] [gemm] [layer]     # default: all four
# probe: does torch's scaled_grouped_mm take 1x128 / 128x128 block scales here; tests: the GPU tests
# of mxa2a.gemm and the FP8 experts; gemm: gemm_throughput.py --sweep; layer: moe_layer.py.
# Each phase's log goes to OUTDIR/<phase>.log; a short table of the phases ends the output.
set -uo pipefail
out=${1:?usage: run_fp8_gemm_suite.sh OUTDIR [phases...]}
shift
phases=("$@")
[[ ${#phases[@]} -gt 0 ]] || phases=(probe tests gemm layer)  # layer after gemm: it takes gemm's fastest configurations
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/machine.txt"
summary=()
run_phase() {  # name, command...
    local name=$1; shift
    local t0=$SECONDS
    echo "=== $name: $*"
    "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 60 "$out/$name.log"
    summary+=("$(printf '%-6s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
}
for phase in "${phases[@]}"; do
    case $phase in
        probe) run_phase probe "$py" "$here/probe_scaled_grouped_mm.py" ;;
        tests) run_phase tests "$py" -m pytest -q -m gpu tests/gemm tests/moe/test_fp8_experts.py \
                   tests/moe/test_static_dispatch_gpu.py -k "not ep2" ;;
        gemm) run_phase gemm timeout "${GEMM_TIMEOUT:-600}" "$py" "$here/gemm_throughput.py" --sweep \
                  --json "$out/gemm_throughput.json" ;;
        layer) cfg=(); [[ -f "$out/gemm_throughput.json" ]] && cfg=(--configs-from "$out/gemm_throughput.json")
               run_phase layer timeout "${LAYER_TIMEOUT:-600}" "$py" "$here/moe_layer.py" ${cfg[@]+"${cfg[@]}"} \
                   --json "$out/moe_layer.json" ;;
        *) echo "unknown phase $phase"; exit 2 ;;
    esac
done
printf '%s\n' "${summary[@]}"
