#!/usr/bin/env bash
# The study benchmark on an NVIDIA GPU: jaxcell in bfloat16 (MFU against the chip's nominal peak) beside the
# PyTorch reference on the same GPU, under bfloat16 autocast.
#
#   bash launch/bench_gpu.sh                                   # a venv with jaxcell, jax[cuda13] and torch
#   SYSTEM_PYTHON=1 bash launch/bench_gpu.sh                   # an image that already has jax (CUDA), flax,
#                                                              #   optax, torch, scikit-image: no download
#   OUT=gpu.json bash launch/bench_gpu.sh --sizes 64 --modes full --strategy vmap   # flags go to the benchmark
#
# With SYSTEM_PYTHON=1 jaxcell runs from this checkout and only ml-collections must be importable besides
# (`pip install --no-index ml_collections-*.whl` offline): the benchmark needs neither TensorFlow nor orbax.
# Results are rewritten to $OUT after every case, so a run cut short keeps the cases it finished.
set -euo pipefail
: "${OUT:=bench_gpu.json}" "${VENV:=.venv-gpu}" "${SYSTEM_PYTHON:=0}"
cd "$(dirname "$0")/.."
if [ "$SYSTEM_PYTHON" = 1 ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  # shellcheck source=/dev/null  # The venv made on the line itself.
  python3 -m venv "$VENV" && . "$VENV/bin/activate"
  pip install -q -U pip && pip install -q -e '.[torch]' 'jax[cuda13]'
fi
python3 -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__, "cuda:", torch.cuda.is_available())'
PYTHONUNBUFFERED=1 python3 -m jaxcell.bench --dtype bfloat16 --out "$OUT" "$@"
