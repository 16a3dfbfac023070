#!/usr/bin/env bash
# The issue-5 all-to-all sweep: sizes 1 MiB..1 GiB per rank, equal and MoE splits, wires raw/fp8/mxfp4
# (plus nccl, plain torch.distributed bf16, the speedup baseline),
# under the three link settings of benchmarks/README.md. Writes <link>.json, <link>.png and <link>.txt
# (the printed table) into OUTDIR, then summary.md over every JSON there (summarize_a2a.py).
#
#   benchmarks/run_a2a_suite.sh OUTDIR [nvlink] [hostmem] [sockets]      # default: all three
#
# NPROC (default auto = every local GPU), ITERS/WARMUP (default 20/5; 10/2 for sockets, the slow link)
# and EXTRA (flags appended last, so they override: "--chunks 4", or "-b 16K -e 64K" for a quick try)
# may be set in the environment. The environment passes through unchanged: nothing here sets
# NCCL_NVLS_ENABLE. Exits nonzero if any run failed (a --check bound included); the others still run.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
out=$1
shift
links=("$@")
[[ ${#links[@]} -gt 0 ]] || links=(nvlink hostmem sockets)

here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-}
if [[ -z $py ]]; then
    if [[ -x $here/../.venv/bin/python ]]; then py=$here/../.venv/bin/python; else py=python3; fi
fi
mkdir -p "$out"

status=0
for link in "${links[@]}"; do
    iters=${ITERS:-20}
    warmup=${WARMUP:-5}
    case $link in
        nvlink)  env_set=() ;;
        hostmem) env_set=(NCCL_P2P_DISABLE=1) ;;
        sockets) env_set=(NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1); iters=${ITERS:-10}; warmup=${WARMUP:-2} ;;
        *) echo "unknown link setting '$link' (expected nvlink, hostmem or sockets)" >&2; exit 2 ;;
    esac
    echo "=== $link: ${env_set[*]:-default NCCL settings}" >&2
    # shellcheck disable=SC2086
    env ${env_set[@]+"${env_set[@]}"} "$py" "$here/a2a_bandwidth.py" --nproc "${NPROC:-auto}" \
        -b 1M -e 1G -f 2 -n "$iters" -w "$warmup" --wire nccl,raw,fp8,mxfp4 --splits equal,moe \
        --check --breakdown --json "$out/$link.json" --plot "$out/$link.png" ${EXTRA:-} \
        | tee "$out/$link.txt" || status=1
done
# One markdown summary of every result in OUTDIR (bandwidth, speedup, targets, breakdown).
"$py" "$here/summarize_a2a.py" "$out"/*.json --sizes 1M,16M,256M,1G > "$out/summary.md" || status=1
cat "$out/summary.md"
exit $status
