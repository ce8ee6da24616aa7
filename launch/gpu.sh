#!/usr/bin/env bash
# Runs a jaxcell study on a local NVIDIA GPU machine (CUDA 12/13 driver installed).
#
#   CONFIG=configs/demo.py WORKDIR=runs/demo bash launch/gpu.sh
set -euo pipefail
: "${CONFIG:=configs/demo.py}" "${WORKDIR:=runs/demo}" "${VENV:=.venv-gpu}"
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null  # The venv made on the line itself.
python3 -m venv "$VENV" && . "$VENV/bin/activate"
pip install -q -U pip && pip install -q -e . 'jax[cuda13]'

python3 -c 'import jax; print("devices:", jax.devices())'
python3 -m jaxcell.main --config "$CONFIG" --workdir "$WORKDIR"
