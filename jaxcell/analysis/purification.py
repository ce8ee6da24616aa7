"""Dataset purification by confident learning: which training images are probably mislabelled?

Written from the definitions of Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels" (JAIR 2021). Inputs are out-of-fold (OOF) class probabilities: for each image, the softmax of
models that did *not* train on it (the CV test-fold predictions in `predictions_test.csv`, averaged over
seeds and repeats). Never flag from holdout predictions or from the training fit itself: a model that saw an
image has memorised its label, and purifying with holdout predictions would leak the holdout into training.

Notation: n examples, k classes, given (possibly noisy) labels y~, OOF probabilities p[x, j].
- Per-class threshold t_j = mean of p[x, j] over the examples labelled j (the model's expected
  self-confidence for class j).
- Confident joint C[i, j] = number of examples labelled i whose confident class is j, where the confident
  class of x is argmax_j p[x, j] among the classes with p[x, j] >= t_j (examples with no such class are not
  counted). Calibrated (paper eq. 2): each row is rescaled to sum to the number of examples labelled i, so
  C / n estimates the joint distribution Q[y~ = i, y* = j] of given and true labels.
- Pruning methods (`find_label_issues`): 'prune_by_noise_rate' (PBNR) removes, for each i != j, the
  round(C[i, j]) examples labelled i with the largest margin p[x, j] - p[x, i]; 'prune_by_class' (PBC)
  removes, per class i, the round(sum_{j != i} C[i, j]) examples labelled i with the lowest p[x, i]; 'both'
  flags what both PBC and PBNR flag (the paper's C+NR); 'confident_joint' flags the off-diagonal examples
  of C; 'argmax' flags examples whose most probable class is not the given one (the paper's C_confusion).
  Counts are rounded per row by largest remainder, so they stay integers that sum to the class size.

Not provided: BioNIC's "VennData" learning-to-reweight (bionic-study.md section 9). The committed code
cannot run (it imports a missing module `augment`, quits after two batches, and uses an undefined `w`);
its meta-objective scores the weights on a second batch of the *same* noisy training set, so there is no
clean reference to reweight towards; and its threshold 0.0 on sigmoid weights keeps every image, so as
configured it purified nothing. Reproducing it would mean inventing the missing pieces. Confident learning
instead gives per-image evidence (which label, which alternative, how sure) that a biologist can check.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxcell.workdir import storage

METHODS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_joint", "argmax")
RANK_BY = ("self_confidence", "normalized_margin")
# Probabilities read back from CSV (6 decimals) or averaged over models do not sum to exactly 1.
_SUM_TOLERANCE = 1e-3
# A threshold is a mean of the very values compared to it; float rounding must not push the largest of
# several equal values below their mean (which would leave a class with no confident example).
_THRESHOLD_TOLERANCE = 1e-9
TABLE_COLUMNS = (
  "rank",
  "index",
  "path",
  "given_label",
  "suggested_label",
  "p_given",
  "p_suggested",
  "margin",
  "num_models",
  "kind",
)


def _check_inputs(labels, oof_probs) -> tuple[np.ndarray, np.ndarray]:
  """Validated (int labels, float probabilities); raises ValueError saying what to fix."""
  probs = np.asarray(oof_probs, dtype=np.float64)
  if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
    raise ValueError(
      f"oof_probs must be a 2-D array (num_examples, num_classes) with at least 2 classes and 1 example, "
      f"got shape {probs.shape}."
    )
  labels = np.asarray(labels)
  if labels.shape != (probs.shape[0],):
    raise ValueError(
      f"labels must be 1-D with one entry per row of oof_probs: labels have shape {labels.shape}, "
      f"oof_probs has {probs.shape[0]} rows."
    )
  if labels.dtype.kind not in "iu":
    if labels.dtype.kind != "f" or not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
      raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}; map class names to indices.")
  labels = labels.astype(np.int64)
  num_classes = probs.shape[1]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
      f"labels must lie in [0, {num_classes}) for {num_classes} probability columns, "
      f"got {labels.min()}..{labels.max()}."
    )
  if not np.all(np.isfinite(probs)) or probs.min() < -_SUM_TOLERANCE or probs.max() > 1 + _SUM_TOLERANCE:
    raise ValueError("oof_probs must be finite probabilities in [0, 1]; pass softmax outputs, not logits.")
  sums = probs.sum(axis=1)
  bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOLERANCE)
  if bad.size:
    raise ValueError(
      f"each row of oof_probs must sum to 1 (tolerance {_SUM_TOLERANCE}); row {bad[0]} sums to {sums[bad[0]]:.6f} "
      f"({bad.size} rows off). Pass softmax probabilities over all classes."
    )
  counts = np.bincount(labels, minlength=num_classes)
  if np.any(counts == 0):
    empty = np.flatnonzero(counts == 0).tolist()
    raise ValueError(
      f"classes {empty} have no examples with that given label; per-class thresholds need at least one. "
      "Drop those probability columns (and renumber labels) or add examples of those classes."
    )
  return labels, probs


def per_class_thresholds(labels, oof_probs) -> np.ndarray:
  """t_j = mean predicted probability of class j over the examples labelled j; shape (num_classes,)."""
  labels, probs = _check_inputs(labels, oof_probs)
  return np.array([probs[labels == j, j].mean() for j in range(probs.shape[1])])


def confident_classes(labels, oof_probs) -> np.ndarray:
  """Each example's confident class: argmax of p[x, j] among classes with p[x, j] >= t_j, or -1 if none."""
  labels, probs = _check_inputs(labels, oof_probs)
  above = probs >= per_class_thresholds(labels, probs) - _THRESHOLD_TOLERANCE
  best = np.where(above, probs, -np.inf).argmax(axis=1)  # ties go to the lower class index
  return np.where(above.any(axis=1), best, -1)


