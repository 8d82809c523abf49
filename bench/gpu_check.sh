#!/usr/bin/env bash
# The GPU check of issue 8, one command, under 8 minutes on one H200:
#   bf16 matmul peak, FLOPs (Table 1c), pretraining step of ViT-L/16 at batch 256 (bf16, fused
#   attention, eager and torch.compile) with its efficiency, and Table 2 speed-ups (ViT-L, ViT-H).
#
#   bench/gpu_check.sh                        # records into $OUT if set, else results/bench/
#   DEVICE=cpu QUICK=1 bench/gpu_check.sh     # the same stages as a seconds-long CPU smoke run
#
# Each stage has its own time limit; a stage that fails or runs out of time is reported and the
# others still run (exit status 1 at the end if any failed). Records are JSON lists, one file per
# benchmark; summary.md holds the tables for the README.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
OUT_DIR=${OUT:-results/bench}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1

ARGS=(--device "$DEVICE" --out-dir "$OUT_DIR")
if [[ "$QUICK" == 1 ]]; then ARGS+=(--quick); fi
FAILED=()
START=$(date +%s)

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, keep going if it fails
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit}s, $(( $(date +%s) - START ))s elapsed) ==="
    local rc=0
    timeout --signal=TERM --kill-after=10 "$limit" "$@" || rc=$?
    if [[ $rc -ne 0 ]]; then
        [[ $rc -eq 124 ]] && echo "!!! $name: ran out of its ${limit}s" || echo "!!! $name: failed with exit status $rc"
        FAILED+=("$name")
    fi
}

echo "=== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ): device=$DEVICE quick=$QUICK out=$OUT_DIR python=$PYTHON ==="
"$PYTHON" - "$DEVICE" <<'EOF'
import sys, platform
import torch, timm
print(f"python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}")
sys.path.insert(0, ".")
import core.train  # noqa: F401  the suite imports here (a missing package fails now, not in every stage)
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("error: DEVICE=cuda but torch sees no CUDA device (set DEVICE=cpu for the CPU smoke run)")
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv || true

if [[ "$QUICK" == 1 ]]; then
    stage "matmul peak" 120 "$PYTHON" bench/matmul.py "${ARGS[@]}" --precision bf16
    stage "FLOPs (Table 1c)" 120 "$PYTHON" bench/flops.py "${ARGS[@]}"
    stage "pretraining step" 120 "$PYTHON" bench/pretrain_step.py "${ARGS[@]}" --precision bf16
    stage "Table 2 speed-ups" 120 "$PYTHON" bench/wallclock.py "${ARGS[@]}"
    stage "tiers: baseline step" 120 "$PYTHON" bench/pretrain_step.py "${ARGS[@]}" --precision bf16 \
        --presets cifar_vitt
    echo "(quick: the torch.compile stage is skipped; compiling takes minutes on a CPU)"
else
    # budget: 45 + 45 + 75 + 140 + 120 + 150 = 575 s of limits; a normal run should take about half
    stage "matmul peak" 45 "$PYTHON" bench/matmul.py "${ARGS[@]}" --precision bf16 --n 8192
    stage "FLOPs (Table 1c)" 45 "$PYTHON" bench/flops.py "${ARGS[@]}" --models vit_large_patch16 vit_huge_patch14
    stage "pretraining step, eager" 75 "$PYTHON" bench/pretrain_step.py "${ARGS[@]}" \
        --models vit_large_patch16 --batch 256 --precision bf16 --compile off --steps 10 --warmup 3
    stage "Table 2 speed-ups" 140 "$PYTHON" bench/wallclock.py "${ARGS[@]}" \
        --models vit_large_patch16 vit_huge_patch14 --batch 64 --precision bf16 --steps 10 --warmup 3
    # issue 26: images/s and peak memory of each tier's baseline at its per-GPU batch (docs/tiers.md)
    stage "tiers: baseline step" 120 "$PYTHON" bench/pretrain_step.py "${ARGS[@]}" \
        --presets in1k_vitb in100_vits cifar_vitt --precision bf16 --compile off --steps 10 --warmup 3
    stage "pretraining step, torch.compile" 150 "$PYTHON" bench/pretrain_step.py "${ARGS[@]}" \
        --models vit_large_patch16 --batch 256 --precision bf16 --compile on --steps 10 --warmup 3
fi

echo
echo "=== summary ($(( $(date +%s) - START ))s) ==="
"$PYTHON" bench/summary.py "$OUT_DIR" --since "$START" | tee "$OUT_DIR/summary.md"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "failed stages: ${FAILED[*]}"
    exit 1
fi
echo "all stages passed; records in $OUT_DIR"
