#!/usr/bin/env bash
# The whole pipeline, stage by stage; every stage skips work whose outputs are complete, so a
# killed run is resumed by running the same command again.
#
#   bash run_all.sh                          # competition data under input/ if present, else the demo
#   bash run_all.sh --recipes effv2s_768,convnext_768 --blend blend_768   # explicit recipes
#   bash run_all.sh --from 04 | --only 02 | --force | key=value ...       # resume, one stage, redo, override
#   bash run_all.sh --compare lt_demo        # method table: recipes of experiments/lt_demo.txt (or a,b,c)
#   bash run_all.sh --compare sl_demo        # the single-label benchmark's 15 methods on its synthetic demo
#   bash run_all.sh --compare more_data_demo # after a plain run: external set, pseudo-labels, distillation
#   bash run_all.sh --upload submit.phase=ID # also send the submission to the leaderboard (docs/leaderboard.md)
#
# Stages: 00 demo data, 01 image cache, 02 folds, 03 train, 04 predict, 05 blend, 06 thresholds,
# 07 submission; with --compare: 01-04 per recipe, then 08 the comparison table. Training and
# prediction go through `accelerate launch` when a GPU or an accelerate config is present.
set -euo pipefail
cd "$(dirname "$0")"
export NO_ALBUMENTATIONS_UPDATE=1
PY=${PYTHON:-python}
RECIPES="" BLEND="" FROM=00 ONLY="" FORCE="" OVERRIDES=() COMPARE="" CNAME="" UPLOAD=""
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --recipes) RECIPES=$2; shift 2 ;;
    --blend) BLEND=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --force) FORCE=--force; shift ;;
    --upload) UPLOAD=--upload; shift ;;
    --compare) COMPARE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *=*) OVERRIDES+=("$1"); shift ;;
    *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for s in "$FROM" ${ONLY:+"$ONLY"}; do
  case "$s" in 0[0-8]) ;; *) echo "run_all.sh: stages are 00..08, not '$s'" >&2; exit 2 ;; esac
done
if [ -n "$COMPARE" ]; then  # a list file experiments/<name>.txt (one recipe a line) or a comma-separated list
  if [ -f "experiments/$COMPARE.txt" ]; then
    CNAME=$COMPARE RECIPES=$(grep -v '^\s*\(#\|$\)' "experiments/$COMPARE.txt" | paste -sd, -)
  else
    RECIPES=$COMPARE
  fi
  BLEND=""
  echo "comparison of $RECIPES"
fi
want() { if [ -n "$ONLY" ]; then [ "$1" = "$ONLY" ]; else [ "$1" \> "$FROM" ] || [ "$1" = "$FROM" ]; fi; }

# Which data: the first competition release found under input/, else the synthetic demo.
DEMO=0 DEMO_SL=0 DEMO_EXTRA=0 BLENDS=""
if [ -z "$RECIPES" ]; then
  preset=""
  for pair in cxr-lt-2023:cxr-lt-2023/train.csv cxr-lt-2024-task1:cxr-lt-2024/train_labeled.csv \
              cxr-lt-2026:cxr-lt-2026/CXRLT_2026_training.csv; do
    [ -f "input/${pair#*:}" ] && { preset=${pair%%:*}; break; }
  done
  if [ -n "$preset" ]; then
    RECIPES=effv2s_768,convnext_768 BLEND=${BLEND:-blend_768}
    printf '%s\n' "${OVERRIDES[@]:-}" | grep -q '^data.preset=' || OVERRIDES+=("data.preset=$preset")
    echo "competition data found (input/, preset $preset): recipes $RECIPES, blend $BLEND"
  else
    RECIPES=demo,demo_effnet BLEND=${BLEND:-demo_blend}
    echo "no competition data under input/ (see input/README.md): running the synthetic demo"
  fi
