#!/usr/bin/env bash
# Runs the pipeline stage by stage. Each stage skips work whose outputs are complete.
#   bash run_all.sh                      # demo data (generated if absent) through every stage
#   bash run_all.sh --config experiments/x.yaml [--from 01] [--only 02] [--force] [key=value ...]
set -euo pipefail
cd "$(dirname "$0")"
export NO_ALBUMENTATIONS_UPDATE=1
PY=${PYTHON:-python}
CONFIG=experiments/demo.yaml FROM=00 ONLY= FORCE= OVERRIDES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --force) FORCE=--force; shift ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *=*) OVERRIDES+=("$1"); shift ;;
    *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
want() { if [ -n "$ONLY" ]; then [ "$1" = "$ONLY" ]; else [ "$1" \> "$FROM" ] || [ "$1" = "$FROM" ]; fi; }

if want 00; then
  if grep -qE '^\s*preset:\s*demo\s*$' "$CONFIG"; then
    echo "== 00 demo data (recipe uses the synthetic demo)"
    $PY src/00_make_demo_data.py $FORCE
  else
    echo "== 00 skipped: $CONFIG uses competition data from input/"
  fi
fi
if want 01; then echo "== 01 image cache"; $PY src/01_prepare_images.py --config "$CONFIG" $FORCE "${OVERRIDES[@]}"; fi
if want 02; then echo "== 02 folds"; $PY src/02_make_folds.py --config "$CONFIG" $FORCE "${OVERRIDES[@]}"; fi
# Training goes through accelerate, so `accelerate config` (GPUs, nodes, precision) is respected.
if want 03; then echo "== 03 train"; $PY -m accelerate.commands.launch src/03_train.py --config "$CONFIG" $FORCE "${OVERRIDES[@]}"; fi
if want 04; then echo "== 04 predict"; $PY -m accelerate.commands.launch src/04_predict.py --config "$CONFIG" $FORCE "${OVERRIDES[@]}"; fi
if want 06; then echo "== 06 thresholds"; $PY src/06_thresholds.py --config "$CONFIG" $FORCE "${OVERRIDES[@]}"; fi
if want 07; then echo "== 07 submission"; $PY src/07_make_submission.py --config "$CONFIG" "${OVERRIDES[@]}"; fi
