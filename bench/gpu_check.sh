#!/usr/bin/env bash
# One GPU check of bench/step.py on a machine with one H100/H200, in at most ~9 minutes:
#   1. build the random-weight architecture folders (sd15-arch, sdxl-arch), each timed;
#   2. SD 1.5 at 512 px, batch 1, 4, 8, bf16 LoRA: sdexp against the diffusers-example step;
#   3. SDXL at 1024 px, batch 1, 4, bf16 LoRA: the same against train_text_to_image_lora_sdxl.py's step;
#   4. if time is left: SDXL batch 1 with gradient checkpointing;
# then one JSON ($OUT/results-gpu.json, or bench/results-gpu.json without $OUT) and one table.
#
#   bash bench/gpu_check.sh                  # PYTHON=... to choose the interpreter, BUDGET_S=540 the deadline
#   DEVICE=cpu SD15_MODEL=tiny SDXL_MODEL=tiny_sdxl bash bench/gpu_check.sh   # the same flow on a CPU (~4 min)
#
# Time budget (estimates from DESIGN.md's H100 figures and bench/README.md's measurements):
#   - every worker (one per implementation and batch) pays ~20 s (SD 1.5) to ~35 s (SDXL) before its
#     first step: imports, CUDA start, loading 2.0 / 6.5 GB of bf16 safetensors, sdexp's config and
#     accelerate set-up, first-step kernel selection;
#   - builds: sd15-arch ~15-25 s, sdxl-arch ~40-90 s (random init on the GPU, then writing 2.0 / 6.5 GB);
#   - SD 1.5 steps take ~0.15-0.2 s (launch-bound): 3 warm-up + 15 timed = ~4 s a worker; 6 workers ~2.5 min;
#   - SDXL: 2.0 img/s at batch 1 and 7.9 img/s at batch 4 (~0.5 s a step for the reference, sdexp
#     up to ~1.4x that): 2 warm-up + 6 timed = ~5-7 s a worker; 4 workers ~2.5-3 min;
#   - gradient checkpointing: 1.1 img/s, 1 + 4 steps, 2 workers ~1.3 min; run only if at most 390 s
#     have passed by then.
#   Total ~6-7.5 min. Each phase runs under a deadline (timeout) so that the script ends by BUDGET_S
#   whatever happens; a killed phase loses only its unfinished batches (step.py writes its JSON after
#   every batch), and the table shows what finished.
set -uo pipefail

cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET_S=${BUDGET_S:-540}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
DEVICE=${DEVICE:-cuda}
SD15=${SD15_MODEL:-sd15-arch}
SDXL=${SDXL_MODEL:-sdxl-arch}
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
RESULT=${OUT:+$OUT/results-gpu.json}
RESULT=${RESULT:-bench/results-gpu.json}
PARTS=$(mktemp -d)
trap 'rm -rf "$PARTS"' EXIT

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET_S - $(elapsed) - 15)); }  # 15 s kept for the merge
phase() {  # phase NAME MIN_SECONDS_LEFT ARGS...: bench/step.py under the deadline
    local name=$1 need=$2
    shift 2
    local t
    t=$(left)
    if [ "$t" -lt "$need" ]; then
        echo "== $name: skipped ($t s left of the budget, needs ~$need s)"
        return 0
    fi
    echo "== $name (at $(elapsed) s, deadline in $t s)"
    timeout --kill-after=10 "$t" "$PY" bench/step.py --device "$DEVICE" --json "$PARTS/$name.json" "$@"
    local rc=$?
    [ "$rc" -eq 124 ] && echo "!! $name: stopped at the deadline"
    echo "== $name: exit $rc after $(elapsed) s"
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, diffusers, transformers, peft; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'

phase build-sd15 60 --model "$SD15" --build-only
phase build-sdxl 120 --model "$SDXL" --build-only
phase sd15 90 --model "$SD15" --batch 1,4,8 --steps 15 --warmup 3 --precision bf16 --worker-timeout 120
phase sdxl 120 --model "$SDXL" --batch 1,4 --steps 6 --warmup 2 --precision bf16 --worker-timeout 150
if [ "$(elapsed)" -le 390 ]; then
    phase sdxl-gc 100 --model "$SDXL" --batch 1 --steps 4 --warmup 1 --precision bf16 --gradient-checkpointing \
        --worker-timeout 120
else
    echo "== sdxl-gc: skipped (already $(elapsed) s in)"
fi

echo
echo "== all results (H100/H200, bf16, LoRA rank 4 on to_q/to_k/to_v/to_out.0, eager), after $(elapsed) s"
shopt -s nullglob
parts=("$PARTS"/*.json)
if [ "${#parts[@]}" -eq 0 ]; then
    echo "no results"
    exit 1
fi
"$PY" bench/step.py --merge "${parts[@]}" --json "$RESULT"
rc=$?
echo "total $(elapsed) s"
exit $rc
