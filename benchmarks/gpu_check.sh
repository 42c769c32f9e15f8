#!/usr/bin/env bash
# The prepared GPU check, for a lent GPU (nothing outside the machine reachable). From the repo
# root:  bash benchmarks/gpu_check.sh   (writes benchmarks/results-cuda.json and $OUT if set)
# Installs what it needs from the wheels in .whl/ when present (see the device notes), else from
# the machine's own packages; then runs the whole benchmark on CUDA with the full-size sweeps:
# GPT-2 small and large shapes, all layers, 75 epochs, 10,240 tokens, fp32 and TF32.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 benchmarks/bench.py --device cuda --sweep --epochs 5 --extract-seqs 10 \
  --out benchmarks/results-cuda.json
if [ -n "${OUT:-}" ]; then cp benchmarks/results-cuda.json "$OUT/"; fi
