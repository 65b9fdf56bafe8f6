#!/usr/bin/env bash
# The GPU measurements for issue 3, for the device tool (../shared/device/README.md).
#
# Prepare on the CPU machine first (both paths are git-ignored):
#   bash ../shared/device/wheels.sh
#   mkdir -p .devdata && cp ../shared/data/cifar10-jpeg.tar.xz .devdata/
# then run with carry [".whl", ".devdata"], in two calls of about 4 minutes
# each so that one failure leaves time to rerun:
#   bash benchmarks/gpu_check.sh bench cifar      # throughput table; 30-epoch CIFAR-10 run + cached re-run
#   bash benchmarks/gpu_check.sh jpeg1 jpeg2      # 30 epochs from scratch on the JPEG copy, seeds 1 and 2
#
# Steps:
#   bench   benchmarks/throughput.py at 224x224 (tutorial recipe vs the pipeline, evaluation, streaming)
#   profile benchmarks/profile_step.py: where a step's time goes (kernels, GPU busy share, TFLOP/s);
#           `profile_compile` also times the model under torch.compile
#   disk    the write rate the run folder's disk gives (2 GB, fsync'd), against what checkpoints need
#   stall   benchmarks/checkpoint_stall.py: train_run's "checkpoint writer" line over 5 epochs of 50,000
#           images, and what the old hand-over (state copied to the host on the training thread) cost
#   batches the pipeline's training step at batch 512 and 1024 (is the default of 256 leaving speed behind?)
#   cifar   the JPEG copy packed into the official cifar-10-python.tar.gz format (the machine has no
#           network), then `python flows/full_run.py --no-verify --weights none`: the complete default
#           30-epoch run, wall time measured from outside; then the same command again (cache hits)
#   jpegN   `--dataset imagefolder` on the JPEG copy with --weights none and seed N (accuracy)
# Logs and reports are packed into $OUT/gpu_check.tgz after every step (the
# device tool returns at most 8 files); summary.txt is printed last.
# A dry run of the mechanics on a CPU (minutes, numbers meaningless):
#   RUN_ARGS="--preset smoke --device cpu" BENCH_ARGS="--quick --device cpu" bash benchmarks/gpu_check.sh bench cifar
set -uo pipefail
RESULTS=${OUT:-/tmp/out}
WORK=$PWD/.gpuwork   # git-ignored; kept between calls while the machine stays warm
OUT=$WORK/logs       # every log and report; packed into $RESULTS after each step
rm -rf "$OUT" && mkdir -p "$OUT" "$RESULTS"
[ $# -gt 0 ] || set -- bench cifar jpeg1 jpeg2

if ! python3 -c "import prefect" 2>/dev/null && [ ! -d /tmp/site/prefect ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PREFECT_HOME=$WORK/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false
export ALEXNET_PIPELINE_RUNS_ROOT=$WORK/runs
[ -d "$WORK/cifar10-jpeg" ] || tar -xJf .devdata/cifar10-jpeg.tar.xz -C "$WORK" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# timed NAME COMMAND...: run, log to $OUT/NAME.log, one summary line with rc and wall seconds.
timed() {
  local name=$1 start rc
  shift
  start=$(now)
  timeout "${STEP_TIMEOUT:-300}" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: rc=$rc wall_s=$(since "$start") | $(grep -E '^best test accuracy' "$OUT/$name.log" | head -1)" \
    >> "$OUT/summary.txt"
  grep -ohE "checkpoint writer: .*" "$OUT/$name.log" | tail -1 | sed "s/^/  /" >> "$OUT/summary.txt"
  if [ $rc -ne 0 ]; then tail -25 "$OUT/$name.log" | sed "s/^/  | /" >> "$OUT/summary.txt"; fi
  pack
}

pack() { tar -czf "$RESULTS/gpu_check.tgz" -C "$OUT" . 2>/dev/null; cp "$OUT/summary.txt" "$RESULTS/" 2>/dev/null; }

keep_report() {  # keep_report NAME RUN_DIR
  mkdir -p "$OUT/$1" && cp "$2"/{accuracy.csv,accuracy.png,confusion.png,report.md} "$OUT/$1/" 2>/dev/null
}

for step in "$@"; do
  case $step in
    bench)
      timed throughput python3 benchmarks/throughput.py ${BENCH_ARGS:-}
      tail -1 "$OUT/throughput.log" > "$OUT/throughput.json"
      ;;
    profile|profile_compile)
      timed "$step" python3 benchmarks/profile_step.py $([ "$step" = profile_compile ] && echo --compile) \
        ${PROFILE_ARGS:-}
      grep -E "^pipeline step|^work:|^profiled" "$OUT/$step.log" | sed "s/^/  /" >> "$OUT/summary.txt"
      ;;
    disk)  # what the disk under the run folders gives to a 2 GB fsync'd write (the checkpoints need ~0.7 GB/epoch)
      mkdir -p "$WORK/runs"
      { dd if=/dev/zero of="$WORK/runs/ddtest" bs=16M count=${DISK_MB_16:-128} conv=fsync 2>&1 | tail -1; } \
        | sed "s/^/disk write: /" >> "$OUT/summary.txt"
      rm -f "$WORK/runs/ddtest"; df -h "$WORK" | tail -1 | sed "s/^/disk: /" >> "$OUT/summary.txt"
      ;;
    stall)
      timed checkpoint_stall python3 benchmarks/checkpoint_stall.py --epochs 5 --images 50000 ${STALL_ARGS:-}
      grep -E "^old hand-over|^train_run:" "$OUT/checkpoint_stall.log" | sed "s/^/  /" >> "$OUT/summary.txt"
      ;;
    batches)  # the pipeline's step at larger batches (the recipe's lr scales with the batch)
      for batch in 512 1024; do
        timed "throughput_batch$batch" python3 benchmarks/throughput.py --batch-size "$batch" --seed-steps 5 \
          --photo-stored-size 64 ${BENCH_ARGS:-}  # the 224x224 streamed row is the bench step's
        grep -E "^pipeline|^peak" "$OUT/throughput_batch$batch.log" | sed "s/^/batch $batch: /" >> "$OUT/summary.txt"
      done
      ;;
    cifar)
      [ -f "$WORK/cifar-data/cifar-10-python.tar.gz" ] ||
        python3 benchmarks/cifar_archive_from_folder.py "$WORK/cifar10-jpeg" "$WORK/cifar-data" > "$OUT/archive.log" 2>&1
      rm -rf "$WORK/runs/cifar"
      timed cifar_full_run python3 flows/full_run.py --data-dir "$WORK/cifar-data" --no-verify --weights none \
        --out "$WORK/runs/cifar" ${RUN_ARGS:-}
      keep_report cifar "$WORK/runs/cifar"
      timed cifar_rerun python3 flows/full_run.py --data-dir "$WORK/cifar-data" --no-verify --weights none \
        --out "$WORK/runs/cifar" ${RUN_ARGS:-}
      ;;
    jpeg*)
      seed=${step#jpeg}
      rm -rf "$WORK/runs/jpeg$seed"
      timed "jpeg_seed$seed" python3 flows/full_run.py --dataset imagefolder --data-dir "$WORK/cifar10-jpeg" \
        --weights none --seed "$seed" --cache-dir "$WORK/cache" --out "$WORK/runs/jpeg$seed" ${RUN_ARGS:-}
      keep_report "jpeg$seed" "$WORK/runs/jpeg$seed"
      ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done

echo "== $(cat "$OUT/gpu.txt")"
[ -f "$OUT/throughput.log" ] && grep -A9 "^device:" "$OUT/throughput.log"
for csv in "$OUT"/*/accuracy.csv; do
  [ -f "$csv" ] || continue
  python3 - "$csv" <<'PY'
import sys, pandas as pd
df = pd.read_csv(sys.argv[1]); b = df.loc[df.test_acc.idxmax()]
print(f"{sys.argv[1].split('/')[-2]}: best {b.test_acc*100:.2f}% (epoch {int(b.epoch)}), final "
      f"{df.test_acc.iloc[-1]*100:.2f}%, train {df.epoch_seconds.sum():.1f} s, mean {df.images_per_s.mean():,.0f} img/s")
PY
done
for report in "$OUT"/*/report.md; do
  [ -f "$report" ] && echo "$report:" && grep -A12 "^## Time per stage" "$report" | grep -E "^\||memory" | tr '\n' ' ' && echo
done
cat "$OUT/summary.txt"
pack
