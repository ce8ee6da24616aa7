"""Every config field is checked before anything is written: types, ranges, allowed values, combinations; unknown
fields get a one-line "did you mean"; a run that fails validation leaves its workdir as it was."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

from jaxcell import config as config_lib
from jaxcell import study, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _NotAValue:
  pass


def test_every_field_has_a_rule_and_every_rule_a_field():
  assert set(validation.leaves(config_lib.base_config())) == set(validation.RULES)


def test_the_shipped_configs_pass():
  validation.check_config(config_lib.base_config())
  validation.check_config(config_lib.shrink_for_smoke(config_lib.base_config()))


@pytest.mark.parametrize("field", sorted(validation.RULES))
def test_every_field_refuses_a_value_of_the_wrong_kind(field):
  c = config_lib.base_config()
  group, _, name = field.rpartition(".")
  target = functools.reduce(getattr, group.split("."), c) if group else c
  with target.ignore_type():
    target[name] = _NotAValue()
  with pytest.raises(ValueError, match=rf"Invalid config: {field}=<.*_NotAValue.*>; use "):
    validation.check_config(c)


# The values the issue found failing late (ZeroDivisionError, or only after all training), and a few more.
BAD_VALUES = [
  ("output.checkpoint_every_chunks", 0),
  ("eval.batch_size", 0),
  ("eval.calibration_bins", 0),
  ("eval.box_metric", "bogus"),
  ("eval.compare_metric", "accuracyy"),
  ("eval.bootstrap_resamples", 0),
  ("eval.triage_thresholds", (1.5,)),
  ("eval.target_accuracy", 0.0),
  ("protocol.num_folds", 1),
  ("train.learning_rate", float("nan")),
  ("train.momentum", 1.0),
  ("train.step_boundaries", (0.75, 0.5)),
  ("train.frozen", "(unclosed"),
  ("data.group_regex", "[bad"),
  ("engine.strategy", "map0"),
  ("model.dtype", "float16"),
  ("augment.crop_ratio", (2.0, 1.0)),
  ("seed", -1),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_bad_values_are_refused_with_the_field_named(field, value):
  c = config_lib.base_config()
  group, _, name = field.rpartition(".")
  target = functools.reduce(getattr, group.split("."), c) if group else c
  with target.ignore_type():
    target[name] = value
  with pytest.raises(ValueError, match=rf"Invalid config: {field}="):
    validation.check_config(c)


def test_a_failed_validation_leaves_the_workdir_as_it_was(tmp_path):
  """Before: config.json was written first, so fixing the value in the same workdir was refused."""
  workdir = tmp_path / "w"
  c = config_lib.shrink_for_smoke(config_lib.base_config())
  c.data.source, c.data.root = "folder", str(tmp_path / "no_such_folder")
  with pytest.raises(ValueError, match="does not exist"):
    study.run_study(c, str(workdir))
  assert not workdir.exists()
  workdir.mkdir()
  c.eval.calibration_bins = 0
  with pytest.raises(ValueError, match="eval.calibration_bins=0"):
    study.run_study(c, str(workdir))
  assert os.listdir(workdir) == []


def test_too_few_images_for_the_folds_is_refused_before_any_write(tmp_path):
  c = config_lib.shrink_for_smoke(config_lib.base_config())
  c.data.synthetic.images_per_class = 3
  c.protocol.num_folds = 5
  with pytest.raises(ValueError, match="fold"):
    study.run_study(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_unknown_field_on_the_command_line_is_one_line_with_a_suggestion(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "jaxcell.main",
    "--config",
    "configs/demo.py:smoke",
    "--workdir",
    str(tmp_path / "w"),
    "--config.train.learnin_rate=1",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode != 0
  assert 'Did you mean "learning_rate"' in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


def test_an_unknown_field_set_in_python_gets_a_suggestion():
  c = config_lib.base_config()
  c.train.learnin_rate = 1.0
  with pytest.raises(ValueError, match=r'unknown field train.learnin_rate=1.0 .*Did you mean "train.learning_rate"\?'):
    validation.check_config(c)
