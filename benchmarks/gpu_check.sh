#!/usr/bin/env bash
# The GPU measurements for issue 3, as one script for the device tool
# (../shared/device/README.md). Prepare on the CPU machine first:
#   bash ../shared/device/wheels.sh
#   mkdir -p .devdata && cp ../shared/data/cifar10-jpeg.tar.xz .devdata/ && echo '/.devdata/' >> .git/info/exclude
# then run it with carry [".whl", ".devdata"]:
#   bash benchmarks/gpu_check.sh            (writes logs and reports under $OUT)
# Steps, each logged: throughput benchmark; a complete 30-epoch run of the
# default recipe from scratch on the JPEG copy of CIFAR-10 for seeds 0 and 1
# (wall time, accuracy); the same command again (must be all cache hits).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PREFECT_HOME=/tmp/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false
tar -xJf .devdata/cifar10-jpeg.tar.xz -C /tmp || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1

python3 benchmarks/throughput.py > "$OUT/throughput.log" 2>&1
tail -1 "$OUT/throughput.log" > "$OUT/throughput.json"

for seed in 0 1; do
  start=$(date +%s.%N)
  python3 flows/full_run.py --dataset imagefolder --data-dir /tmp/cifar10-jpeg --weights none --seed $seed \
    --cache-dir /tmp/cache --out /tmp/runs/seed$seed > "$OUT/full_run_seed$seed.log" 2>&1
  echo "seed $seed rc=$? wall_s=$(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT/summary.txt"
  mkdir -p "$OUT/seed$seed" && cp /tmp/runs/seed$seed/{accuracy.csv,accuracy.png,confusion.png,report.md} "$OUT/seed$seed/" 2>/dev/null
done
start=$(date +%s.%N)
python3 flows/full_run.py --dataset imagefolder --data-dir /tmp/cifar10-jpeg --weights none --seed 0 \
  --cache-dir /tmp/cache --out /tmp/runs/seed0 > "$OUT/rerun_seed0.log" 2>&1
echo "rerun seed 0 rc=$? wall_s=$(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT/summary.txt"

cat "$OUT/gpu.txt"; grep -A8 "^device:" "$OUT/throughput.log"
for seed in 0 1; do python3 - "$OUT/seed$seed/accuracy.csv" <<'PY'
import sys, pandas as pd
df = pd.read_csv(sys.argv[1]); b = df.loc[df.test_acc.idxmax()]
print(f"{sys.argv[1]}: best {b.test_acc*100:.2f}% (epoch {int(b.epoch)}), final {df.test_acc.iloc[-1]*100:.2f}%, "
      f"train {df.epoch_seconds.sum():.1f} s, mean {df.images_per_s.mean():,.0f} img/s")
PY
done
cat "$OUT/summary.txt"
