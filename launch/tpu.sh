#!/usr/bin/env bash
# jaxcell on a Cloud TPU VM or multi-host slice, one step per command:
#
#   launch/tpu.sh [--dry-run] create | setup | run | logs | copy-back | delete | run-until-done | status
#
#   create          make the TPU (through a queued resource when QUEUED=1; spot capacity when SPOT=1)
#   setup           copy this checkout to every worker and install it there with jax[tpu] in a venv
#   run             start the study on every worker (in the background; one JAX job over all hosts of a slice)
#   logs            stream worker 0's log (the study's console; log.txt in the workdir has everything)
#   copy-back       copy a workdir that lives on worker 0's disk to LOCAL_RESULTS on this machine
#   delete          delete the TPU (and its queued resource)
#   run-until-done  run in the foreground; after a preemption recreate, set up and run again (the study resumes
#                   from its last checkpoint), at most RETRIES times
#   status          the TPU's state (READY, PREEMPTED, ...)
#
# --dry-run prints every gcloud command (shell-quoted) instead of running it.
#
# Variables (defaults in brackets):
#   PROJECT         Google Cloud project (required)
#   ZONE            zone with TPU quota, e.g. us-central2-b (v4), us-west4-a (v5e) (required)
#   TPU             TPU name [jaxcell]
#   ACCELERATOR     accelerator type: v4-8 (one host), v5litepod-8, v4-16 / v4-32 / v5litepod-16 (multi-host) [v4-8]
#   RUNTIME         TPU software version [tpu-ubuntu2204-base; v2-alpha-tpuv5-lite for v5litepod]
#   HOSTS           hosts of the slice [derived from ACCELERATOR]; >1 makes every host join one JAX job
#   SPOT            1 = spot (preemptible) capacity, much cheaper; pair it with run-until-done [0]
#   QUEUED          1 = create through a queued resource (waits for capacity instead of failing) [1]
#   PROGRAM         what every worker runs: jaxcell.main (a study) or jaxcell.pretrain (a CellNet, with
#                   CONFIG=configs/cellnet.py...) [jaxcell.main]
#   CONFIG          study (or pretraining) config [configs/demo.py]
#   WORKDIR         the study's workdir: a bucket (gs://my-bucket/runs/demo: every host writes there, and it
#                   survives preemption), a path every host sees (NFS), or for a single host a local path
#                   fetched with copy-back [runs/demo]
#   LOCAL_RESULTS   where copy-back puts a workdir [./runs/tpu-<TPU>]
#   JAX_SPEC        the jax wheel installed on the workers ['jax[tpu]']
#   RETRIES         recreations run-until-done tries after preemptions [5]
#   LOG             the study's console log on each worker, relative to its home [jaxcell-run.log]
set -euo pipefail

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY_RUN=1
  shift
fi
COMMAND="${1:-}"

: "${PROJECT:?set PROJECT (your Google Cloud project)}" "${ZONE:?set ZONE (a zone with TPU quota)}"
: "${TPU:=jaxcell}" "${ACCELERATOR:=v4-8}" "${SPOT:=0}" "${QUEUED:=1}"
: "${CONFIG:=configs/demo.py}" "${WORKDIR:=runs/demo}" "${LOCAL_RESULTS:=./runs/tpu-$TPU}" "${PROGRAM:=jaxcell.main}"
case "$PROGRAM" in
  jaxcell.main | jaxcell.pretrain) ;;
  *) echo "PROGRAM=$PROGRAM: use jaxcell.main (a study) or jaxcell.pretrain (a CellNet)." >&2; exit 2 ;;
esac
: "${JAX_SPEC:=jax[tpu]}" "${RETRIES:=5}" "${LOG:=jaxcell-run.log}"
case "$ACCELERATOR" in
  v5litepod-* | v6e-*) : "${RUNTIME:=v2-alpha-tpuv5-lite}" ;;
  *) : "${RUNTIME:=tpu-ubuntu2204-base}" ;;
esac

# Hosts of a slice: v4/v5p count TensorCores (2 per chip, 4 chips per host); v5e/v6e count chips (one host up to
# 8 chips, 4 chips per host beyond).
hosts_of() {
  local kind="${1%-*}" count="${1##*-}"
  case "$kind" in
    v4 | v5p) echo $(((count / 2 + 3) / 4)) ;;
    v5litepod | v6e) if [ "$count" -le 8 ]; then echo 1; else echo $((count / 4)); fi ;;
    *) echo 1 ;;
  esac
}
: "${HOSTS:=$(hosts_of "$ACCELERATOR")}"

