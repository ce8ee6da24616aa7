"""End to end: a tiny study writes every promised output, resumes, and refuses bad input clearly."""

import csv
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcell import config as config_lib
from jaxcell import study
from jaxcell.workdir import results as results_table
from jaxcell.training import lanes as lanes_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke_config():
  c = config_lib.base_config()
  config_lib.shrink_for_smoke(c)
  c.data.synthetic.images_per_class = 12
  c.train.num_steps = 2
  c.train.batch_size = 4
  c.train.frozen = "^(conv1|bn1)"
  c.protocol.n_per_class = (3, None)  # two training-set sizes: a learning curve
  return c


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("study"))
  s = study.run_study(_smoke_config(), workdir)
  return s, workdir


def test_every_output_is_written(finished):
  s, workdir = finished
  for name in (
    "config.json",
    "results.csv",
    "summary.md",
    "boxplot.png",
    "predictions_holdout.csv",
    "predictions_test.csv",
    "confusion_matrices.csv",
    "splits.csv",
    "skipped_files.csv",
    "log.txt",
  ):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert glob.glob(os.path.join(workdir, "checkpoints", f"lanes_0000-{len(s.lanes) - 1:04d}_{len(s.lanes)}", "2"))
  assert glob.glob(os.path.join(workdir, "checkpoints", "frozen_main", "0"))  # the frozen stem, saved once
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == 2


def test_results_have_a_row_per_model_and_split(finished):
  s, workdir = finished
  rows = results_table.read_rows(os.path.join(workdir, "results.csv"))
  assert len(s.lanes) == 4 and len(rows) == 2 * len(s.lanes)
  assert {(r["lane"], r["split"]) for r in rows} == {(l.index, sp) for l in s.lanes for sp in ("test", "holdout")}
  for r in rows:
    assert 0.0 <= r["balanced_accuracy"] <= 1.0
    assert {"seed", "repeat", "fold", "accuracy", "macro_f1", "roc_auc_ovr", "bionic_weighted_accuracy"} <= set(r)


def test_learning_curve_over_training_set_sizes(finished):
  _, workdir = finished
  table = _read_csv(os.path.join(workdir, "learning_curve.csv"))
  sizes = {(r["metric"], r["split"]): set() for r in table}
  for r in table:
    sizes[(r["metric"], r["split"])].add(r["n_per_class"])
  assert sizes[("balanced_accuracy", "holdout")] == {"3", "all"}
  assert os.path.getsize(os.path.join(workdir, "learning_curve_balanced_accuracy.png")) > 0


def test_small_training_sets_are_subsets_of_their_fold(finished):
  s, workdir = finished
  small = [l for l in s.lanes if l.n_per_class == 3]
  assert len(small) == 2
  for lane in small:
    train, _ = lanes_lib.lane_indices(lane, s.splits, s.dataset.labels)
    full, _ = lanes_lib.lane_indices(dataclasses.replace(lane, n_per_class=None), s.splits, s.dataset.labels)
    assert set(train) <= set(full)
    assert np.bincount(s.dataset.labels[train]).tolist() == [3] * s.dataset.num_classes


def test_holdout_predictions_cover_every_holdout_image_per_model(finished):
  s, workdir = finished
  rows = _read_csv(os.path.join(workdir, "predictions_holdout.csv"))
  assert len(rows) == len(s.splits.holdout) * len(s.lanes)
  names = s.dataset.class_names
  for r in rows[:5]:
    probs = np.array([float(r[f"p_{n}"]) for n in names])
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert r["prediction"] == names[int(probs.argmax())]
    assert r["target"] in names and r["path"]


def test_summary_reports_intervals(finished):
  _, workdir = finished
  text = open(os.path.join(workdir, "summary.md")).read()
  assert "balanced_accuracy" in text and "95% CI" in text and "holdout" in text
  assert "### main — holdout" in text and "| true \\ predicted |" in text


