"""Confidence-based triage: keep confident predictions, defer the rest to a human.

BioNIC sorted holdout images into `high_confidence/` and `low_confidence/` by one model's max softmax
probability (threshold 0.8 in driver.py, 0.85 in run_saved_model.py; kept when confidence >= threshold).
Here the confidence is the max probability of whatever [N, C] probabilities are passed (one model or an
ensemble's mean), thresholds are parameters, and the trade-off is described by the risk-coverage curve:
coverage = fraction of images kept, risk = error rate among them.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence

import numpy as np

from jaxcell.analysis.ensembles import as_targets_and_probs
from jaxcell.workdir import storage

BIONIC_THRESHOLDS = (0.8, 0.85)
HIGH, LOW = "high_confidence", "low_confidence"
TRIAGE_COLUMNS = ("path", "target", "prediction", "confidence", "bucket")


def _confidence_and_correct(targets, probs) -> tuple[np.ndarray, np.ndarray]:
  targets, probs = as_targets_and_probs(targets, probs)
  return probs.max(axis=1), probs.argmax(axis=1) == targets


def _check_threshold(threshold: float) -> float:
  if not 0.0 <= float(threshold) <= 1.0:
    raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}.")
  return float(threshold)


def risk_coverage(targets, probs) -> dict:
  """The risk-coverage curve over every distinct confidence value, most confident first.

  Entry j keeps the images with confidence >= thresholds[j] (thresholds decreasing): `coverage` is their
  fraction, `accuracy_covered` their accuracy, `risk` = 1 - accuracy_covered. Coverage therefore increases
  and the last entry keeps everything (its accuracy is the plain accuracy). `aurc` is `area_under_risk_coverage`.
  """
  confidence, correct = _confidence_and_correct(targets, probs)
  order = np.argsort(-confidence, kind="stable")
  confidence, correct = confidence[order], correct[order]
  # Images with equal confidence are kept or deferred together, so the curve has one point per distinct value.
  group_end = np.flatnonzero(np.append(confidence[1:] != confidence[:-1], True))
  kept = group_end + 1
  correct_kept = np.cumsum(correct)[group_end]
  curve = {
    "thresholds": confidence[group_end],
    "coverage": kept / confidence.size,
    "accuracy_covered": correct_kept / kept,
    "risk": 1.0 - correct_kept / kept,
  }
  curve["aurc"] = area_under_risk_coverage(curve)
  return curve


def area_under_risk_coverage(curve: dict) -> float:
  """Area under the risk-coverage step curve: sum over points of (coverage step) x risk at that coverage.

  Without tied confidences this is the usual AURC, (1/N) sum_k risk(top-k most confident) (Geifman et al.,
  2019); tied images enter together at their group's risk. Lower is better; 0 means no confident errors.
  """
  coverage = np.asarray(curve["coverage"], dtype=np.float64)
  steps = np.diff(coverage, prepend=0.0)
  return float(np.sum(steps * np.asarray(curve["risk"], dtype=np.float64)))


def aurc(targets, probs) -> float:
  """Area under the risk-coverage curve of [N, C] probabilities (see `area_under_risk_coverage`)."""
  return risk_coverage(targets, probs)["aurc"]


def triage_at(targets, probs, threshold: float = BIONIC_THRESHOLDS[0]) -> dict:
  """Split at one threshold (kept when confidence >= threshold): coverage, accuracy of kept and deferred.

  An empty group's accuracy is nan (not 0 or 1), so it cannot be mistaken for a measured value.
  """
  threshold = _check_threshold(threshold)
  confidence, correct = _confidence_and_correct(targets, probs)
  kept = confidence >= threshold
  num_kept, num_deferred = int(kept.sum()), int((~kept).sum())
  return {
    "threshold": threshold,
    "num_images": int(confidence.size),
    "num_kept": num_kept,
    "num_deferred": num_deferred,
    "num_correct_kept": int(correct[kept].sum()),
    "num_correct_deferred": int(correct[~kept].sum()),
    "coverage": num_kept / confidence.size,
    "accuracy_kept": float(correct[kept].mean()) if num_kept else float("nan"),
    "accuracy_deferred": float(correct[~kept].mean()) if num_deferred else float("nan"),
  }


def threshold_for_accuracy(targets, probs, target_accuracy: float) -> dict:
  """The lowest confidence threshold whose kept images reach `target_accuracy`, i.e. the largest coverage.

  Searches the distinct confidence values (every threshold in between keeps the same images). Returns
  {threshold, coverage, accuracy_covered, num_kept, reason}: reason is None when reachable; otherwise
  threshold is None, coverage 0 and reason says why (even the most confident images miss the target).
  """
  if not 0.0 < float(target_accuracy) <= 1.0:
    raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy!r}.")
  curve = risk_coverage(targets, probs)
  num_images = np.asarray(targets).size
  reached = np.flatnonzero(curve["accuracy_covered"] >= target_accuracy - 1e-12)
  if reached.size == 0:
    best = int(np.argmax(curve["accuracy_covered"]))
    return {
      "threshold": None,
      "coverage": 0.0,
      "accuracy_covered": float("nan"),
      "num_kept": 0,
      "reason": (
        f"no threshold reaches accuracy {target_accuracy:g}: the best is {curve['accuracy_covered'][best]:.4f} "
        f"(confidence >= {curve['thresholds'][best]:.4f}, {curve['coverage'][best]:.1%} of {num_images} images)"
      ),
    }
  j = int(reached[-1])  # thresholds decrease along the curve: the last one reached is the lowest
  return {
    "threshold": float(curve["thresholds"][j]),
    "coverage": float(curve["coverage"][j]),
    "accuracy_covered": float(curve["accuracy_covered"][j]),
    "num_kept": int(round(curve["coverage"][j] * num_images)),
    "reason": None,
  }


def threshold_interval(per_model_targets_probs: Sequence, target_accuracy: float, level: float = 0.95) -> dict:
  """How much the triage threshold for `target_accuracy` and its coverage vary from model to model.

  `per_model_targets_probs` is a sequence of (targets, probs [N, C]) pairs, one per trained model (e.g. each
  model on its own CV test fold). The interval is the central `level` percentile range across models
  (np.percentile, linear interpolation): the spread a new training run may land in, not a confidence
  interval of the mean. A model that cannot reach the target counts as coverage 0 (it must defer everything);
  the threshold interval uses the models that can. Returns per-model lists and the intervals.
  """
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level!r}.")
  if len(per_model_targets_probs) == 0:
    raise ValueError("per_model_targets_probs is empty; pass one (targets, probs) pair per model.")
  results = [threshold_for_accuracy(t, p, target_accuracy) for t, p in per_model_targets_probs]
  coverages = np.array([r["coverage"] for r in results])
  thresholds = [r["threshold"] for r in results]
  reachable = np.array([t for t in thresholds if t is not None])
  tails = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
  return {
    "target_accuracy": float(target_accuracy),
    "level": float(level),
    "thresholds": thresholds,
    "coverages": coverages,
    "reasons": [r["reason"] for r in results],
    "num_models": len(results),
    "num_unreachable": int(len(results) - reachable.size),
    "coverage_median": float(np.median(coverages)),
    "coverage_interval": tuple(float(v) for v in np.percentile(coverages, tails)),
    "threshold_interval": (
      tuple(float(v) for v in np.percentile(reachable, tails)) if reachable.size else (float("nan"),) * 2
    ),
  }


# --- per-image triage output --------------------------------------------------------------------


def triage_rows(paths, targets, probs, class_names: Sequence[str], threshold: float) -> list[dict]:
  """One row per image: path, target and prediction (class names), confidence, bucket (high/low confidence)."""
  threshold = _check_threshold(threshold)
  targets, probs = as_targets_and_probs(targets, probs)
  class_names = list(class_names)
  if probs.shape[1] != len(class_names):
    raise ValueError(f"probs has {probs.shape[1]} classes but there are {len(class_names)} class_names.")
  paths = list(paths)
  if len(paths) != targets.size:
    raise ValueError(f"got {len(paths)} paths for {targets.size} targets; pass one path per image.")
  preds, confidence = probs.argmax(axis=1), probs.max(axis=1)
  return [
    {
      "path": str(path),
      "target": class_names[t],
      "prediction": class_names[p],
      "confidence": float(c),
      "bucket": HIGH if c >= threshold else LOW,
    }
    for path, t, p, c in zip(paths, targets, preds, confidence)
  ]


def write_triage_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
  """Writes triage rows as a CSV with header path,target,prediction,confidence,bucket."""
  buffer = io.StringIO(newline="")
  writer = csv.DictWriter(buffer, fieldnames=TRIAGE_COLUMNS, extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow(dict(row, confidence=f"{float(row['confidence']):.6f}"))
  storage.write_text(path, buffer.getvalue())


def _safe(name: str) -> str:
  """A class name usable inside a file name (no path separators or shell-hostile characters)."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)) or "_"


