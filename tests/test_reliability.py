"""No lost runs: one run per workdir, a diverged lane that harms nothing else, resume without retraining, the
user's arm order, and prediction that says what it could not score or should not trust."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcell import config as config_lib
from jaxcell import predict as predict_lib
from jaxcell import study
from jaxcell.training import divergence
from jaxcell.workdir import lock


def _config(arms=None, **train):
  c = config_lib.base_config()
  c.data.synthetic.images_per_class = 12
  c.data.image_size = 32
  config_lib.shrink_for_smoke(c)
  c.protocol.num_folds = 2
  c.engine.compilation_cache = ""
  c.train.num_steps = 4
  for name, value in train.items():
    c.train[name] = value
  if arms:
    c.arms = arms
  return c


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


# --- one run per workdir --------------------------------------------------------------------------


def test_a_live_lock_refuses_a_second_run_and_names_the_holder(tmp_path):
  held = lock.acquire(str(tmp_path))
  record = json.load(open(held))
  assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
  with pytest.raises(lock.WorkdirLockedError, match=rf"in use by another jaxcell run \(pid {os.getpid()} on host"):
    lock.acquire(str(tmp_path))
  lock.release(held)
  assert not os.path.exists(held)


def test_a_stale_lock_from_a_killed_run_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()  # A pid that existed and is gone.
  path = tmp_path / "run.lock"
  path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
  assert str(lock.acquire(str(tmp_path))) == str(path)
  assert json.load(open(path))["pid"] == os.getpid()
  path.write_text("{half a lock")  # Its writer died mid-write.
  assert str(lock.acquire(str(tmp_path))) == str(path)


def test_a_lock_from_another_host_is_not_broken(tmp_path):
  (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "some-other-host", "started": "x"}))
  with pytest.raises(lock.WorkdirLockedError, match="some-other-host.*If that run is gone"):
    lock.acquire(str(tmp_path))


def test_a_study_refuses_a_workdir_held_by_a_live_run(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "run.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "x"}))
  with pytest.raises(lock.WorkdirLockedError, match="in use by another jaxcell run"):
    study.run_study(_config(), str(workdir))
  assert sorted(os.listdir(workdir)) == ["run.lock"]  # Nothing else written.


# --- divergence -----------------------------------------------------------------------------------


def test_divergence_reasons_cover_nan_inf_and_finite_explosions():
  losses = np.array([[1.0, 2.0, np.nan], [1.0, np.inf, 1.0], [1.0, 1e14, 1.0], [1.0, 1.5, np.nan]])
  why = divergence.reasons(losses, np.array([2, 3, 3, 3]), 100.0, np.array([10, 0, 0, 0]))
  assert why[0] is None  # Its NaN is past its budget (2 valid steps), not a divergence.
  assert why[1] == "training loss became inf at step 2"
  assert why[2] == "training loss 1e+14 at step 2 exceeds train.divergence_loss=100"
  assert why[3] == "training loss became nan at step 3"


@pytest.fixture(scope="module")
def diverged_study(tmp_path_factory):
  root = tmp_path_factory.mktemp("divergence")
  both = study.run_study(_config({"good": {}, "bad": {"train": {"learning_rate": 1e30}}}), str(root / "both"))
  alone = study.run_study(_config({"good": {}}), str(root / "alone"))
  return both, alone


def test_a_diverged_arm_is_recorded_and_the_other_arm_is_untouched(diverged_study):
  both, alone = diverged_study
  rows = _rows(os.path.join(both.workdir, "results.csv"))
  bad = [r for r in rows if r["arm"] == "bad"]
  assert bad and all(r["status"] == "diverged" and r["balanced_accuracy"] == "nan" for r in bad)
  good = [r for r in rows if r["arm"] == "good"]
  assert all(r["status"] == "ok" for r in good)
  assert good == _rows(os.path.join(alone.workdir, "results.csv"))  # Identical, lane by lane, metric by metric.
  for name in ("predictions_test.csv", "predictions_holdout.csv", "confusion_matrices.csv"):
    assert {r["arm"] for r in _rows(os.path.join(both.workdir, name))} == {"good"}
  engine = json.load(open(os.path.join(both.workdir, "engine.json")))
  assert set(engine["bad"]["diverged_lanes"]) == {str(r["lane"]) for r in bad}
  log = open(os.path.join(both.workdir, "log.txt")).read()
  assert "Lane bad/seed0/repeat0/fold0/nall diverged: training loss became nan" in log
  summary = open(os.path.join(both.workdir, "summary.md")).read()
  assert "Diverged models: 2 (bad lane 2, bad lane 3)" in summary
  assert "Diverged models: 2" in open(os.path.join(both.workdir, "report.html")).read()


def test_a_rerun_of_a_diverged_study_resumes_instead_of_failing(diverged_study):
  both, _ = diverged_study
  before = open(os.path.join(both.workdir, "results.csv")).read()
  study.run_study(both.config, both.workdir)
  assert open(os.path.join(both.workdir, "results.csv")).read() == before


# --- resume -------------------------------------------------------------------------------------


def test_a_run_killed_between_evaluations_does_not_retrain(tmp_path):
  workdir = str(tmp_path / "w")
  c = _config()
  study.run_study(c, workdir)
  full = open(os.path.join(workdir, "results.csv")).read()
  lines = full.splitlines(True)
  with open(os.path.join(workdir, "results.csv"), "w") as f:
    f.write("".join(lines[:3]))  # The header and lane 0's two rows: killed after evaluating lane 0.
  resumed = study.run_study(c, workdir)
  assert open(os.path.join(workdir, "results.csv")).read() == full
  assert resumed.engine_records["main"]["chunks"] == {"unmasked": 0, "masked": 0}  # From the checkpoint: no step ran.
  assert "Resuming 1 lanes from the checkpoint of lanes [0, 1]" in open(os.path.join(workdir, "log.txt")).read()


# --- arm order ----------------------------------------------------------------------------------


def test_arms_keep_the_order_the_config_gives(tmp_path):
  c = _config({"zeta": {}, "alpha": {"train": {"learning_rate": 3e-3}}})
  s = study.run_study(c, str(tmp_path / "w"))
  assert list(s.arms) == ["zeta", "alpha"]
  assert list(json.load(open(tmp_path / "w" / "study.json"))["arms"]) == ["zeta", "alpha"]
  assert json.load(open(tmp_path / "w" / "analysis.json"))["comparisons"]["baseline"] == "zeta"
  images = tmp_path / "new"
  images.mkdir()
  Image.fromarray(s.dataset.images[0]).save(images / "cell.png")
  assert predict_lib.predict_new_images(str(tmp_path / "w"), [str(images)])["arm"] == "zeta"  # The default.


# --- prediction -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  s = study.run_study(_config(), str(root / "w"))
  return s, str(root / "w")


def test_prediction_lists_unreadable_files_and_survives_a_dangling_link(finished, tmp_path):
  s, workdir = finished
  Image.fromarray(s.dataset.images[0]).save(tmp_path / "ok.png")
  (tmp_path / "bad.png").write_bytes(b"junk")
  os.symlink(tmp_path / "nowhere.png", tmp_path / "gone.png")
  out = tmp_path / "out.csv"
  assert predict_lib.main(["--workdir", workdir, "--images", str(tmp_path), "--out", str(out)]) == 0
  rows = {os.path.basename(r["path"]): r for r in _rows(out)}
  assert rows["ok.png"]["status"] == "scored"
  assert rows["bad.png"]["status"] == "skipped" and "cannot identify image file" in rows["bad.png"]["warning"]
  assert rows["gone.png"]["status"] == "skipped" and "cannot read the file" in rows["gone.png"]["warning"]


def test_images_unlike_the_training_images_are_flagged_and_sent_to_a_human(finished, tmp_path):
  s, workdir = finished
  Image.fromarray(s.dataset.images[0]).save(tmp_path / "alike.png")
  Image.fromarray(np.full((400, 400), 30000, np.uint16)).save(tmp_path / "unlike.png")  # 16-bit, grey, 400 px.
  result = predict_lib.predict_new_images(workdir, [str(tmp_path)], threshold=0.0)
  rows = {os.path.basename(r["path"]): r for r in result["rows"]}
  assert rows["alike.png"]["warning"] == "" and rows["alike.png"]["bucket"] == "high_confidence"
  warning = rows["unlike.png"]["warning"]
  assert "1 channels (training images: [3])" in warning and "16-bit" in warning and "400x400 px" in warning
  assert rows["unlike.png"]["bucket"] == "low_confidence" and result["unlike"] == 1


def test_an_unfinished_study_is_refused_unless_allowed(finished, tmp_path):
  s, workdir = finished
  Image.fromarray(s.dataset.images[0]).save(tmp_path / "cell.png")
  study_json = json.load(open(os.path.join(workdir, "study.json")))
  study_json["lanes"]["main"]["7"] = None  # One more planned lane than results.csv holds.
  try:
    original = open(os.path.join(workdir, "study.json")).read()
    json.dump(study_json, open(os.path.join(workdir, "study.json"), "w"))
    with pytest.raises(predict_lib.PredictError, match="unfinished: 2 of the 3 models of arm 'main'"):
      predict_lib.predict_new_images(workdir, [str(tmp_path / "cell.png")])
    result = predict_lib.predict_new_images(workdir, [str(tmp_path / "cell.png")], allow_unfinished=True)
    assert result["num_models"] == 2
  finally:
    open(os.path.join(workdir, "study.json"), "w").write(original)


# --- leakage ------------------------------------------------------------------------------------


def test_a_study_reports_byte_identical_images_before_training(tmp_path):
  root = tmp_path / "images"
  rng = np.random.default_rng(0)
  for name in ("a", "b", "c"):
    (root / name).mkdir(parents=True)
    for i in range(6):
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
  (root / "b" / "copy.png").write_bytes((root / "a" / "0.png").read_bytes())  # The same image in two classes.
  c = _config()
  c.data.source, c.data.root = "folder", str(root)
  workdir = tmp_path / "w"
  study.run_study(c, str(workdir))
  assert [(r["kind"], r["path"]) for r in _rows(workdir / "duplicates.csv")] == [
    ("across_classes", "a/0.png"),
    ("across_classes", "b/copy.png"),
  ]
  log = open(workdir / "log.txt").read()
  assert "Duplicate images (across_classes): the same image in classes a, b: a/0.png, b/copy.png" in log
  assert log.index("Duplicate images") < log.index("training")  # Reported before any training.
  assert "Byte-identical images: 1 groups (1 across classes)" in open(workdir / "summary.md").read()
