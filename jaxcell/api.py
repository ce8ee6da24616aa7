"""The Python API, for notebooks: run a study and get its results back as plain Python objects.

  import jaxcell
  study = jaxcell.run_study("configs/demo.py:smoke", "runs/smoke")   # or a ConfigDict; resumes like the CLI
  study = jaxcell.load_study("runs/smoke")                          # a finished (or unfinished) workdir
  study.results[0]["balanced_accuracy"], study.analysis["comparisons"], study.frames()["results"]

Everything comes from the workdir's files, read by the modules that own them (jaxcell/workdir/), so a study run
from the command line loads the same way.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

# TensorFlow (under a tensorflow-datasets source) announces itself from C++ on import; as on the command line,
# keep a notebook quiet unless the user set these already.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import ml_collections  # noqa: E402

from jaxcell import study as study_lib  # noqa: E402
from jaxcell.reporting import analysis_files  # noqa: E402
from jaxcell.workdir import layout, predictions, records, results  # noqa: E402


@dataclasses.dataclass
class StudyResults:
  """A study's workdir, read: every field is plain Python (lists of dicts, dicts, str)."""

  workdir: str
  config: ml_collections.ConfigDict  # The resolved config the study ran with (config.json).
  class_names: list[str]
  results: list[dict]  # results.csv: one row per model, split and arm (metrics as floats, 'status').
  predictions: dict[str, list[dict]]  # {'test' | 'holdout': rows of predictions_<split>.csv} (per image, model).
  splits: list[dict]  # splits.csv: per image its class, holdout flag and fold per repeat.
  analysis: dict  # analysis.json: ensembles, triage, calibration, comparisons, purification, skipped analyses.
  engine: dict  # engine.json: per arm, how its models were trained.
  stage_seconds: dict  # Wall time of each stage of the last run ('total': the whole run), from engine.json.

  def usable_results(self) -> list[dict]:
    """The results rows of models that trained normally (diverged ones left out, as every analysis does)."""
    return list(results.usable(self.results))

  def frames(self) -> dict:
    """The tables as pandas DataFrames: results, predictions_test, predictions_holdout, splits, ensembles."""
    try:
      import pandas as pd  # Optional: jaxcell itself never needs it.
    except ImportError as e:
      raise ImportError("StudyResults.frames() needs pandas: pip install pandas") from e
    tables = {"results": self.results, "splits": self.splits, "ensembles": self.analysis.get("ensembles", [])}
    tables.update({f"predictions_{split}": rows for split, rows in self.predictions.items()})
    return {name: pd.DataFrame(rows) for name, rows in tables.items()}


def load_config(config: str | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A ConfigDict as given, or from 'path/to/config.py[:arg]' as --config reads it (get_config(arg))."""
  if isinstance(config, ml_collections.ConfigDict):
    return config
  path, _, arg = str(config).partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist (give 'configs/<name>.py[:arg]' or a ConfigDict).")
  spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def run_study(config: str | ml_collections.ConfigDict, workdir: str | os.PathLike) -> StudyResults:
  """Runs (or resumes) a study as `python -m jaxcell.main` does, then returns its results."""
  study_lib.run_study(load_config(config), str(workdir))
  return load_study(workdir)


def load_study(workdir: str | os.PathLike) -> StudyResults:
  """Reads a study's workdir; raises FileNotFoundError naming what is missing when it is not a study's."""
  workdir = str(workdir)
  if not layout.path(workdir, layout.CONFIG).is_file():
    raise FileNotFoundError(f"{workdir} holds no {layout.CONFIG}: pass the workdir of a study.")
  results_csv = layout.path(workdir, layout.RESULTS)
  rows = results.read_rows(results_csv) if results_csv.is_file() else []
  per_image = {}
  for split in layout.SPLIT_NAMES:
    path = layout.predictions(workdir, split)
    if path.is_file() and path.stat().length:
      per_image[split] = predictions.read_prediction_rows(path)
  try:
    analysis = analysis_files.load_analysis(workdir)
  except FileNotFoundError:
    analysis = {}  # Written when the study finishes.
  engine = records.read_engine(workdir)
  stage_seconds = engine.pop(records.STAGE_SECONDS, {})
  return StudyResults(
    workdir=workdir,
    config=records.read_config(workdir),
    class_names=list(records.read_study(workdir)["class_names"]),
    results=[dict(r) for r in rows],
    predictions=per_image,
    splits=records.read_splits(workdir),
    analysis=analysis,
    engine=engine,
    stage_seconds=stage_seconds,
  )
