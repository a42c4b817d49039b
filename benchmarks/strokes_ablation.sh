#!/usr/bin/env bash
# What KegNet's generators add to the pen-strokes recipe, over three seeds: each student distilled by the loop of
# benchmarks/recipe_mnist.py (750 steps of 256 fresh samples, Adam 1e-3 cosine, the last step kept, as
# configs/mnist/pipeline.yaml) from
#   strokes        pen strokes on blank paper only
#   noise+strokes  75% U(-1, 1) and 25% strokes: the recipe with the generators' share given to noise
#   kegnet+strokes 37.5% generators, 37.5% U(-1, 1), 25% strokes: the pipeline's KegNet recipe
#   real           the 55,000 real training images: the ceiling (scores only; nothing is chosen on it)
# Seed S uses the generators of seed S of a pipeline run (RUN/seedS/generator/checkpoints/last.ckpt).
#   bash benchmarks/strokes_ablation.sh [RUN] [OUT] [SEEDS] [STUDENTS]
#   bash benchmarks/strokes_ablation.sh runs/pipeline/mnist_strokes runs/strokes_ablation "0 1 2" \
#        "lenet5-paper-s1 lenet5-paper-s2 lenet5-paper-s3 lenet5-half"
# Runs JOBS (default 2) distillations side by side, one thread each; a finished run (a line in OUT/results.jsonl)
# is not run again. Prints a table of test accuracy (%) on the 10,000 real MNIST test images, mean ± std.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/pipeline/mnist_strokes}
OUT=${2:-runs/strokes_ablation}
SEEDS=${3:-"0 1 2"}
STUDENTS=${4:-"lenet5-paper-s1 lenet5-paper-s2 lenet5-paper-s3"}
JOBS=${JOBS:-2}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
touch "$OUT/results.jsonl"
for seed in $SEEDS; do
  if [ ! -f "$RUN/seed$seed/generator/checkpoints/last.ckpt" ]; then
    echo "no generators for seed $seed: $RUN/seed$seed/generator/checkpoints/last.ckpt is missing; run" \
         "kegnet-pipeline --config configs/mnist/pipeline.yaml --seeds [$seed] --out $RUN first" >&2
    exit 2
  fi
done
declare -A ARGS=(
  [strokes]="--source uniform --strokes 1"
  [noise+strokes]="--source uniform --strokes 0.25"
  [kegnet+strokes]="--source mix --noise-fraction 0.5 --strokes 0.25"
  [real]="--source real"
)
ROWS="strokes noise+strokes kegnet+strokes real"
for seed in $SEEDS; do for st in $STUDENTS; do for row in $ROWS; do
  tag="$row/$st/$seed"
  if grep -q "\"tag\": \"$tag\"" "$OUT/results.jsonl"; then continue; fi
  echo "$PY benchmarks/recipe_mnist.py distill ${ARGS[$row]} --gens $RUN/seed$seed/generator/checkpoints/last.ckpt" \
       "--student $st --steps 750 --seed $seed --threads 1 --tag $tag --out $OUT/results.jsonl" \
       "> $OUT/${tag//\//_}.log 2>&1"
done; done; done | xargs -P "$JOBS" -I{} bash -c {}
"$PY" - "$OUT/results.jsonl" "$ROWS" "$STUDENTS" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
names, students = sys.argv[2].split(), sys.argv[3].split()
print("| inputs | " + " | ".join(students) + " |")
print("|---" * (len(students) + 1) + "|")
for name in names:
    cells = []
    for st in students:
        acc = [100 * r["acc"] for r in rows if r["tag"].split("/")[:2] == [name, st]]
        if not acc:
            cells.append("-")
        elif len(acc) == 1:
            cells.append(f"{acc[0]:.2f}")
        else:
            cells.append(f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f} (n={len(acc)})")
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
