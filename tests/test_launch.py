"""launch/: the Cloud TPU script's dry runs (the exact gcloud commands) and shellcheck on every script."""

import glob
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_SH = os.path.join(REPO, "launch", "tpu.sh")


def dry_run(command, **env):
  variables = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PROJECT": "proj", "ZONE": "zone-a"}
  variables.update(env)
  proc = subprocess.run(
    ["bash", TPU_SH, "--dry-run", command], capture_output=True, text=True, env=variables, timeout=60
  )
  return proc


def test_a_single_host_slice_runs_one_job_without_the_distributed_flag():
  create = dry_run("create", ACCELERATOR="v4-8")
  assert create.returncode == 0, create.stderr
  first, wait = create.stdout.splitlines()
  assert first == (
    "gcloud compute tpus queued-resources create jaxcell-qr --zone zone-a --project proj --node-id jaxcell "
    "--accelerator-type v4-8 --runtime-version tpu-ubuntu2204-base"
  )
  assert wait == (  # A queued resource is granted later: setup waits until it is.
    'until [ "$(gcloud compute tpus queued-resources describe jaxcell-qr --zone zone-a --project proj --format '
    "'value(state.state)')\" = ACTIVE ]; do sleep 30; done"
  )
  assert "v4-8 (1 host(s))" in create.stderr
  run = dry_run("run", ACCELERATOR="v4-8", CONFIG="configs/bionic.py:root=/data/cho", WORKDIR="runs/cho")
  assert run.stdout.startswith("gcloud compute tpus tpu-vm ssh jaxcell --worker=all --zone zone-a --project proj ")
  assert "python3 -m jaxcell.main --config configs/bionic.py:root=/data/cho --workdir runs/cho" in run.stdout
  assert "distributed" not in run.stdout and "> jaxcell-run.log" in run.stdout
  pretrain = dry_run("run", PROGRAM="jaxcell.pretrain", CONFIG="configs/cellnet.py", WORKDIR="gs://b/cellnet")
  assert "python3 -m jaxcell.pretrain --config configs/cellnet.py --workdir gs://b/cellnet" in pretrain.stdout
  refused = dry_run("run", PROGRAM="rm")
  assert refused.returncode == 2 and "use jaxcell.main" in refused.stderr
  logs = dry_run("logs")
  assert logs.stdout.strip() == (
    "gcloud compute tpus tpu-vm ssh jaxcell --worker=0 --zone zone-a --project proj --command 'tail -n +1 -f "
    "jaxcell-run.log'"
  )
  back = dry_run("copy-back", WORKDIR="runs/cho", LOCAL_RESULTS="out")
  assert back.stdout.splitlines() == [
    "mkdir -p out",
    "gcloud compute tpus tpu-vm scp --recurse jaxcell:~/jaxcell/runs/cho out --worker=0 --zone zone-a --project proj",
  ]
  assert "a bucket" in dry_run("copy-back", WORKDIR="gs://b/runs/x").stdout
  delete = dry_run("delete")
  assert delete.stdout.strip() == (
    "gcloud compute tpus queued-resources delete jaxcell-qr --zone zone-a --project proj --force --quiet"
  )


@pytest.mark.parametrize("accelerator, hosts", [("v4-16", 2), ("v4-32", 4), ("v5litepod-16", 4), ("v5p-64", 8)])
def test_a_multi_host_slice_joins_one_jax_job_on_every_worker(accelerator, hosts):
  run = dry_run("run", ACCELERATOR=accelerator, SPOT="1")
  assert f"{accelerator} ({hosts} host(s))" in run.stderr and "spot" in run.stderr
  assert "--worker=all" in run.stdout and run.stdout.count("--config.engine.distributed=True") == 1
  create = dry_run("create", ACCELERATOR=accelerator, SPOT="1", QUEUED="0")
  assert create.stdout.startswith(
    f"gcloud compute tpus tpu-vm create jaxcell --zone zone-a --project proj --accelerator-type {accelerator}"
  )
  assert create.stdout.strip().endswith("--spot")
  if accelerator.startswith("v5litepod"):
    assert "--version v2-alpha-tpuv5-lite" in create.stdout


def test_setup_ships_the_checkout_and_installs_jax_tpu_on_every_worker():
  out = dry_run("setup").stdout.splitlines()
  assert out[0].startswith("tar czf /tmp/jaxcell.tgz --exclude .git --exclude runs --exclude .venv -C ")
  assert (
    out[1]
    == "gcloud compute tpus tpu-vm scp /tmp/jaxcell.tgz jaxcell:~/jaxcell.tgz --worker=all --zone zone-a --project proj"
  )
  assert "--worker=all" in out[2] and "pip install -q -e . '\\''jax[tpu]'\\''" in out[2]


def test_bad_use_is_refused_with_a_message():
  missing = subprocess.run(
    ["bash", TPU_SH, "--dry-run", "create"], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}
  )
  assert missing.returncode != 0 and "set PROJECT" in missing.stderr
  unknown = dry_run("launch")
  assert unknown.returncode == 2 and "create          make the TPU" in unknown.stderr


def test_run_until_done_runs_in_the_foreground():
  out = dry_run("run-until-done", ACCELERATOR="v4-16").stdout.splitlines()
  assert out[0].startswith("gcloud compute tpus tpu-vm ssh jaxcell --worker=all") and "nohup" not in out[0]
  assert "--config.engine.distributed=True" in out[0] and out[-1] == "The study finished."


def test_every_launch_script_is_shellcheck_clean():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (apt-get install shellcheck; CI installs it)")
  scripts = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")))
  proc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout
