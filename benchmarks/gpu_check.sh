#!/usr/bin/env bash
# The prepared GPU check, for a lent GPU (nothing outside the machine reachable). From the repo
# root:  bash benchmarks/gpu_check.sh   (writes benchmarks/results-cuda.json and $OUT if set)
# Installs what it needs from the wheels in .whl/ when present, else uses the machine's own
# packages; then runs the whole benchmark on CUDA with the full-size sweeps: GPT-2 small and
# large shapes, all layers, 75 epochs, 10,240 tokens, at fp32, TF32 and bf16, against the FLOP
# floor measured on the card; fp32 against bf16 epochs interleaved with their own limits; where
# a step's time goes (profile). A bare GPU image has torch, numpy and pyarrow but not pydantic:
# carry pydantic, pydantic-core, annotated-types and typing-inspection as wheels in .whl/ (add
# prefect and transformer-lens with their dependencies to time laminar's own extraction too;
# without them the sweeps train on random activations of the same shapes, which cost the same,
# and the extraction section is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv
sections=sae,bf16,profile,parquet,scaling,xl,sweeps
python3 -c "import prefect, transformer_lens" 2>/dev/null && sections=$sections,extract
python3 benchmarks/bench.py --device cuda --sweep --epochs 5 --extract-seqs 10 \
  --sections "$sections" --out benchmarks/results-cuda.json
if [ -n "${OUT:-}" ]; then cp benchmarks/results-cuda.json "$OUT/"; fi
# bf16 against fp32 on every layer of the random-weight GPT-2-small-shaped model (#12's science
# comparison at N = 10,230), on the card: needs laminar's own imports (prefect, transformers)
if python3 -c "import prefect, transformers, scipy" 2>/dev/null; then
  python3 benchmarks/science.py --shapes tiny-deep,gpt2-small --device cuda \
    --out benchmarks/results-science-cuda.json
  if [ -n "${OUT:-}" ]; then
    cp benchmarks/results-science-cuda.json benchmarks/science-*-cuda.partial.json "$OUT/"
  fi
fi
