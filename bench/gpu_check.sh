#!/usr/bin/env bash
# Every GPU figure of issue 17 in one call of at most 9 minutes on one H100/H200: one JSON
# ($OUT/results-gpu.json, or bench/results-gpu.json without $OUT), rewritten after every section, and
# one table at the end. Sections in priority order, each under its own deadline (seconds):
#   build                 sd15-arch (40 s cap), then sdxl-arch in the background (200 s cap, while
#                         the SD 1.5 sections run: they need no SDXL)
#   sd15_eager       90   bench/step.py SD 1.5 LoRA 512 bf16, batch 1, 4, 8: sdexp/reference time ratio
#   sd15_compiled   130   the same at batch 32 with --compile --channels-last (both sides): img/s
#   sdxl_eager       85   SDXL LoRA 1024 bf16, batch 1, 4: img/s and ratio
#   preset_sd15_finetune  55   bench/preset_memory.py: train=vram12, SD 1.5 full fine-tune: peak GiB, img/s
#   preset_sdxl_lora      60   the same for SDXL LoRA
#   sweep_lora_tpe        75   bench/sweep_breakdown.py: 2 shortened trials of sweeps/lora_tpe.yaml on
#                         sd15-arch (40 steps), setup/train/evaluation/teardown, 16 trials projected
# Caps sum to 535 s; BUDGET_S (540) is the hard end: a section starts only with its minimum left and
# never runs past the budget, and 15 s are kept for the report. Expected on an H100 (DESIGN.md and
# bench/README.md figures): builds 20 + 60 s, each step.py worker 12-35 s before its first step (imports,
# loading 2.0 / 6.5 GB), compiling the UNet 40-60 s a side: about 7.5 minutes in all.
#
#   bash bench/gpu_check.sh                 # PYTHON=... the interpreter, BUDGET_S=540 the deadline
#   GPU_CHECK_DRY=1 bash bench/gpu_check.sh # the same sections on the CPU: tiny models, 1-4 steps, no
#                                           # compile, CUDA-only adamw8bit -> adamw (tests/bench)
set -uo pipefail

cd "$(dirname "$0")/.."
START=$(date +%s)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
RESULT=${OUT:+$OUT/results-gpu.json}
RESULT=${RESULT:-bench/results-gpu.json}
PARTS=$(mktemp -d)
BG_PID=
trap '[ -n "$BG_PID" ] && kill "$BG_PID" 2>/dev/null; rm -rf "$PARTS"' EXIT

DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then
    BUDGET_S=${BUDGET_S:-1200}
    DEVICE=cpu SD15=tiny SDXL=tiny_sdxl SCALE=4
    EAGER=(--batch 1 --steps 1 --warmup 1)
    COMPILED=(--batch 2 --steps 1 --warmup 1)  # no --compile on the CPU: minutes of C++ builds
    SDXL_STEPS=(--batch 1 --steps 1 --warmup 1)
    PRESET=(--device cpu --steps 1 --warmup 1 --set train.optimizer=adamw)  # adamw8bit is CUDA-only
    PRESET_SD15=(--model tiny) PRESET_SDXL=(--model tiny_sdxl)
    SWEEP=(--model tiny --device cpu --steps 4 --images 2 --set train.mixed_precision=no eval.images=1
           eval.steps=1 train.val_timesteps=1 data.val_images=1)
else
    BUDGET_S=${BUDGET_S:-540}
    DEVICE=cuda SD15=sd15-arch SDXL=sdxl-arch SCALE=1
    EAGER=(--batch 1,4,8 --steps 8 --warmup 2)
    COMPILED=(--batch 32 --steps 6 --warmup 2 --compile)
    if grep -q -- '"--channels-last"' bench/step.py; then COMPILED+=(--channels-last)
    else echo "note: bench/step.py has no --channels-last yet (issue 17 item 1): compiled without it"; fi
    SDXL_STEPS=(--batch 1,4 --steps 4 --warmup 1)
    PRESET=(--device cuda --steps 6 --warmup 4)
    PRESET_SD15=(--model sd15-arch) PRESET_SDXL=(--model sdxl-arch)
    SWEEP=(--model sd15-arch --device cuda --steps 40)
