#!/usr/bin/env bash
# One prepared pass on a GPU machine (the device tool's H200): correctness gate and training-step
# benchmark against SpikingJelly at the issue's setting, then `imloss train` on CUDA end to end.
# Usage there: bash benchmarks/gpu_check.sh OUTDIR   (wheels for what the image lacks in .whl/)
set -u
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"

echo "== bench: resnet19 T=4 batch 128 bf16"
timeout 330 python3 -m imloss_cli.bench --arch resnet19 --timesteps 4 --batch 128 --device cuda --dtype bf16 \
  --compare spikingjelly,relu --memory-format channels_last,contiguous --repeats 5 --json > "$out/bench_gpu.json" 2> "$out/bench_gpu.err"
echo "bench exit $?"; tail -5 "$out/bench_gpu.err"
python3 - "$out/bench_gpu.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("gate passed:", d.get("gate_passed"))
for r in d["rows"]:
    print({k: r.get(k) for k in ("variant", "memory_format", "timesteps", "s_per_step", "images_per_s", "peak_mb", "step_mb", "warmup_s", "mfu")})
PY

echo "== imloss train on CUDA: digits (compile, bf16, channels_last)"
timeout 150 python3 -m imloss_cli train recipes/digits.toml --seed 0 --registry "$out/gpu.db" 2>&1 | tail -9

echo "== imloss train on CUDA: resnet19 T=4 on generated CIFAR-10 files, 40 steps of 128"
python3 - <<'PY'
import pickle, numpy as np, pathlib
root = pathlib.Path("/tmp/fakecifar/cifar-10-batches-py"); root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(1, 6):
    (root / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (1024, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 1024).tolist()}))
(root / "test_batch").write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (1024, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 1024).tolist()}))
(root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
PY
timeout 200 python3 -m imloss_cli train recipes/cifar10.toml --seed 0 --registry "$out/gpu.db" \
  --set data.root=/tmp/fakecifar --set data.download=false --set model.timesteps=4 --set train.epochs=2 \
  --set train.max_steps_per_epoch=40 --set data.num_workers=8 2>&1 | tail -6
python3 - "$out/gpu.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for row in db.execute("select r.name, e.epoch, e.name, e.value from epoch_metrics e join runs r on r.id = e.run_id where e.name in ('train_seconds','epoch_seconds','test_acc','mean_entropy') order by r.created_at, e.epoch"):
    print(row)
PY
