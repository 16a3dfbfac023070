#!/usr/bin/env bash
# The GPU tests, split over parallel pytest processes (Triton's sm90 compile is CPU-bound: the MXFP4 ->
# FP8 transpose's tiles take about 20 s each), logs into OUTDIR, one summary line per group last.
#
#   benchmarks/run_gpu_tests.sh OUTDIR        (T=seconds per group, default 400)
#
# From a checkout without installing (a link to it is put on PYTHONPATH when `import mxa2a` fails).
# The Megatron-Core test needs megatron-core importable (pip install -e '.[dev]', or its site-packages
# folder on PYTHONPATH); it is skipped otherwise.
set -u
out=${1:?usage: run_gpu_tests.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p "$out"
if ! python3 -c "import mxa2a" 2>/dev/null; then
    shim=$(mktemp -d); ln -s "$root" "$shim/mxa2a"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader > "$out/machine.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$out/machine.txt"
cat "$out/machine.txt"
T=${T:-400}
group() {  # name, pytest args...
    local n=$1; shift
    ( t0=$SECONDS; timeout "$T" python3 -m pytest -q -p no:cacheprovider "$@" > "$out/$n.log" 2>&1
      echo "rc=$? $((SECONDS - t0))s" >> "$out/$n.log" ) &
}
q=tests/quant
group g1 -m "gpu and not slow" $q/test_mxfp4_rowwise_to_fp8_colwise.py
group g2 -m "gpu and not slow" $q/test_fp8_rowwise_to_colwise.py $q/test_mxfp4_rowwise_to_colwise.py \
    $q/test_mxfp4_to_fp8.py $q/test_fp8_to_mxfp4.py
group g3 -m "gpu and not slow" $q/test_formats.py $q/test_fp8.py $q/test_mxfp4.py $q/test_reference_devices.py \
    $q/test_scales_near_dtype_max.py
group g4 -m "gpu and not slow" tests/comm tests/moe tests/gemm tests/optim
group g5 -m gpu -rs tests/integrations tests/comm/test_functional.py
group s1 -m "gpu and slow" $q/test_mxfp4_rowwise_to_fp8_colwise.py -k "f16x2_tiles"
group s2 -m "gpu and slow" $q/test_mxfp4_rowwise_to_fp8_colwise.py -k "not f16x2_tiles"
wait
for n in g1 g2 g3 g4 g5 s1 s2; do
    echo "== $n: $(grep -E 'passed|failed|error' "$out/$n.log" | tail -1) $(tail -1 "$out/$n.log")"
done