fi

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET_S - $(elapsed) - 15)); }  # 15 s kept for the report
record() {  # record NAME STATUS SECONDS RC WHY
    printf '{"name": "%s", "status": "%s", "seconds": %s, "rc": %s, "why": "%s"}\n' "$1" "$2" "$3" "$4" "$5" \
        >>"$PARTS/phases.jsonl"
    "$PY" bench/gpu_report.py "$PARTS" "$RESULT" >/dev/null
}
section() {  # section NAME CAP MIN COMMAND...: the command under min(CAP x SCALE, what is left)
    local name=$1 cap=$(($2 * SCALE)) need=$3
    shift 3
    local t started rc status
    t=$(left)
    if [ "$t" -lt "$need" ]; then
        echo "== $name: skipped ($t s left of the budget, needs $need s)"
        record "$name" skipped 0 null "$t s left of the budget, needs $need s"
        return 0
    fi
    [ "$t" -gt "$cap" ] && t=$cap
    echo "== $name (at $(elapsed) s, deadline in $t s)"
    started=$(date +%s)
    timeout --kill-after=10 "$t" "$@"
    rc=$?
    case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
    echo "== $name: $status (exit $rc) after $(elapsed) s"
    record "$name" "$status" $(($(date +%s) - started)) "$rc" ""
}
STEP=("$PY" bench/step.py --device "$DEVICE" --precision bf16)

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - "$PARTS/meta.json" "$DRY" <<'EOF'
import json, sys, time
import torch, diffusers, transformers, peft
meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dry_run": sys.argv[2] == "1",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {m.__name__: m.__version__ for m in (torch, diffusers, transformers, peft)}}
open(sys.argv[1], "w").write(json.dumps(meta))
print(meta)
EOF

# build: sd15 now; sdxl in the background while the SD 1.5 sections run.
bstart=$(date +%s)
timeout --kill-after=10 $((40 * SCALE)) "$PY" bench/step.py --device "$DEVICE" --model "$SD15" --build-only \
    --json "$PARTS/build-sd15.json"
brc=$?
timeout --kill-after=10 $((200 * SCALE)) "$PY" bench/step.py --device "$DEVICE" --model "$SDXL" --build-only \
    --json "$PARTS/build-sdxl.json" >"$PARTS/build-sdxl.log" 2>&1 &
BG_PID=$!
record build "$([ $brc -eq 0 ] && echo ok || echo failed)" $(($(date +%s) - bstart)) "$brc" "sdxl-arch building in the background"

section sd15_eager 90 40 "${STEP[@]}" --model "$SD15" "${EAGER[@]}" --json "$PARTS/sd15_eager.json"
section sd15_compiled 130 60 "${STEP[@]}" --model "$SD15" "${COMPILED[@]}" --json "$PARTS/sd15_compiled.json"
wait "$BG_PID"
sdxl_rc=$?
BG_PID=
cat "$PARTS/build-sdxl.log"
record build "$([ $brc -eq 0 ] && [ $sdxl_rc -eq 0 ] && echo ok || echo failed)" $(($(date +%s) - bstart)) \
    "$sdxl_rc" "sdxl-arch build exit $sdxl_rc"
section sdxl_eager 85 45 "${STEP[@]}" --model "$SDXL" "${SDXL_STEPS[@]}" --json "$PARTS/sdxl_eager.json"
section preset_sd15_finetune 55 30 "$PY" bench/preset_memory.py "${PRESET_SD15[@]}" --method finetune "${PRESET[@]}" \
    --json "$PARTS/preset_sd15_finetune.json"
section preset_sdxl_lora 60 35 "$PY" bench/preset_memory.py "${PRESET_SDXL[@]}" --method lora "${PRESET[@]}" \
    --json "$PARTS/preset_sdxl_lora.json"
section sweep_lora_tpe 75 40 "$PY" bench/sweep_breakdown.py "${SWEEP[@]}" --json "$PARTS/sweep_lora_tpe.json"

echo
echo "== all results after $(elapsed) s"
"$PY" bench/gpu_report.py "$PARTS" "$RESULT" --table
echo "total $(elapsed) s"