quoted() {  # The words as one command line to paste into a shell: plain words bare, others in single quotes.
  local out=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

run() {  # Runs a command, or with --dry-run prints it.
  if [ "$DRY_RUN" = 1 ]; then
    quoted "$@"
  else
    "$@"
  fi
}

TPU_ARGS=(--zone "$ZONE" --project "$PROJECT")
SPOT_ARGS=()
if [ "$SPOT" = 1 ]; then SPOT_ARGS=(--spot); fi

create() {
  if [ "$QUEUED" = 1 ]; then
    run gcloud compute tpus queued-resources create "$TPU-qr" "${TPU_ARGS[@]}" --node-id "$TPU" \
      --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" "${SPOT_ARGS[@]}"
    wait_active
  else
    run gcloud compute tpus tpu-vm create "$TPU" "${TPU_ARGS[@]}" \
      --accelerator-type "$ACCELERATOR" --version "$RUNTIME" "${SPOT_ARGS[@]}"
  fi
}

wait_active() {  # A queued resource is granted when capacity frees up: wait for it (Ctrl-C is safe).
  local describe=(gcloud compute tpus queued-resources describe "$TPU-qr" "${TPU_ARGS[@]}" --format 'value(state.state)')
  if [ "$DRY_RUN" = 1 ]; then
    echo "until [ \"\$($(quoted "${describe[@]}"))\" = ACTIVE ]; do sleep 30; done"
    return 0
  fi
  local state
  until state="$("${describe[@]}")" && [ "$state" = ACTIVE ]; do
    echo "Queued resource $TPU-qr is ${state:-not visible yet}; waiting for capacity..." >&2
    if [ "$state" = FAILED ] || [ "$state" = SUSPENDED ]; then
      echo "It will not become active: delete it (launch/tpu.sh delete) and try another zone or SPOT=1." >&2
      return 1
    fi
    sleep 30
  done
}

setup() {
  # Ship this checkout (works without a git remote): every host gets its own copy and venv.
  run tar czf /tmp/jaxcell.tgz --exclude .git --exclude runs --exclude .venv -C "$(dirname "$0")/.." .
  run gcloud compute tpus tpu-vm scp /tmp/jaxcell.tgz "$TPU":~/jaxcell.tgz --worker=all "${TPU_ARGS[@]}"
  run gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${TPU_ARGS[@]}" --command \
    "set -e; mkdir -p ~/jaxcell && tar xzf ~/jaxcell.tgz -C ~/jaxcell && cd ~/jaxcell && python3 -m venv ~/venv \
&& . ~/venv/bin/activate && pip install -q -U pip && pip install -q -e . '$JAX_SPEC'"
}

study_command() {  # The command every worker runs; a multi-host slice joins one JAX job.
  local distributed=""
  if [ "$HOSTS" -gt 1 ]; then distributed=" --config.engine.distributed=True"; fi
  echo "cd ~/jaxcell && . ~/venv/bin/activate && python3 -m $PROGRAM --config $(printf %q "$CONFIG")" \
    "--workdir $(printf %q "$WORKDIR")$distributed"
}

start() {  # In the background, so that a dropped ssh connection does not stop the study.
  run gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${TPU_ARGS[@]}" --command \
    "nohup bash -c \"$(study_command)\" > $LOG 2>&1 < /dev/null &"
}

logs() {
  run gcloud compute tpus tpu-vm ssh "$TPU" --worker=0 "${TPU_ARGS[@]}" --command "tail -n +1 -f $LOG"
}

copy_back() {
  case "$WORKDIR" in
    gs://*) echo "WORKDIR $WORKDIR is a bucket: read it there (gcloud storage cp -r $WORKDIR .)." ;;
    *)
      run mkdir -p "$LOCAL_RESULTS"
      run gcloud compute tpus tpu-vm scp --recurse "$TPU:~/jaxcell/$WORKDIR" "$LOCAL_RESULTS" --worker=0 "${TPU_ARGS[@]}"
      ;;
  esac
}

delete() {
  if [ "$QUEUED" = 1 ]; then
    run gcloud compute tpus queued-resources delete "$TPU-qr" "${TPU_ARGS[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU" "${TPU_ARGS[@]}" --quiet
  fi
}

status() {
  run gcloud compute tpus tpu-vm describe "$TPU" "${TPU_ARGS[@]}" --format 'value(state)'
}

run_until_done() {
  local attempt=0
  while true; do
    if run gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${TPU_ARGS[@]}" --command "$(study_command)"; then
      echo "The study finished."
      return 0
    fi
    attempt=$((attempt + 1))
    local state
    state="$(status || true)"
    if [ "$DRY_RUN" = 1 ] || [ "$attempt" -gt "$RETRIES" ] || { [ "$state" != PREEMPTED ] && [ -n "$state" ]; }; then
      echo "The study stopped (TPU state: ${state:-unknown}; attempt $attempt of $RETRIES); not retrying." >&2
      return 1
    fi
    echo "Preempted (attempt $attempt of $RETRIES): recreating $TPU; the study resumes from its last checkpoint." >&2
    delete || true
    create
    setup
  done
}

echo "# $TPU: $ACCELERATOR ($HOSTS host(s)), runtime $RUNTIME, $([ "$SPOT" = 1 ] && echo spot || echo on-demand)" >&2
case "$COMMAND" in
  create) create ;;
  setup) setup ;;
  run) start ;;
  logs) logs ;;
  copy-back) copy_back ;;
  delete) delete ;;
  run-until-done) run_until_done ;;
  status) status ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