def confident_joint(labels, oof_probs, *, calibrate: bool = True) -> np.ndarray:
  """(k, k) confident joint: C[i, j] counts examples labelled i whose confident class is j.

  With `calibrate` (the paper's eq. 2), row i is rescaled to sum to the number of examples labelled i, so
  the entries are floats and C.sum() == n; without it, the raw integer counts are returned.
  """
  labels, probs = _check_inputs(labels, oof_probs)
  num_classes = probs.shape[1]
  confident = confident_classes(labels, probs)
  counted = confident >= 0
  joint = np.zeros((num_classes, num_classes))
  np.add.at(joint, (labels[counted], confident[counted]), 1.0)
  if not calibrate:
    return joint.astype(np.int64)
  # Every row has at least one count: the example with the largest p[x, i] in class i reaches the mean t_i.
  class_counts = np.bincount(labels, minlength=num_classes)
  return joint / joint.sum(axis=1, keepdims=True) * class_counts[:, None]


def estimate_joint(labels, oof_probs) -> np.ndarray:
  """Q[i, j], the estimated joint distribution of given label i and true label j (calibrated C / n)."""
  labels, _ = _check_inputs(labels, oof_probs)
  return confident_joint(labels, oof_probs) / labels.size


def _round_rows(matrix: np.ndarray) -> np.ndarray:
  """Integer matrix with each row rounded by largest remainder, so row sums are kept exactly."""
  floors = np.floor(matrix + 1e-9).astype(np.int64)
  for i, row in enumerate(matrix):
    missing = int(round(row.sum())) - floors[i].sum()
    if missing > 0:
      order = np.argsort(-(row - floors[i]), kind="stable")
      floors[i, order[:missing]] += 1
  return floors


