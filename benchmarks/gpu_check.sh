#!/usr/bin/env bash
# The GPU check, in parts that each end within 8 minutes on one H100 or H200 (nothing outside
# the machine reachable). From the repo root:
#
#   bash benchmarks/gpu_check.sh epochs small            # two parts, one after the other
#   bash benchmarks/gpu_check.sh                         # every part, in this order
#
# Parts (each writes ${OUT:-benchmarks}/results-cuda-<part>.json after every section, so a part
# stopped by its time limit keeps what it finished):
#   epochs      fp32, TF32 and bf16 epochs at GPT-2 small's and large's shapes against the card's
#               matmul limit of each precision, interleaved; where a step's time goes (profile)
#   small       the full GPT-2-small sweep (12 layers x 75 epochs) in fp32, TF32 and bf16; the
#               scaling table; one GPT-2-xl-shaped layer's time and memory
#   large-fast  the full GPT-2-large sweep (36 layers x 75 epochs) in TF32 and bf16
#   large-fp32  the same in fp32
#   science     bf16 against fp32 on every layer of the tiny-deep and GPT-2-small-shaped
#               profiles (benchmarks/science.py; its partial files resume a stopped part)
#
# Needs torch with CUDA, numpy, pyarrow and pydantic. A bare GPU image lacks pydantic: carry it
# as wheels in .whl/ (pydantic, pydantic-core, annotated-types, typing-inspection), installed
# here into /tmp/site. Without Prefect and TransformerLens the sweeps train on random activations
# of the same shapes (they cost the same) and the science part is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
all_parts=(epochs small large-fast large-fp32 science)
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=("${all_parts[@]}")
for part in "${parts[@]}"; do  # every name checked before anything runs
  if [[ " ${all_parts[*]} " != *" $part "* ]]; then
    echo "gpu_check: unknown part '$part'; the parts are: ${all_parts[*]}."
    exit 2
  fi
done
PY=${PYTHON:-python3}  # PYTHON=.venv/bin/python to use a virtual environment
PART_LIMIT_S=${PART_LIMIT_S:-480}
out=${OUT:-benchmarks}
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing the wheels in .whl/ failed (above)"; exit 2; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1

missing=$("$PY" - <<'EOF'
import importlib.util
names = ["torch", "numpy", "pyarrow", "pydantic"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing; carry them as wheels in .whl/ (see the" \
    "device notes) or install them, then rerun."
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: torch sees no CUDA device here; run it on a machine with a GPU."
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
has_laminar=$("$PY" -c "import prefect, transformer_lens" 2>/dev/null && echo 1 || echo 0)

bench() {  # bench PART ARGS...: one part of bench.py, under the part's time limit
  local part=$1
  shift
  echo "== part $part (at most ${PART_LIMIT_S} s)"
  timeout "$PART_LIMIT_S" "$PY" benchmarks/bench.py --device cuda --epochs 5 \
    --out "$out/results-cuda-$part.json" "$@"
  echo "== part $part: exit $?"
}

run_part() {
  case $1 in
    epochs) bench epochs --sections sae,bf16,profile ;;
    small) bench small --sweep --sweep-shapes gpt2-small --sections sweeps,scaling,xl ;;
    large-fast) bench large-fast --sweep --sweep-shapes gpt2-large \
      --sweep-precisions tf32,bf16 --sections sweeps ;;
    large-fp32) bench large-fp32 --sweep --sweep-shapes gpt2-large --sweep-precisions fp32 \
      --sections sweeps ;;
    science)
      if [ "$has_laminar" = 1 ]; then
        echo "== part science (at most ${PART_LIMIT_S} s)"
        timeout "$PART_LIMIT_S" "$PY" benchmarks/science.py --shapes tiny-deep,gpt2-small \
          --device cuda --out "$out/results-science-cuda.json"
        echo "== part science: exit $?"
      else
        echo "== part science skipped: needs prefect and transformer_lens"
      fi ;;
  esac
}

for part in "${parts[@]}"; do run_part "$part"; done
