#!/usr/bin/env bash
# The GPU benchmark on a machine with one GPU (docs/training.md, "On GPUs").
#
#   benchmarks/gpu/run.sh [--dry-run] [python -m benchmarks.gpu options...]
#
# Installs nothing: it runs the project's own files with the first Python that has what they
# need: $STREAMREC_PYTHON, else the repository's .venv, else python3 (on a GPU machine, the one
# holding its CUDA torch). It first writes what the machine offers and lacks (gpu_probe.json),
# then, if the encoder level can run, the benchmark (gpu.json; gpu_dry_run.json with --dry-run):
# into $OUT when set, else benchmarks/results. The benchmark is stopped after
# STREAMREC_GPU_BENCH_SECONDS (default 450), so the script ends within 8 minutes; what it measured
# by then is already in the result file.
#
# Exit status: 0 done; 3 this Python cannot run the benchmark (gpu_probe.json says what it
# lacks); 4 no GPU (without --dry-run); 124 stopped at the time limit; else the benchmark's.
set -euo pipefail

cd "$(dirname "$0")/../.."
results="${OUT:-benchmarks/results}"
mkdir -p "$results"
dry_run=0
for arg in "$@"; do
    if [[ "$arg" == "--dry-run" ]]; then
        dry_run=1
    fi
done

pick_python() {
    local candidate
    for candidate in "${STREAMREC_PYTHON:-}" .venv/bin/python python3; do
        if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c "import torch" >/dev/null 2>&1; then
            if [[ "$dry_run" == 1 ]] || "$candidate" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
                echo "$candidate"
                return 0
            fi
        fi
    done
    return 1
}

if ! python="$(pick_python)"; then
    echo "no Python here imports torch$([[ "$dry_run" == 1 ]] || echo " with a CUDA GPU")" \
        "(tried \$STREAMREC_PYTHON, .venv/bin/python, python3)" >&2
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >&2
    exit 4
fi
echo "python: $python ($("$python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

probe_status=0
"$python" -m benchmarks.gpu.probe --out "$results/gpu_probe.json" >/dev/null || probe_status=$?
"$python" - "$results/gpu_probe.json" <<'EOF'
import json, sys
found = json.load(open(sys.argv[1]))
torch = found["torch"]
gpu = f"{torch.get('device')} ({torch.get('memory_gib')} GiB, bf16 {torch.get('bf16')})" if torch["cuda_available"] else "none"
print(f"GPU: {gpu}; FBGEMM build: {found['fbgemm_build']}; levels: {found['levels']}")
for missing in found["lacks"]:
    print(f"lacks: {missing}")
EOF
if [[ "$probe_status" != 0 ]]; then
    echo "this Python cannot run the benchmark (see lacks above and $results/gpu_probe.json);" \
        "point STREAMREC_PYTHON at one that has the project's dependencies" >&2
    exit 3
fi

name=gpu.json
if [[ "$dry_run" == 1 ]]; then
    name=gpu_dry_run.json
fi
status=0
timeout --signal=TERM --kill-after=15 "${STREAMREC_GPU_BENCH_SECONDS:-450}" \
    "$python" -m benchmarks.gpu --out "$results/$name" "$@" || status=$?
if [[ "$status" == 124 ]]; then
    echo "stopped at the time limit; $results/$name holds what was measured by then" >&2
fi
exit "$status"
