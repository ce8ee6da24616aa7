#!/usr/bin/env bash
# The whole Cloud TPU round trip in one command (launch/tpu.sh has each step, its variables and --dry-run):
# create the TPU, set it up, run the study until it finishes (recreating it after preemptions), copy a local
# workdir back. The TPU is left in place: `launch/tpu.sh delete` when done.
#
#   PROJECT=my-project ZONE=us-central2-b ACCELERATOR=v4-8 CONFIG=configs/demo.py WORKDIR=runs/demo \
#     bash launch/cloud_tpu.sh
set -euo pipefail
here="$(dirname "$0")"
bash "$here/tpu.sh" "$@" create
bash "$here/tpu.sh" "$@" setup
bash "$here/tpu.sh" "$@" run-until-done
bash "$here/tpu.sh" "$@" copy-back