def find_label_issues(labels, oof_probs, method: str = "prune_by_noise_rate") -> np.ndarray:
  """Boolean mask over examples, True where the given label is probably wrong (see module docstring)."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}.")
  labels, probs = _check_inputs(labels, oof_probs)
  n, k = probs.shape
  if method == "argmax":
    return probs.argmax(axis=1) != labels
  if method == "confident_joint":
    confident = confident_classes(labels, probs)
    return (confident >= 0) & (confident != labels)
  if method == "both":
    return find_label_issues(labels, probs, "prune_by_class") & find_label_issues(labels, probs, "prune_by_noise_rate")

  counts = _round_rows(confident_joint(labels, probs))
  mask = np.zeros(n, bool)
  for i in range(k):
    members = np.flatnonzero(labels == i)
    if method == "prune_by_class":
      num_off = counts[i].sum() - counts[i, i]
      order = np.argsort(probs[members, i], kind="stable")  # least self-confident first
      mask[members[order[:num_off]]] = True
      continue
    for j in range(k):
      if j != i and counts[i, j] > 0:
        order = np.argsort(-(probs[members, j] - probs[members, i]), kind="stable")  # largest margin first
        mask[members[order[: counts[i, j]]]] = True
  return mask


def label_quality_scores(labels, oof_probs, rank_by: str = "self_confidence") -> np.ndarray:
  """Per-example score in [0, 1]; lower means more suspicious.

  'self_confidence' is p[x, given]; 'normalized_margin' is (p[x, given] - max_{j != given} p[x, j] + 1) / 2.
  """
  if rank_by not in RANK_BY:
    raise ValueError(f"unknown rank_by {rank_by!r}; choose one of {RANK_BY}.")
  labels, probs = _check_inputs(labels, oof_probs)
  rows = np.arange(labels.size)
  self_confidence = probs[rows, labels]
  if rank_by == "self_confidence":
    return self_confidence
  others = probs.copy()
  others[rows, labels] = -np.inf
  return (self_confidence - others.max(axis=1) + 1.0) / 2.0


def rank_label_issues(labels, oof_probs, mask=None, rank_by: str = "self_confidence") -> np.ndarray:
  """Indices of the examples in `mask` (default: all), most suspicious (lowest score) first."""
  scores = label_quality_scores(labels, oof_probs, rank_by)
  if mask is not None and np.shape(mask) != scores.shape:
    raise ValueError(f"mask must have one entry per example ({scores.size}), got shape {np.shape(mask)}.")
  candidates = np.arange(scores.size) if mask is None else np.flatnonzero(np.asarray(mask, bool))
  return candidates[np.argsort(scores[candidates], kind="stable")]


def purification_table(
  paths: Sequence[str],
  labels,
  oof_probs,
  class_names: Sequence[str],
  *,
  num_models: int | Sequence[int] = 1,
  method: str = "prune_by_noise_rate",
  rank_by: str = "self_confidence",
  close_margin: float = 0.1,
) -> list[dict[str, object]]:
  """One row per flagged example, most suspicious first, with the evidence a person needs to check it.

  Columns (`TABLE_COLUMNS`): rank (1 = most suspicious), index (into `paths`), path, given_label,
  suggested_label, p_given, p_suggested, margin = p_suggested - p_given, num_models (how many models'
  OOF probabilities were averaged for this image, e.g. seeds x repeats), and kind:
  - suggested_label is the example's confident class (argmax among classes j with p[x, j] >= t_j) when that
    exists and differs from the given label; otherwise the most probable class other than the given one.
  - kind = 'likely_mislabelled' when the confident class exists, differs from the given label, and leads it
    by margin >= close_margin: another class is confidently predicted.
  - kind = 'ambiguous' otherwise: no class reaches its threshold, or the given label is itself the confident
    class, or the suggested class leads the given one by less than close_margin (two classes are close).
  """
  labels, probs = _check_inputs(labels, oof_probs)
  n, k = probs.shape
  if len(paths) != n:
    raise ValueError(f"paths has {len(paths)} entries but oof_probs has {n} rows; pass one path per example.")
  if len(class_names) != k:
    raise ValueError(f"class_names has {len(class_names)} names but oof_probs has {k} columns.")
  if not 0.0 <= close_margin <= 1.0:
    raise ValueError(f"close_margin must be in [0, 1], e.g. 0.1, got {close_margin}.")
  models = np.broadcast_to(np.asarray(num_models), (n,)) if np.ndim(num_models) == 0 else np.asarray(num_models)
  if models.shape != (n,) or models.dtype.kind not in "iu" or np.any(models < 1):
    raise ValueError(f"num_models must be a positive int or one positive int per example ({n}), got {num_models!r}.")

  mask = find_label_issues(labels, probs, method)
  confident = confident_classes(labels, probs)
  others = probs.copy()
  others[np.arange(n), labels] = -np.inf
  runner_up = others.argmax(axis=1)
  rows = []
  for rank, index in enumerate(rank_label_issues(labels, probs, mask, rank_by), start=1):
    given, conf = labels[index], confident[index]
    is_confident_other = conf >= 0 and conf != given
    suggested = conf if is_confident_other else runner_up[index]
    margin = probs[index, suggested] - probs[index, given]
    kind = "likely_mislabelled" if is_confident_other and margin >= close_margin else "ambiguous"
    rows.append(
      {
        "rank": rank,
        "index": int(index),
        "path": paths[index],
        "given_label": class_names[given],
        "suggested_label": class_names[suggested],
        "p_given": float(probs[index, given]),
        "p_suggested": float(probs[index, suggested]),
        "margin": float(margin),
        "num_models": int(models[index]),
        "kind": kind,
      }
    )
  return rows


def write_purification_csv(path, rows: Sequence[dict[str, object]]) -> None:
  """Writes the purification table (header always, even with no flagged images)."""
  buffer = io.StringIO(newline="")
  writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    if set(row) != set(TABLE_COLUMNS):
      raise ValueError(f"purification rows must have exactly the columns {TABLE_COLUMNS}, got {sorted(row)}.")
    writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value for key, value in row.items()})
  storage.write_text(path, buffer.getvalue())


class Purification(NamedTuple):
  kept: np.ndarray  # training indices not flagged, in their original order
  removed: np.ndarray  # training indices that were flagged
  num_flagged_elsewhere: int  # flagged images that are not in this training set (other folds, holdout)


def purified_indices(train_indices, flagged, *, paths: Sequence[str] | None = None) -> Purification:
  """Removes flagged images from a training index set.

  `flagged` holds dataset indices, or image paths when `paths` (the dataset's path per index) is given.
  """
  train = np.asarray(train_indices)
  if train.ndim != 1 or (train.size and train.dtype.kind not in "iu"):
    raise ValueError(f"train_indices must be a 1-D array of integer dataset indices, got {train.dtype} {train.shape}.")
  flagged = list(flagged)
  if any(isinstance(f, str) for f in flagged):
    if paths is None or not all(isinstance(f, str) for f in flagged):
      raise ValueError("flagged holds paths: pass every entry as a path and give paths= (the dataset's image paths).")
    where = {p: i for i, p in enumerate(paths)}
    missing = [f for f in flagged if f not in where]
    if missing:
      raise ValueError(f"{len(missing)} flagged paths are not in the dataset, e.g. {missing[0]!r}; wrong dataset?")
    flagged = [where[f] for f in flagged]
  flagged_idx = np.unique(np.asarray(flagged, dtype=np.int64))
  is_flagged = np.isin(train, flagged_idx)
  return Purification(
    kept=train[~is_flagged],
    removed=train[is_flagged],
    num_flagged_elsewhere=int(flagged_idx.size - np.isin(flagged_idx, train).sum()),
  )
