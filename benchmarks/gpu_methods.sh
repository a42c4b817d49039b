#!/usr/bin/env bash
# DFAD and DAFL on the full-MNIST teacher (checkpoints/mnist_lenet5.ckpt, 99.31%) -> lenet5-half, for several seeds
# side by side on one GPU: each run is `kegnet fit` of configs/mnist/{dfad,dafl}.yaml, stopped by its own protocol
# or by a wall-clock limit, then `kegnet test` of its last.ckpt on the 10,000 real MNIST test images.
#   bash benchmarks/gpu_methods.sh [EXTRA FIT OPTIONS...]
#   MAX_TIME=00:01:00:00 SEEDS="0 1 2" METHODS="dfad dafl" RUNS=runs/gpu bash benchmarks/gpu_methods.sh
#   KEGNET="python -m kegnet_pl.cli" bash benchmarks/gpu_methods.sh        # without the installed console script
# Run from anywhere with kegnet_pl installed and data/MNIST/raw present. Each run writes everything under
# $RUNS/<method>_s<seed>/ (fit.log, tensorboard/, checkpoints/last.ckpt, test.log, test.json, test/): each run's
# --trainer.default_root_dir, which every output of a run follows, so parallel runs never share a folder.
# Extra options go to every `kegnet fit` (a CPU check: --trainer.accelerator cpu --trainer.max_epochs 1
# --data.init_args.batches_per_epoch 2 --data.init_args.batch_size 16). Prints one line per run:
#   method seed test_acc wall_s epochs_done
# test_acc in %, wall_s the seconds `kegnet fit` took, epochs_done the epochs behind the tested last.ckpt
# (iterations done / batches_per_epoch: last.ckpt is saved at the end of each epoch, so a time limit that stops
# a run inside an epoch leaves the epochs before it).
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_TIME=${MAX_TIME:-00:00:07:30}
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"dfad dafl"}
RUNS=${RUNS:-runs/gpu}
TEACHER=${TEACHER:-checkpoints/mnist_lenet5.ckpt}
read -r -a KEGNET <<< "${KEGNET:-kegnet}"
PYTHON=${PYTHON:-python3}
[ -f "$TEACHER" ] || { echo "gpu_methods.sh: no teacher at $TEACHER; set TEACHER=path/to/teacher.ckpt" >&2; exit 2; }

run() {  # method seed: fit, then test; writes $dir/fit.log, $dir/wall_s, $dir/test.json
  local method=$1 seed=$2 dir=$RUNS/${1}_s$2
  rm -rf "$dir" && mkdir -p "$dir"
  local start=$SECONDS
  "${KEGNET[@]}" fit --config "configs/mnist/$method.yaml" --seed_everything "$seed" --data.init_args.seed "$seed" \
    --model.init_args.seed "$seed" --model.init_args.teacher "$TEACHER" --trainer.max_time "$MAX_TIME" \
    --trainer.default_root_dir "$dir" --trainer.enable_progress_bar false \
    "${@:3}" > "$dir/fit.log" 2>&1 || echo "fit failed: see $dir/fit.log" >&2
  echo $((SECONDS - start)) > "$dir/wall_s"
  [ -f "$dir/checkpoints/last.ckpt" ] || return 0
  "${KEGNET[@]}" test --config "configs/mnist/$method.yaml" --model.init_args.teacher "$TEACHER" \
    --ckpt_path "$dir/checkpoints/last.ckpt" --trainer.default_root_dir "$dir/test" --trainer.logger false \
    --trainer.callbacks "[{\"class_path\": \"kegnet_pl.callbacks.MetricsToJSON\", \"init_args\": {\"path\": \"$dir/test.json\"}}]" \
    --trainer.enable_progress_bar false > "$dir/test.log" 2>&1 || echo "test failed: see $dir/test.log" >&2
}

if [ -z "${SUMMARY_ONLY:-}" ]; then  # SUMMARY_ONLY=1: print the lines of the runs already in $RUNS, train nothing
  for method in $METHODS; do for seed in $SEEDS; do
    run "$method" "$seed" "$@" &
  done; done
  wait
fi

echo "method seed test_acc wall_s epochs_done"
for method in $METHODS; do for seed in $SEEDS; do
  "$PYTHON" - "$method" "$seed" "$RUNS/${method}_s$seed" <<'PY' || echo "$method $seed - - -"
import json, pathlib, sys

import torch
import yaml

method, seed, folder = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
wall = (folder / "wall_s").read_text().strip() if (folder / "wall_s").exists() else "-"
acc = epochs = "-"
if (folder / "test.json").exists():
    acc = f"{100 * json.loads((folder / 'test.json').read_text())['test/acc']:.2f}"
ckpt = folder / "checkpoints" / "last.ckpt"
if ckpt.exists():
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    batches = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    fits = [p for p in folder.rglob("config.yaml") if folder / "test" not in p.parents]  # the fit's, as run
    saved = max(fits, key=lambda p: p.stat().st_mtime)
    config = yaml.safe_load(saved.read_text())
    epochs = f"{batches / config['data']['init_args']['batches_per_epoch']:.2f}"
print(method, seed, acc, wall, epochs)
PY
done; done
