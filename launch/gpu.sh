#!/usr/bin/env bash
# A jaxcell study on one machine with one or more NVIDIA GPUs (CUDA 12/13 driver installed).
#
#   CONFIG=configs/demo.py WORKDIR=runs/demo bash launch/gpu.sh
#   CONFIG=configs/bionic.py:root=/data/cho WORKDIR=runs/cho DATA_PARALLEL=2 bash launch/gpu.sh --config.model.dtype=bfloat16
#
# Every GPU the machine has is used: the study's ('lanes', 'data') mesh spans them all, lanes (models) split over
# the 'lanes' axis and, with DATA_PARALLEL=k, each model's batch over k GPUs. Extra flags go to jaxcell.main.
#
# Variables [defaults]:
#   CONFIG, WORKDIR        the study [configs/demo.py, runs/demo]
#   VENV                   the virtual environment made (or reused) here [.venv-gpu]
#   JAX_SPEC               the jax wheel ['jax[cuda13]'; 'jax[cuda12]' for a CUDA 12 driver]
#   DATA_PARALLEL          GPUs sharing one model's batch; must divide the GPU count [1]
#   CUDA_VISIBLE_DEVICES   which GPUs (unset: all)
#   XLA_PYTHON_CLIENT_MEM_FRACTION
#                          the share of each GPU's memory JAX takes up front [0.75, JAX's default]; lower it when
#                          another process shares the GPU, raise it (0.9) for many lanes of a large model
#   COMPILATION_CACHE      persistent XLA compilation cache: re-runs and resumed studies skip most compilation
#                          [~/.cache/jaxcell/xla, also the config's engine.compilation_cache]; '' = off
set -euo pipefail
: "${CONFIG:=configs/demo.py}" "${WORKDIR:=runs/demo}" "${VENV:=.venv-gpu}" "${JAX_SPEC:=jax[cuda13]}"
: "${DATA_PARALLEL:=1}" "${COMPILATION_CACHE=~/.cache/jaxcell/xla}"  # Set but empty: off.
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null  # The venv made on the line itself.
python3 -m venv "$VENV" && . "$VENV/bin/activate"
pip install -q -U pip && pip install -q -e . "$JAX_SPEC"

python3 -c 'import jax; print("devices:", jax.devices())'
python3 -m jaxcell.main --config "$CONFIG" --workdir "$WORKDIR" \
  --config.engine.data_parallel="$DATA_PARALLEL" --config.engine.compilation_cache="$COMPILATION_CACHE" "$@"
