"""--dry_run: the study's checks and its plan, with nothing trained and nothing written."""

import os
import subprocess
import sys

import pytest

from jaxcell import config as config_lib
from jaxcell import dry_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  c = config_lib.base_config()
  config_lib.shrink_for_smoke(c)
  c.arms = {"scratch": {}, "probe": {"transfer": {"preset": "linear_probe"}}}
  return c


def test_the_plan_names_splits_arms_lanes_paths_and_estimates(tmp_path):
  text = dry_run.plan_study(_config(), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # Nothing written, not even the workdir.
  assert "| apoptotic | 20 | 2 | 18 | 9 | 9 |" in text  # 20 images: 2 holdout, 18 in the 2-fold CV pool.
  assert "Arms (2), 4 lanes (models) in all:" in text
  assert "2 lanes, 4 steps each of batch 8; path: full model (layers outside the head are trained)" in text
  assert "path: cached features (trunk frozen with fixed statistics)" in text
  assert "TFLOP of training" in text and ("GiB on the device" in text or "MiB on the device" in text)


def test_a_bad_config_fails_the_dry_run_as_it_would_the_study(tmp_path):
  c = _config()
  c.train.learning_rate = -1.0
  with pytest.raises(ValueError, match="train.learning_rate=-1.0"):
    dry_run.plan_study(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_the_cli_flag_prints_the_plan_and_writes_nothing(tmp_path):
  cmd = [sys.executable, "-m", "jaxcell.main", "--config", "configs/demo.py:smoke", "--workdir", str(tmp_path / "w")]
  proc = subprocess.run([*cmd, "--dry_run"], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("Dry run: nothing trained, nothing written")
  assert "Arms (2), 4 lanes (models) in all:" in proc.stdout  # The demo's two arms, 2 folds each at smoke size.
  assert not (tmp_path / "w").exists()
