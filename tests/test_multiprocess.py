"""Multi-host, proven locally: 2 CPU processes x 2 devices on 127.0.0.1 run one study together through
jax.distributed; a process killed mid-run stops the other with a clear message; re-running resumes from the
checkpoint, and the results equal a single process's. A CellNet pretraining run the same way equals one process too."""

import csv
import os
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A two-lane smoke study, checkpointed after every 2-step chunk so a kill lands after a checkpoint.
ARGS = [
  "--config",
  "configs/demo.py:smoke,single",
  "--config.train.num_steps=30",
  "--config.train.steps_per_chunk=2",
  "--config.output.checkpoint_every_chunks=1",
  "--config.engine.distributed_timeout=30",
]
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "nll")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(workdir, process_id=None, port=None, log=None, program="jaxcell.main", flags=ARGS):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  args = [sys.executable, "-m", program, *flags, "--workdir", str(workdir)]
  if process_id is not None:
    env.update(JAXCELL_COORDINATOR=f"127.0.0.1:{port}", JAXCELL_NUM_PROCESSES="2", JAXCELL_PROCESS_ID=str(process_id))
    args.append("--config.engine.distributed=True")
  return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def job(workdir, tmp_path, name):
  port = free_port()
  logs = [open(tmp_path / f"{name}.{i}.log", "w") for i in range(2)]
  return [start(workdir, i, port, logs[i]) for i in range(2)], logs


def finish(procs, logs, timeout=600):
  """The exit codes of a job's processes; on a timeout both are killed and the test fails with their logs' tails
  (a slow, shared CI machine then says where each process was)."""
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    codes = None
  for log in logs:
    log.close()
  tails = "\n".join(f"--- {log.name}:\n" + open(log.name).read()[-1500:] for log in logs)
  assert codes is not None, f"the job ran past {timeout} s\n{tails}"
  return codes, tails


def step_checkpoint_written(workdir) -> bool:
  """A committed step checkpoint (checkpoints/<group>/<step>/commit_success.txt), not just groups.json, which is
  written when the group starts."""
  return any(path.parent.name.isdigit() for path in workdir.glob("checkpoints/*/*/commit_success.txt"))


def rows(workdir):
  with open(os.path.join(workdir, "results.csv"), newline="") as f:
    return list(csv.DictReader(f))


def test_two_processes_survive_a_kill_resume_and_match_one_process(tmp_path):
  workdir = tmp_path / "job"
  # 1. Two processes; process 1 is killed once the first checkpoint is on disk.
  procs, logs = job(workdir, tmp_path, "first")
  deadline = time.time() + 400
  while not step_checkpoint_written(workdir):
    assert time.time() < deadline and all(p.poll() is None for p in procs), "no checkpoint was written"
    time.sleep(0.5)
  procs[1].kill()
  # The survivor stops instead of hanging, within the heartbeat timeout, in one of two ways (a race): its next
  # collective fails and jaxcell stops it with what to do (exit 3), or the distributed runtime's error poller
  # sees the dead task first and aborts the process with its own message (SIGABRT).
  code = procs[0].wait(timeout=120)
  for log in logs:
    log.close()
  survivor = (tmp_path / "first.0.log").read_text()
  if code == 3:
    assert "jaxcell: process 0 of 2 stops: the multi-process job failed" in survivor
    assert "Re-run the same command on every host" in survivor and "Traceback" not in survivor
  else:
    assert code == -6, survivor[-2000:]
    assert "This most likely indicates that another task died" in survivor

  # 2. The same command on both again: resumes from the checkpoint and finishes.
  codes, tails = finish(*job(workdir, tmp_path, "again"))
  assert codes == [0, 0], tails
  assert "lanes from checkpoint step" in (workdir / "log.txt").read_text()  # Mid-run, not from the start.
  assert (workdir / "log.process1.txt").exists()  # Process 1 logs apart; results and reports are process 0's.

  # 3. One process, same config: the same results (float tolerance: 4 devices split the lanes differently).
  with open(tmp_path / "single.log", "w") as log:
    assert start(tmp_path / "single", log=log).wait(timeout=600) == 0
  together, alone = rows(workdir), rows(tmp_path / "single")
  assert [(r["lane"], r["split"]) for r in together] == [(r["lane"], r["split"]) for r in alone]  # Once each.
  for a, b in zip(together, alone):
    for metric in METRICS:
      assert float(a[metric]) == pytest.approx(float(b[metric]), rel=1e-4, abs=1e-6), (a["lane"], a["split"], metric)


PRETRAIN = ["--config", "configs/cellnet.py:smoke"]


def start_pretrain(workdir, process_id=None, port=None, log=None):
  return start(workdir, process_id, port, log, program="jaxcell.pretrain", flags=PRETRAIN)


def test_two_processes_pretrain_like_one(tmp_path):
  """A small CellNet pretraining as 2 processes x 2 devices (one global batch over all 4) equals one process."""
  import json

  port = free_port()
  logs = [open(tmp_path / f"pretrain.{i}.log", "w") for i in range(2)]
  procs = [start_pretrain(tmp_path / "job", i, port, logs[i]) for i in range(2)]
  codes, tails = finish(procs, logs)
  assert codes == [0, 0], tails
  with open(tmp_path / "single.log", "w") as log:
    assert start_pretrain(tmp_path / "single", log=log).wait(timeout=600) == 0
  together = json.loads((tmp_path / "job" / "pretrain.json").read_text())
  alone = json.loads((tmp_path / "single" / "pretrain.json").read_text())
  assert together["devices"] == 4 and alone["devices"] == 2
  assert [e["step"] for e in together["loss"]] == [e["step"] for e in alone["loss"]]
  for a, b in zip(together["loss"], alone["loss"]):
    assert a["loss"] == pytest.approx(b["loss"], rel=2e-4, abs=2e-5)
  assert (tmp_path / "job" / "cellnet.npz").exists() and (tmp_path / "job" / "log.process1.txt").exists()