fi
IFS=, read -r -a RLIST <<< "$RECIPES"
for r in "${RLIST[@]}"; do  # stage 00 is needed when a recipe uses the demo preset
  [ -f "experiments/$r.yaml" ] || { echo "run_all.sh: no recipe experiments/$r.yaml" >&2; exit 2; }
  read -r p x b < <(PYTHONPATH=src $PY -c "
import sys
from cxrlt.config import load_config
from cxrlt.errors import CxrltError
try:
    c = load_config(sys.argv[1], sys.argv[2:])
    print(c.data.preset, int(any(e['dir'] == 'demo_extra' for e in c.data.extra)), int(bool(c.blend.members)))
except CxrltError as e:
    print(f'error: {e}', file=sys.stderr); print('error 0 0')" "experiments/$r.yaml" "${OVERRIDES[@]}")
  [ "$p" = error ] && exit 2
  [ "$p" = demo ] && DEMO=1
  [ "$p" = demo-single-label ] && DEMO_SL=1
  [ "$x" = 1 ] && DEMO_EXTRA=1
  [ "$b" = 1 ] && BLENDS="$BLENDS $r"   # a blend in a comparison: stage 05 instead of 01-04
done
if [ -n "${LAUNCH:-}" ]; then :
elif $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
     || [ -f "${HF_HOME:-$HOME/.cache/huggingface}/accelerate/default_config.yaml" ]; then
  LAUNCH="$PY -m accelerate.commands.launch"
else
  LAUNCH=$PY   # one CPU process: no launcher needed
fi
t0=$(date +%s)
stage() { echo; echo "== $1 ($(( $(date +%s) - t0 )) s)"; }
run() { "$@" "${OVERRIDES[@]}"; }

# DEMO_ARGS: options of src/00_make_demo_data.py, e.g. "--n-train 1000" for a smaller demo
if want 00 && [ "$DEMO" = 1 ]; then stage "00 demo data"; $PY src/00_make_demo_data.py ${DEMO_ARGS:-} $FORCE; fi
if want 00 && [ "$DEMO_SL" = 1 ]; then stage "00 single-label demo data"; $PY src/00_make_demo_data.py --single-label ${DEMO_SL_ARGS:-} $FORCE; fi
if want 00 && [ "$DEMO_EXTRA" = 1 ]; then stage "00 demo external set"; $PY src/00_make_demo_data.py --extra $FORCE; fi
for r in "${RLIST[@]}"; do
  cfg=experiments/$r.yaml
  if [ -n "$COMPARE" ] && [[ " $BLENDS " == *" $r "* ]]; then   # a blend row (e.g. a teacher): its members are trained
    if want 05; then stage "05 blend [$r]"; run $PY src/05_blend.py --config "$cfg" $FORCE; fi
    continue
  fi
  if want 01; then stage "01 image cache [$r]"; run $PY src/01_prepare_images.py --config "$cfg" $FORCE; fi
  if want 02; then stage "02 folds [$r]"; run $PY src/02_make_folds.py --config "$cfg" $FORCE; fi
  if want 03; then stage "03 train [$r]"; run $LAUNCH src/03_train.py --config "$cfg" $FORCE; fi
  if want 04; then stage "04 predict [$r]"; run $LAUNCH src/04_predict.py --config "$cfg" $FORCE; fi
done
if [ -n "$COMPARE" ]; then
  if want 08; then stage "08 compare"; run $PY src/08_compare.py --recipes "$RECIPES" ${CNAME:+--name "$CNAME"}; fi
  echo "total $(( $(date +%s) - t0 )) s"
  exit 0
fi
FINAL=${BLEND:-${RLIST[0]}}
if [ -n "$BLEND" ] && want 05; then
  stage "05 blend [$BLEND]"; run $PY src/05_blend.py --config "experiments/$BLEND.yaml" $FORCE "blend.members=[$RECIPES]"
fi
if want 06; then stage "06 thresholds [$FINAL]"; run $PY src/06_thresholds.py --config "experiments/$FINAL.yaml" $FORCE; fi
if want 07; then stage "07 submission [$FINAL]"; run $PY src/07_make_submission.py --config "experiments/$FINAL.yaml" $UPLOAD; fi
stage "summary"
PYTHONPATH=src $PY -m cxrlt.ensemble.summary --recipes "$RECIPES" --final "$FINAL"
echo "total $(( $(date +%s) - t0 )) s"
