"""The name of every file and folder a study writes in its workdir, and the training-set-size conventions.

Every module finds a workdir file through `path(workdir, NAME)` (or the checkpoint helpers below), so a file is
renamed or moved in one place. Who writes and reads each file:

- workdir/records.py      config.json, study.json, engine.json, splits.csv, skipped_files.csv,
                          duplicates.csv, purification_removed.csv
- workdir/lock.py         run.lock (one run per workdir)
- workdir/results.py      results.csv (one row per model x split)
- workdir/predictions.py  predictions_{test,holdout}.csv (per image and model), predictions_new.csv (jaxcell.predict)
- workdir/confusion.py    confusion_matrices.csv
- training/checkpoints.py the orbax checkpoints, in the folders named here

Paths are `epath.Path`s (workdir/storage.py), so a workdir may be a local folder or a bucket (gs://...).
- reporting/              summary.md, report.html, plots and the analyses (names in REPORT_FILES), written from
                          the records above, never into them
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from etils import epath

from jaxcell.convert import pretrained
from jaxcell.workdir import storage

CONFIG = "config.json"  # The resolved study config; a resumed run must match it.
STUDY = "study.json"  # What prediction needs: class names, image shape, each arm's normalisation.
ENGINE = "engine.json"  # Per arm: the training path or strategy that ran, and why.
SPLITS = "splits.csv"  # Per image: class, holdout membership, fold per repeat.
SKIPPED = "skipped_files.csv"  # Files under the image root that were not used, with the reason.
DUPLICATES = "duplicates.csv"  # Byte-identical images (across classes, given splits, or within a class).
PURIFICATION_REMOVED = "purification_removed.csv"  # Images a purified arm trained without.
RESULTS = "results.csv"
CONFUSION = "confusion_matrices.csv"
NEW_PREDICTIONS = "predictions_new.csv"
LOG = "log.txt"
LOCK = "run.lock"  # Held by the run using the workdir (workdir/lock.py).
TENSORBOARD = "tensorboard"
CACHE = "cache"  # Decoded images (data/folder.py) keyed by the data config.
CHECKPOINTS = "checkpoints"
CHECKPOINT_GROUPS = "groups.json"  # Inside CHECKPOINTS: which lanes each stacked checkpoint holds.
# A pretraining workdir (python -m jaxcell.pretrain) holds CONFIG, LOG, TENSORBOARD and these:
PRETRAIN = "pretrain.json"  # Objective, model, input normalisation, the probe's scores per step, wall time.
PRETRAINED_WEIGHTS = pretrained.CELLNET_FILE  # The backbone in convert's weights format (transfer.weights=cellnet:W).
PRETRAIN_CHECKPOINT = "pretrain"  # Inside CHECKPOINTS: the newest training state, for resume.

# Report outputs (reporting/ writes them from the records above).
SUMMARY = "summary.md"
REPORT = "report.html"
BOXPLOT = "boxplot.png"
PREPROCESS_EXAMPLES = "preprocess_examples.png"  # One example image per class under each arm's pre-processing.
LEARNING_CURVE = "learning_curve.csv"
ANALYSIS_FILES = {
  "ensembles_csv": "ensembles.csv",
  "triage_csv": "triage.csv",
  "triage_dir": "triage",
  "risk_coverage_png": "risk_coverage.png",
  "reliability_png": "reliability.png",
  "purification_csv": "purification.csv",
  "comparisons_md": "comparisons.md",
  "analysis_json": "analysis.json",
}

# Split names, as BioNIC's `test_group`: a model's own CV test fold, and the shared global holdout.
CV_TEST_SPLIT = "test"
HOLDOUT_SPLIT = "holdout"
SPLIT_NAMES = (CV_TEST_SPLIT, HOLDOUT_SPLIT)


def path(workdir: str | os.PathLike, name: str) -> epath.Path:
  """The path of workdir file `name` (one of the names above)."""
  return storage.as_path(workdir) / name


def predictions(workdir: str | os.PathLike, split: str) -> epath.Path:
  """predictions_<split>.csv: every model's per-image predictions on its CV test fold or the holdout."""
  if split not in SPLIT_NAMES:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}.")
  return path(workdir, f"predictions_{split}.csv")


def process_log(process_index: int) -> str:
  """The log of a process that does not write the study's files (multi-host jobs); the primary writes LOG."""
  return f"log.process{process_index}.txt"


# --- checkpoints ------------------------------------------------------------------------------


def checkpoints_dir(workdir: str | os.PathLike) -> epath.Path:
  return path(workdir, CHECKPOINTS)


def group_directory(workdir: str | os.PathLike, lane_indices: Iterable[int]) -> epath.Path:
  """One stacked checkpoint per group of lanes trained together, named by the lanes it holds."""
  lane_indices = list(lane_indices)
  first, last = min(lane_indices), max(lane_indices)
  return checkpoints_dir(workdir) / f"lanes_{first:04d}-{last:04d}_{len(lane_indices)}"


def groups_file(workdir: str | os.PathLike) -> epath.Path:
  return checkpoints_dir(workdir) / CHECKPOINT_GROUPS


def frozen_directory(workdir: str | os.PathLike, arm: str) -> epath.Path:
  """The frozen parameters an arm's lanes share (saved once per arm)."""
  return checkpoints_dir(workdir) / f"frozen_{arm}"


# --- training-set sizes -------------------------------------------------------------------------
# A lane trains on n_per_class images per class, or on all of them (None).

ANY_SIZE = "any"  # A filter meaning "every training-set size" (None already means "all images").


def size_key(size: int | None) -> tuple:
  """Sort key of training-set sizes: ascending, None (= all images) last, i.e. largest."""
  return (size is None, size or 0)


def largest_size(sizes: Iterable[int | None]) -> int | None:
  """The largest training-set size; None (all images) counts as largest."""
  return max(sizes, key=size_key)


def size_text(size: int | None) -> str:
  return "all" if size is None else str(size)
