#!/usr/bin/env bash
# KegNet students against the noise baselines at the shipped configs' budget, on the shipped MNIST-subset teacher:
# the generators of configs/mnist_subset/generator.yaml (5 x 1,000 steps; trained once, seed 0), then each
# student trained 8 epochs x 500 steps from a pool of 5 x 6,400 samples, for every student seed.
#   bash benchmarks/student_baselines.sh [OUT] [SEEDS] [STUDENTS]
# Prints one line per run, then a table of test accuracy (%) on the subset's 1,000 held-out images.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/student_baselines}
SEEDS=${2:-"0 1 2"}
STUDENTS=${3:-"lenet5-s1 lenet5-s2 lenet5-s3"}
BIN=${BIN:-.venv/bin}
G=runs/mnist_subset/generator/checkpoints/last.ckpt
if [ ! -f "$G" ]; then
  "$BIN/kegnet" fit --config configs/mnist_subset/generator.yaml --trainer.enable_progress_bar false
fi
mkdir -p "$OUT"
: > "$OUT/summary.txt"
for seed in $SEEDS; do for st in $STUDENTS; do for src in kegnet normal uniform; do
  d=$OUT/$seed-$st-$src
  common=(--config configs/mnist_subset/student.yaml --model.seed "$seed" --data.seed "$seed" --model.generators "$G"
          --model.student "$st" --model.source "$src")
  if [ ! -f "$d/checkpoints/last.ckpt" ]; then
    "$BIN/kegnet" fit "${common[@]}" --seed_everything "$seed" --trainer.max_epochs 8 \
      --trainer.default_root_dir "$d" --trainer.enable_progress_bar false > "$d.log" 2>&1
  fi
  acc=$("$BIN/kegnet" test "${common[@]}" --ckpt_path "$d/checkpoints/last.ckpt" --trainer.logger false \
        --trainer.default_root_dir "$d" 2>/dev/null | awk '/test\/acc/ {print $NF; exit}')
  echo "$seed $st $src $acc" | tee -a "$OUT/summary.txt"
done; done; done
python3 - "$OUT/summary.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
students = sorted({r[1] for r in rows})
print("\n| source | " + " | ".join(students) + " |\n|---" * 1 + "|---" * len(students) + "|")
for src in ("uniform", "normal", "kegnet"):
    cells = []
    for st in students:
        acc = [100 * float(r[3]) for r in rows if r[1] == st and r[2] == src]
        cells.append(f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else f"{acc[0]:.2f}")
    print(f"| {src} | " + " | ".join(cells) + " |")
PY