def test_confusion_matrices_match_the_predictions(finished):
  s, workdir = finished
  counts = _read_csv(os.path.join(workdir, "confusion_matrices.csv"))
  preds = _read_csv(os.path.join(workdir, "predictions_holdout.csv"))
  for lane in s.lanes:
    cells = {
      (r["target"], r["prediction"]): int(r["count"])
      for r in counts
      if int(r["lane"]) == lane.index and r["split"] == "holdout"
    }
    assert len(cells) == s.dataset.num_classes**2
    for (target, prediction), n in cells.items():
      assert n == sum(
        1 for p in preds if int(p["lane"]) == lane.index and p["target"] == target and p["prediction"] == prediction
      )


def test_rerun_resumes_without_duplicating(finished):
  s, workdir = finished
  before = open(os.path.join(workdir, "results.csv")).read()
  study.run_study(_smoke_config(), workdir)
  assert open(os.path.join(workdir, "results.csv")).read() == before
  assert len(_read_csv(os.path.join(workdir, "predictions_holdout.csv"))) == len(s.splits.holdout) * len(s.lanes)


def test_a_bucket_workdir_holds_every_output_and_matches_a_local_one(finished, tmp_path, monkeypatch):
  """--workdir gs://...: every output lands in the bucket (none in a local 'gs:' folder), the results equal the
  local run's, a re-run resumes from the bucket, and prediction and the Python API read the study from it."""
  from bucket_helpers import fake_bucket

  from jaxcell import api, predict

  s, local = finished
  monkeypatch.chdir(tmp_path)
  workdir = "gs://lab/runs/smoke"
  with fake_bucket(tmp_path / "bucket") as bucket:
    study.run_study(_smoke_config(), workdir)
    stored = tmp_path / "bucket" / "lab" / "runs" / "smoke"
    for name in ("config.json", "results.csv", "summary.md", "report.html", "boxplot.png", "log.txt", "splits.csv"):
      assert (stored / name).stat().st_size > 0, name
    assert glob.glob(str(stored / "tensorboard" / "events.out.tfevents.*"))
    assert glob.glob(str(stored / "checkpoints" / f"lanes_0000-{len(s.lanes) - 1:04d}_{len(s.lanes)}" / "2"))
    assert "Done in" in (stored / "log.txt").read_text()  # The log's last lines were copied at the end.
    assert not [path for path, mode in bucket.opened if "a" in mode]
    local_rows = results_table.read_rows(os.path.join(local, "results.csv"))
    bucket_rows = results_table.read_rows(f"{workdir}/results.csv")
    assert len(bucket_rows) == len(local_rows)
    for got, want in zip(bucket_rows, local_rows):
      numbers = [k for k, v in want.items() if isinstance(v, float)]
      assert {k: got[k] for k in want if k not in numbers} == {k: want[k] for k in want if k not in numbers}
      assert [got[k] for k in numbers] == pytest.approx([want[k] for k in numbers], abs=1e-6, nan_ok=True)

    before = (stored / "results.csv").read_text()
    study.run_study(_smoke_config(), workdir)  # Resumes from the bucket: nothing is trained or written twice.
    assert (stored / "results.csv").read_text() == before

    image = tmp_path / "new.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    assert predict.main(["--workdir", workdir, "--images", str(image)]) == 0
    assert [r["path"] for r in _read_csv(stored / "predictions_new.csv")] == [str(image)]
    loaded = api.load_study(workdir)
    assert len(loaded.results) == len(local_rows) and loaded.class_names == list(s.dataset.class_names)
  assert not os.path.exists(tmp_path / "gs:")


def test_a_different_config_in_the_same_workdir_is_refused(finished):
  _, workdir = finished
  c = _smoke_config()
  c.train.learning_rate = 0.5
  with pytest.raises(ValueError, match="different config"):
    study.run_study(c, workdir)


def test_folder_study_reports_unreadable_files(tmp_path):
  root = tmp_path / "images"
  rng = np.random.default_rng(0)
  for cls in ("alpha", "beta"):
    (root / cls).mkdir(parents=True)
    for i in range(10):
      Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
  (root / "beta" / "broken.png").write_bytes(b"not a png")
  c = _smoke_config()
  c.data.source, c.data.root = "folder", str(root)
  workdir = tmp_path / "run"
  study.run_study(c, str(workdir))
  skipped = _read_csv(workdir / "skipped_files.csv")
  assert [r["path"] for r in skipped] == [os.path.join("beta", "broken.png")]
  assert "1 files skipped" in open(workdir / "summary.md").read()


