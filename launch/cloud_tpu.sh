#!/usr/bin/env bash
# Runs a jaxcell study on a Cloud TPU VM (every host of a pod slice runs the same command).
#
#   PROJECT=my-project ZONE=us-central2-b TPU=jaxcell-v4 ACCELERATOR=v4-8 \
#     CONFIG=configs/demo.py WORKDIR=gs://my-bucket/runs/demo bash launch/cloud_tpu.sh
#
# Needs the gcloud CLI, logged in, with TPU quota in ZONE. The VM is left running: delete it with
#   gcloud compute tpus tpu-vm delete "$TPU" --zone "$ZONE" --project "$PROJECT"
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${TPU:=jaxcell}" "${ACCELERATOR:=v4-8}"
: "${RUNTIME:=tpu-ubuntu2204-base}" "${CONFIG:=configs/demo.py}" "${WORKDIR:=runs/demo}"
: "${DISTRIBUTED:=0}"  # 1 for multi-host slices (v4-16 and larger): every host joins one JAX job.

if ! gcloud compute tpus tpu-vm describe "$TPU" --zone "$ZONE" --project "$PROJECT" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU" --zone "$ZONE" --project "$PROJECT" \
    --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
fi

# Ship this checkout (works without a remote); each host gets its own copy.
tar czf /tmp/jaxcell.tgz --exclude .git --exclude runs --exclude .venv .
gcloud compute tpus tpu-vm scp /tmp/jaxcell.tgz "$TPU":~/jaxcell.tgz --worker=all --zone "$ZONE" --project "$PROJECT"

gcloud compute tpus tpu-vm ssh "$TPU" --worker=all --zone "$ZONE" --project "$PROJECT" --command "
  set -e
  mkdir -p ~/jaxcell && tar xzf ~/jaxcell.tgz -C ~/jaxcell && cd ~/jaxcell
  python3 -m venv ~/venv && . ~/venv/bin/activate
  pip install -q -U pip && pip install -q -e . 'jax[tpu]'
  JAXCELL_DISTRIBUTED=$DISTRIBUTED python3 -m jaxcell.main --config '$CONFIG' --workdir '$WORKDIR'
"
