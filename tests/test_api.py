"""The Python API (jaxcell.run_study / load_study) and the `jaxcell` console script."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import jaxcell

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "jaxcell")  # Installed by pip with the project.


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("api") / "run"
  return jaxcell.run_study(os.path.join(REPO, "configs", "demo.py") + ":smoke", workdir)


def test_run_study_returns_the_workdirs_records_as_python_objects(finished):
  s = finished
  assert s.class_names == ["apoptotic", "binucleate", "elongated", "granular", "large_nucleus", "normal"]
  # The demo's two arms and the ImageNet probe's closed-form baseline, 2 lanes each, scored on 2 splits.
  assert {r["arm"] for r in s.results} == {"scratch", "imagenet_probe", "imagenet_probe_lsr"}
  assert {r["split"] for r in s.results} == {"test", "holdout"} and len(s.results) == 3 * 2 * 2
  assert all(isinstance(r["balanced_accuracy"], float) and r["status"] == "ok" for r in s.results)
  assert s.usable_results() == s.results
  holdout = s.predictions["holdout"]
  assert len(holdout) == 3 * 2 * sum(r["holdout"] for r in s.splits)  # Every holdout image, by every model.
  assert all(abs(sum(v for k, v in row.items() if k.startswith("p_")) - 1) < 1e-4 for row in holdout)
  assert len(s.splits) == 120 and isinstance(s.splits[0]["fold_repeat0"], int)
  assert s.analysis["ensembles"][0]["num_models"] == 2 and set(s.engine) == {"scratch", "imagenet_probe"}
  assert s.analysis["comparisons"]["baseline"] == "scratch"
  assert s.config.model.name == "resnet18"


def test_load_study_reads_the_same_and_frames_are_dataframes(finished):
  again = jaxcell.load_study(finished.workdir)
  assert again.results == finished.results and again.predictions == finished.predictions
  frames = again.frames()
  assert isinstance(frames["results"], pd.DataFrame) and len(frames["results"]) == len(again.results)
  assert len(frames["predictions_test"]) == len(again.predictions["test"])
  mean = frames["results"].groupby("split")["balanced_accuracy"].mean()
  np.testing.assert_allclose(
    mean["holdout"], np.mean([r["balanced_accuracy"] for r in again.results if r["split"] == "holdout"])
  )


def test_load_study_of_a_folder_that_is_no_study_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="holds no config.json"):
    jaxcell.load_study(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    jaxcell.run_study(str(tmp_path / "missing.py"), tmp_path / "w")


def _script(*args, timeout=300):
  return subprocess.run([SCRIPT, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_the_console_script_dispatches_each_command(finished, tmp_path):
  assert os.path.isfile(SCRIPT), "the project is not installed (pip install -e .): no `jaxcell` script"
  bare = _script()
  assert bare.returncode == 2 and "commands:" in bare.stdout
  assert _script("frobnicate").returncode == 2
  dry = _script("run", "--config", "configs/demo.py:smoke", "--workdir", str(tmp_path / "w"), "--dry_run")
  assert dry.returncode == 0 and "Arms (2), 4 lanes" in dry.stdout and not (tmp_path / "w").exists()
  (tmp_path / "new").mkdir()
  Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "new" / "a.png")
  out = tmp_path / "scored.csv"
  scored = _script("predict", "--workdir", finished.workdir, "--images", str(tmp_path / "new"), "--out", str(out))
  assert scored.returncode == 0, scored.stderr
  assert out.read_text().count("\n") == 2  # Header and the one image.
  convert = _script("convert", "--arch", "resnet18", "--input", str(tmp_path / "none.pth"), "--output", "x.npz")
  assert convert.returncode == 2 and "jaxcell.convert:" in convert.stderr
  bench = _script("bench", "--helpfull")  # absl's help (exit status 1) lists the benchmark's own flags.
  assert "--modes" in bench.stdout and "--sizes" in bench.stdout
