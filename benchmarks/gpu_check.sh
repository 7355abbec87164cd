#!/usr/bin/env bash
# The prepared pass on a GPU machine (the device tool's H200), in two stages that each fit one
# 10-minute command:
#   bench  correctness gate (eager, compiled and Triton LIF kernels vs the naive loop), the training
#          step at the issue's setting (ResNet-19, T=4, batch 128, bf16) against SpikingJelly 2.0's
#          Triton provider and the ReLU floor, then two whole epochs of 50,000 generated CIFAR images
#          through the Trainer (device-resident data), without and with CUDA graphs   (~5 min)
#   cifar  the real CIFAR-10 (the JPEG copy, ImageFolder with its workers), recipes/cifar10-jpg.toml
#          (ResNet-19, T=2, lambda 2, ESG): a one-epoch probe sizes the run, then as many epochs as
#          fit about 6 minutes with the cosine schedule set to that count; test accuracy, epoch time
#          and mean hidden-layer entropy per epoch                                      (~7.5 min)
# Usage there: bash benchmarks/gpu_check.sh OUTDIR [bench|cifar|all]   (default: all)
# Carry: .whl (wheels for what the image lacks) and .data (the JPEG copy); here, once:
#   echo /.data/ >> .git/info/exclude; mkdir -p .data; cp -r ../shared/data/cifar10-jpg .data/
# (56.9 MB of files: with the wheels, under the 64 MiB a call may carry).
set -u
out=${1:-/tmp/gpu_check}
stage=${2:-all}
jpg=${IMLOSS_CIFAR_JPG:-.data/cifar10-jpg}
budget_s=${IMLOSS_CIFAR_SECONDS:-360}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"

if [ "$stage" = bench ] || [ "$stage" = all ]; then
  echo "== bench: resnet19 T=4 batch 128 bf16, imloss (triton LIF) vs spikingjelly[triton] and the relu floor, + 2 epochs of 50,000 images"
  timeout 300 python3 -m imloss_cli.bench --arch resnet19 --timesteps 4 --batch 128 --device cuda --dtype bf16 \
    --compare 'spikingjelly[triton],relu' --memory-format channels_last,contiguous --repeats 5 \
    --epoch-images 50000 --json > "$out/bench_gpu.json" 2> "$out/bench_gpu.err"
  echo "bench exit $?"; tail -5 "$out/bench_gpu.err"
  python3 - "$out/bench_gpu.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("gate passed:", d.get("gate_passed"))
for c in d["gate"]:
    print(" ", c["name"], "T", c["timesteps"], "spike diffs", c["spike_mismatches"], "grad err", c["grad_err"])
for r in d["rows"]:
    print({k: r.get(k) for k in ("variant", "timesteps", "s_per_step", "images_per_s", "imloss_over_this", "step_mb", "warmup_s", "mfu")})
for e in d.get("epochs", []):
    print("epoch", e)
PY

  echo "== 2 epochs of 50,000 generated images with CUDA graphs"
  timeout 150 python3 - <<'PY' 2>&1 | tail -4
from imloss_cli.bench.epoch import time_epochs
for e in time_epochs("resnet19", 4, 128, "cuda", "bf16", 50_000, cuda_graphs=True):
    print("epoch (cuda graphs)", e)
PY
fi

if [ "$stage" = cifar ] || [ "$stage" = all ]; then
  if [ ! -d "$jpg/train" ]; then
    echo "cifar: $jpg/train not found: carry the JPEG copy as .data (see the head of this script)"; exit 1
  fi
  common=(--registry "$out/cifar.db" --set "data.root=$jpg" --set data.num_workers=12 --set train.checkpoint=false)
  echo "== cifar10-jpg: a one-epoch probe (its cosine over 1 epoch; it only sizes the run)"
  timeout 120 python3 -m imloss_cli train recipes/cifar10-jpg.toml --seed 0 "${common[@]}" \
    --set train.epochs=1 --set name=cifar10-jpg-probe 2>&1 | tail -4
  epochs=$(python3 - "$out/cifar.db" "$budget_s" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
row = db.execute("select e.value from epoch_metrics e join runs r on r.id = e.run_id where r.name = 'cifar10-jpg-probe' and e.name = 'epoch_seconds' order by r.created_at desc limit 1").fetchone()
print(max(1, int(float(sys.argv[2]) // row[0])) if row else 1)
PY
)
  echo "probe done; training $epochs epochs (cosine over $epochs) in about ${budget_s} s"
  timeout $((budget_s + 90)) python3 -m imloss_cli train recipes/cifar10-jpg.toml --seed 0 "${common[@]}" \
    --set "train.epochs=$epochs" 2>&1 | tail -6
  python3 - "$out/cifar.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
names = ("test_acc", "epoch_seconds", "train_seconds", "mean_entropy")
rows = db.execute(
    "select r.name, e.epoch, e.name, e.value from epoch_metrics e join runs r on r.id = e.run_id "
    f"where e.name in ({','.join('?' * len(names))}) order by r.created_at, e.epoch", names).fetchall()
table = {}
for run, epoch, name, value in rows:
    table.setdefault((run, epoch), {})[name] = value
print("run, epoch, test_acc, epoch_s, train_s, mean_entropy")
for (run, epoch), m in table.items():
    print(run, epoch, *(f"{m.get(n, float('nan')):.4f}" for n in names))
PY
fi
