#!/usr/bin/env bash
# Could the KegNet students' batch recipe have been chosen without data? configs/mnist/pipeline.yaml's shares
# (25% each generator samples, U(-1, 1) noise, pen strokes, adversary) were chosen, one change at a time, on test
# accuracy. This trains one student (default lenet5-paper-s3, where the recipes differ most) with each recipe the
# config went through, on one seed's generators, then lets `kegnet choose` (the pipeline's data-free score: agreement
# with the teacher on moved probes it is sure of) rank them, and prints the test accuracy beside each rank:
#   paper          generator samples only (the paper's recipe)
#   noise50        50% generators, 50% U(-1, 1) (the config before pen strokes)
#   strokes25      37.5% generators, 37.5% U(-1, 1), 25% strokes (before the adversary)
#   config         25% each generators, U(-1, 1), strokes, adversary (the config) and its four baselines
#   strokes50      25% generators, 50% strokes, 25% adversary (the noise's quarter given to strokes)
# Each recipe is a kegnet-pipeline run folder OUT/<recipe> sharing the generators of the first one (copied, so they
# are trained once; finished stages are skipped, so a rerun only does what is missing).
#   bash benchmarks/recipe_without_data.sh [OUT] [SEED] [STUDENT] [GENERATORS]
#   bash benchmarks/recipe_without_data.sh runs/recipe_choice 0 lenet5-paper-s3 runs/pipeline/mnist/seed0/generator
# GENERATORS (optional) is a finished generator stage folder of configs/mnist/pipeline.yaml with the same seed, to
# skip training them. Needs `make data` (the test images only score; nothing below reads them to choose).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipe_choice}
SEED=${2:-0}
STUDENT=${3:-lenet5-paper-s3}
GENERATORS=${4:-}
BIN=${BIN:-.venv/bin}
CONFIG=${CONFIG:-configs/mnist/pipeline.yaml}
declare -A SHARES=(
  [paper]="noise_fraction=0 strokes_fraction=0 adversary_fraction=0"
  [noise50]="noise_fraction=0.5 strokes_fraction=0 adversary_fraction=0"
  [strokes25]="noise_fraction=0.375 strokes_fraction=0.25 adversary_fraction=0"
  [config]=""
  [strokes50]="noise_fraction=0 strokes_fraction=0.5 adversary_fraction=0.25"
)
RECIPES="config paper noise50 strokes25 strokes50"
if [ -n "$GENERATORS" ] && [ ! -f "$GENERATORS/checkpoints/last.ckpt" ]; then
  echo "no finished generator stage at $GENERATORS ($GENERATORS/checkpoints/last.ckpt is missing); give a run's" \
       "seed<S>/generator folder, or leave the argument out to train them" >&2
  exit 2
fi
mkdir -p "$OUT"
first=""
for recipe in $RECIPES; do
  run="$OUT/$recipe"
  source=${first:-$GENERATORS}
  if [ -n "$source" ] && [ ! -e "$run/seed$SEED/generator" ]; then
    mkdir -p "$run/seed$SEED"
    cp -r "$source" "$run/seed$SEED/generator"
  fi
  args=()
  for share in ${SHARES[$recipe]}; do args+=("--student_args+=--model.$share"); done
  baselines="[]"
  if [ "$recipe" = config ]; then baselines="[uniform,normal,strokes,no-generators]"; fi
  echo "== $recipe: $BIN/kegnet-pipeline --config $CONFIG --students [$STUDENT] --baselines $baselines --seeds [$SEED]" \
       "--latency_threads 0 --jobs ${JOBS:-2} --out $run ${args[*]}"
  "$BIN/kegnet-pipeline" --config "$CONFIG" --students "[$STUDENT]" --baselines "$baselines" --seeds "[$SEED]" \
    --latency_threads 0 --jobs "${JOBS:-2}" --out "$run" "${args[@]}" > "$run.log" 2>&1
  first=${first:-$run/seed$SEED/generator}
done
checkpoints=()
for recipe in $RECIPES; do
  for stage in "$OUT/$recipe/seed$SEED"/student1-*/; do
    case "$stage" in *-tucker/) continue ;; esac
    checkpoints+=("${stage}checkpoints/last.ckpt")
  done
done
"$BIN/kegnet" choose "${checkpoints[@]}" --generators "$first/checkpoints/last.ckpt" --seed "$SEED" | tee "$OUT/choose.txt"
"$BIN/python" - "$OUT/choose.txt" <<'PY'
import json, sys
from pathlib import Path

rows = [line.lstrip("* ").split() for line in open(sys.argv[1]) if line.lstrip("* ").startswith("agreement")]
print("\n| data-free rank | recipe / stage | agreement on the probes | test accuracy (scores only) |\n|---|---|---|---|")
for rank, (_, agreement, _, _, path) in enumerate(rows, 1):
    stage = Path(path).parents[1]
    metrics = json.loads((stage / "metrics.json").read_text())
    name = f"{stage.parents[1].name} / {stage.name.removeprefix('student1-')}"
    print(f"| {rank} | {name} | {agreement} | {100 * metrics['test/acc']:.2f} |")
PY
