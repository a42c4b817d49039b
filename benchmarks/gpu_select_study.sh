#!/usr/bin/env bash
# The selection study's candidates on one GPU, then their probe records (benchmarks/select_probes.py dump), in one go:
#   1. the shipped 99.31% teacher: configs/mnist/compare_steps.yaml with KegNet and DFAD, the baselines Uniform,
#      Gaussian, Strokes and no-generators, the paper's three students and LeNet-5-half, seeds $SEEDS;
#   2. beside it, a third teacher trained here (configs/mnist/teacher.yaml, --seed_everything 23, 4 epochs of 128,
#      best validation epoch) and the same candidates for seed 0;
#   3. the probe records of both runs (select_probes.py dump), for `select_probes.py report`.
# Everything printed and the records go to $OUT. TINY=1 shrinks every stage to a few steps (a check on the CPU).
#   OUT=runs/gpu_select bash benchmarks/gpu_select_study.sh
# One H200 ran it in 422 s (benchmarks/results/select_probes_study.txt). The held-out check that followed
# (benchmarks/results/select_probes_fourth_h200.txt) ran the same pipeline arguments on another teacher file with
# --teacher FILE --seeds [0] --jobs 16, then `select_probes.py dump` and `report` on its run folder.
set -uo pipefail
OUT=${OUT:-runs/gpu_select}
WORK=${WORK:-$(mktemp -d)}
SEEDS=${SEEDS:-"0,1,2"}
JOBS=${JOBS:-12}
LIMIT=${LIMIT:-400}      # seconds the two pipelines may take together
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUBLAS_WORKSPACE_CONFIG=:4096:8
START=$SECONDS
common=(--config configs/mnist/compare_steps.yaml --methods "[kegnet,dfad]"
        --baselines "[uniform,normal,strokes,no-generators]" --latency_threads 0 --threads 1)
teacher_extra=()
if [ -n "${TINY:-}" ]; then
  common+=(--generator_args+=--trainer.max_epochs=1 --generator_args+=--data.init_args.batches_per_epoch=2
           --student_args+=--trainer.max_epochs=1 --student_args+=--data.init_args.batches_per_epoch=2
           --method_args "{dfad: [--trainer.max_epochs=1, --data.init_args.batch_size=32, --data.init_args.batches_per_epoch=2]}"
           --students "[lenet5-paper-s1,lenet5-half]")
  teacher_extra=(--trainer.limit_train_batches 5 --trainer.limit_val_batches 2)
fi

timeout "$LIMIT" $PY -m kegnet_pl.pipeline "${common[@]}" --seeds "[$SEEDS]" --jobs "$JOBS" \
  --out "$WORK/shipped" > "$OUT/pipeline_shipped.log" 2>&1 &
shipped=$!

$PY -m kegnet_pl.cli fit --config configs/mnist/teacher.yaml --seed_everything 23 --trainer.max_epochs 4 \
  --data.init_args.batch_size 128 --trainer.default_root_dir "$WORK/third_teacher" --trainer.enable_progress_bar false \
  "${teacher_extra[@]}" > "$OUT/teacher_third.log" 2>&1
best=$(ls "$WORK"/third_teacher/checkpoints/epoch=*.ckpt 2>/dev/null | head -1)
echo "third teacher: $best after $((SECONDS - START)) s" | tee -a "$OUT/summary.txt"
if [ -n "$best" ]; then
  timeout $((LIMIT - (SECONDS - START))) $PY -m kegnet_pl.pipeline "${common[@]}" --teacher "$best" --seeds "[0]" \
    --jobs 4 --out "$WORK/third" > "$OUT/pipeline_third.log" 2>&1
fi
wait "$shipped"
pkill -f kegnet_pl.stage || true  # stages a time limit left behind
echo "pipelines done after $((SECONDS - START)) s" | tee -a "$OUT/summary.txt"
for run in shipped third; do
  [ -f "$WORK/$run/results.md" ] && cp "$WORK/$run/results.md" "$OUT/results_$run.md"
  (cd benchmarks && $PY select_probes.py dump --run "$WORK/$run" --seeds ${SEEDS//,/ } --students 1 2 3 4 \
    --out "$OUT/probes_$run.pt" --device "$DEVICE") 2>&1 | tee -a "$OUT/summary.txt"
done
(cd benchmarks && $PY select_probes.py report "$OUT"/probes_*.pt --drop dfad) > "$OUT/report.txt" 2>&1
echo "all done after $((SECONDS - START)) s" | tee -a "$OUT/summary.txt"
