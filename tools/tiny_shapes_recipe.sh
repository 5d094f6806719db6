#!/usr/bin/env bash
# The tiny_shapes recipe, end to end: world → pretrain → judge. What `model=tiny_shapes` ships came from
#   tools/tiny_shapes_recipe.sh OUT gpu       (one H100: ~8 minutes)
#   tools/tiny_shapes_recipe.sh OUT cpu       (2 CPU cores: ~35 minutes by its time limits; not yet run end to end)
# then `python -m sdexp.world.ship OUT/pt/model` copies the model into the package.
set -uo pipefail
OUT=${1:?usage: tiny_shapes_recipe.sh OUT [gpu|cpu] [extra pretrain overrides...]}
BUDGET=${2:-cpu}
shift 2 || shift $#
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-$(nproc)}
N=${N:-60000}
mkdir -p "$OUT"
[ -f "$OUT/world/world.json" ] || $PY -m sdexp.cli world shapes "$OUT/world" --n "$N" --seed 0 --workers "$WORKERS" || exit 2
[ -f "$OUT/heldout/world.json" ] || $PY -m sdexp.cli world shapes "$OUT/heldout" --n 1000 --seed 1 --split heldout --workers "$WORKERS" || exit 2
$PY -m sdexp.cli pretrain data.dir="$OUT/world" budget="$BUDGET" data.workers="$WORKERS" "$@" --out "$OUT/pt" 2>&1 | tee "$OUT/pretrain.log"
status=${PIPESTATUS[0]}
[ "$status" = 0 ] || exit "$status"
$PY -m sdexp.cli world eval "$OUT/pt/model" --heldout "$OUT/heldout" --prompts 200 --guidance 2 4 6 \
    --json "$OUT/eval.json" --grid "$OUT/grid.png"