def test_cli_runs_and_reports_bad_config_without_traceback(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "jaxcell.main",
    "--config",
    os.path.join(REPO, "configs", "demo.py") + ":smoke",
    "--workdir",
    str(tmp_path / "bad"),
    "--config.train.optimizer=rmsprop",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode != 0
  assert "train.optimizer='rmsprop'" in proc.stderr and "Traceback" not in proc.stderr
  # Fields that default to None take a value on the command line too (typed placeholders), and are checked.
  cmd[-1] = "--config.train.num_steps=0"
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "train.num_steps=0; use an integer >= 1 or None" in proc.stderr


def test_only_the_primary_process_writes_files(tmp_path, monkeypatch):
  """In a multi-host job, processes other than 0 train alongside but write no results, reports or logs."""
  monkeypatch.setattr(study, "primary", lambda: False)
  c = _smoke_config()
  c.protocol.n_per_class = (None,)
  workdir = str(tmp_path / "secondary")
  s = study.run_study(c, workdir)
  assert len(s.lanes) == 2
  written = set(os.listdir(workdir))
  for name in ("results.csv", "summary.md", "config.json", "splits.csv", "study.json", "engine.json", "log.txt"):
    assert name not in written, name
  assert "checkpoints" in written  # orbax checkpoints are written by every process together.
  assert glob.glob(os.path.join(workdir, "log.process*.txt"))


def test_a_given_test_folder_drives_ensembles_triage_and_calibration(tmp_path):
  """root/{train,test}/<class>: every model is scored on the same test images, which then serve as the shared
  evaluation set, as a global holdout does, under their own name."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 6), ("test", 4)):
    for k, cls in enumerate(("alpha", "beta")):
      (tmp_path / "data" / split / cls).mkdir(parents=True)
      for i in range(count):
        image = np.clip(rng.normal(60 + 120 * k, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "data" / split / cls / f"{i}.png")
  c = _smoke_config()
  c.data.source, c.data.root, c.protocol.n_per_class = "folder", str(tmp_path / "data"), (None,)
  c.protocol.num_repeats = 2
  study.run_study(c, str(tmp_path / "w"))
  analysis = json.load(open(tmp_path / "w" / "analysis.json"))
  assert analysis["evaluation_set"] == {"split": "test", "name": "given test set (test/)"}
  assert [e["num_images"] for e in analysis["ensembles"]] == [8] and analysis["ensembles"][0]["num_models"] == 2
  assert analysis["triage"]["main"]["at_thresholds"][0]["num_images"] == 8
  assert "ece" in analysis["calibration"]["main"]
  skipped = {s["section"]: s["reason"] for s in analysis["skipped"]}
  assert "ensembles" not in skipped and "triage" not in skipped
  assert "apart from the evaluation set" in skipped["temperature scaling of main"]  # No leak into the fit.
  with open(tmp_path / "w" / "triage.csv", newline="") as f:
    assert sorted({row["path"] for row in csv.DictReader(f)}) == sorted(
      f"test/{cls}/{i}.png" for cls in ("alpha", "beta") for i in range(4)
    )
  assert "Evaluated on the given test set (test/)" in (tmp_path / "w" / "report.html").read_text()


def test_cv_folds_are_not_mistaken_for_a_shared_test_set(finished):
  _, workdir = finished
  from jaxcell.reporting import analysis_files
  from jaxcell.workdir import predictions

  analysis = json.load(open(os.path.join(workdir, "analysis.json")))
  assert analysis["evaluation_set"]["split"] == "holdout"
  assert not analysis_files.shared_test_set(predictions.read_stacks(os.path.join(workdir, "predictions_test.csv")))


def test_the_summary_says_where_the_time_and_the_disk_went(tmp_path):
  workdir = str(tmp_path / "w")  # Its own study: the module's is re-run (resumed) by other tests.
  c = _smoke_config()
  c.protocol.n_per_class = (None,)
  study.run_study(c, workdir)
  summary = open(os.path.join(workdir, "summary.md")).read()
  assert "Where the time went (" in summary and "train " in summary.split("Where the time went")[1].splitlines()[0]
  line = next(line for line in summary.splitlines() if "Workdir size:" in line)
  assert "checkpoints " in line and "cache " in line
  engine = json.load(open(os.path.join(workdir, "engine.json")))
  stages = engine["_stage_seconds"]
  assert {"train", "evaluate", "reports", "total"} <= set(stages) and stages["total"] >= stages["train"] > 0


def test_finished_checkpoints_keep_only_what_prediction_and_resume_need(finished, tmp_path):
  from jaxcell.training import checkpoints

  _, workdir = finished
  groups = [d for d in glob.glob(os.path.join(workdir, "checkpoints", "lanes_*")) if os.path.isdir(d)]
  assert groups
  for group in groups:
    saved = checkpoints.Checkpointer(group).restore_raw()
    assert saved["opt_state"] is None, "a finished lane needs no optimiser state"
    assert saved["params"] and saved["step"].ndim == 1
  # Evaluation lost after training (results gone): the re-run restores the finished lanes and does not train.
  copy = str(tmp_path / "copy")
  import shutil

  shutil.copytree(workdir, copy)
  for name in ("results.csv", "predictions_test.csv", "predictions_holdout.csv", "confusion_matrices.csv"):
    os.remove(os.path.join(copy, name))
  study.run_study(_smoke_config(), copy)
  assert open(os.path.join(copy, "results.csv")).read() == open(os.path.join(workdir, "results.csv")).read()
  assert "Resuming" in open(os.path.join(copy, "log.txt")).read()


def test_the_last_shorter_chunk_logs_its_losses_at_their_own_steps(tmp_path):
  c = _smoke_config()
  c.protocol.n_per_class = (None,)
  c.train.num_steps, c.train.steps_per_chunk, c.output.log_every_steps = 5, 4, 1  # chunks of 4 steps, then 1
  workdir = str(tmp_path / "w")
  study.run_study(c, workdir)
  logged = [line for line in open(os.path.join(workdir, "log.txt")) if "train_loss/lane_0000=" in line]
  assert sorted(int(line.split("[")[-1].split("]")[0]) for line in logged) == [1, 2, 3, 4, 5]
  engine = json.load(open(os.path.join(workdir, "engine.json")))
  assert engine["main"]["chunks"] == {"unmasked": 2, "masked": 0}, "one program, last shorter chunk included"


def _logged_losses(workdir):
  """{(lane, step): loss} as log.txt has them."""
  found = re.findall(r"\[(\d+)\] train_loss/lane_(\d+)=(\S+)", open(os.path.join(workdir, "log.txt")).read())
  return {(int(lane), int(step)): float(value) for step, lane, value in found}


@pytest.mark.parametrize("num_steps, kept", [(2, False), (12, True)])
def test_an_autotuned_study_gives_the_results_of_its_strategy_fixed(tmp_path, num_steps, kept):
  # Autotune trains the study's own lanes. With budgets shorter than its 8 timed steps they are made again; with
  # longer ones, when only the winner trained them, the study trains on from its steps. Either way the results,
  # and every step's logged loss, are those of the strategy fixed.
  c = _smoke_config()
  c.protocol.n_per_class = (None,)
  c.train.num_steps, c.train.steps_per_chunk, c.output.log_every_steps = num_steps, 4, 1
  c.engine.strategy, c.engine.autotune_cache = "auto", ""
  study.run_study(c, str(tmp_path / "auto"))
  engine = json.load(open(tmp_path / "auto" / "engine.json"))["main"]
  assert engine["chosen_by"] == "autotune" and any(not t["error"] for t in engine["autotune"])
  assert engine.get("autotune_steps_kept") == (8 if kept else None)
  assert [t["kept"] for t in engine["autotune"] if t["strategy"] == engine["strategy"]] == [kept]
  c.engine.strategy = engine["strategy"]
  study.run_study(c, str(tmp_path / "fixed"))
  auto, fixed = (_read_csv(tmp_path / name / "results.csv") for name in ("auto", "fixed"))
  assert auto == fixed and len(auto) > 0
  auto, fixed = _logged_losses(tmp_path / "auto"), _logged_losses(tmp_path / "fixed")
  assert sorted(auto) == sorted(fixed) and len(auto) == num_steps * engine["lanes"]
  assert max(abs(auto[k] - fixed[k]) for k in auto) < 1e-6