def _free_name(directory, name: str, taken: set[str]) -> str:
  stem, ext = storage.as_path(name).stem, storage.as_path(name).suffix
  candidate, k = name, 2
  while candidate in taken or (directory / candidate).exists():
    candidate, k = f"{stem}__{k}{ext}", k + 1
  taken.add(candidate)
  return candidate


def copy_triage_images(rows: Sequence[dict], source_root: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
  """Copies each image to out_dir/<bucket>/target-<t>__pred-<p>__<original name>.

  Row paths are taken relative to `source_root` (absolute paths are used as they are). Existing files are
  never overwritten: a clashing name (two images with one file name, or a file from an earlier run) gets a
  `__2`, `__3`, ... suffix, so start from an empty out_dir for a clean result. Images that cannot be copied
  are reported, not dropped silently. Returns {"copied": [(source, destination)], "failed": [(source, reason)]}.
  """
  report: dict[str, list[tuple[str, str]]] = {"copied": [], "failed": []}
  taken: dict[str, set[str]] = {HIGH: set(), LOW: set()}
  for row in rows:
    bucket = row["bucket"]
    if bucket not in taken:
      raise ValueError(f"bucket must be {HIGH!r} or {LOW!r}, got {bucket!r} for {row['path']!r}.")
    source = storage.as_path(source_root) / row["path"]  # An absolute row path replaces the root.
    if not source.is_file():
      report["failed"].append((str(source), "source file not found"))
      continue
    directory = storage.as_path(out_dir) / bucket
    name = f"target-{_safe(row['target'])}__pred-{_safe(row['prediction'])}__{source.name}"
    destination = directory / _free_name(directory, name, taken[bucket])
    try:
      storage.copy_file(source, destination)
    except OSError as error:
      report["failed"].append((str(source), f"copy failed: {error}"))
      continue
    report["copied"].append((str(source), str(destination)))
  return report
