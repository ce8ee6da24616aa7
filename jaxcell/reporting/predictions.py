"""Per-image outputs: model predictions on the holdout / test folds, and the split of every image."""

from __future__ import annotations

import csv
import os

import numpy as np

from jaxcell.data import splits as splits_lib

LANE_COLUMNS = ("arm", "lane", "seed", "repeat", "fold", "n_per_class")


def prediction_rows(lane_fields: dict, paths, targets: np.ndarray, probs: np.ndarray, class_names) -> list[dict]:
  """One row per image: the lane, path, target, prediction, confidence and every class probability."""
  preds = probs.argmax(axis=1)
  rows = []
  for path, target, pred, p in zip(paths, targets, preds, probs):
    row = dict(lane_fields)
    row.update(path=path, target=class_names[target], prediction=class_names[pred], confidence=f"{p[pred]:.6f}")
    row.update({f"p_{name}": f"{v:.6f}" for name, v in zip(class_names, p)})
    rows.append(row)
  return rows


def append_predictions(csv_path: str, rows: list[dict]) -> None:
  if not rows:
    return
  new = not os.path.exists(csv_path)
  with open(csv_path, "a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    if new:
      writer.writeheader()
    writer.writerows(rows)


def keep_lanes(csv_path: str, lanes: set[int]) -> None:
  """Drops rows of lanes that did not finish (a run interrupted between writing and recording a lane)."""
  if not os.path.exists(csv_path):
    return
  with open(csv_path, newline="") as f:
    reader = csv.DictReader(f)
    fields, rows = reader.fieldnames, [r for r in reader if int(r["lane"]) in lanes]
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def write_splits(csv_path: str, paths, labels: np.ndarray, class_names, splits: splits_lib.Splits) -> None:
  """splits.csv: for each image its class, whether it is in the global holdout, and its fold per repeat."""
  holdout = np.zeros(len(paths), bool)
  holdout[splits.holdout] = True
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "target", "holdout", *[f"fold_repeat{r}" for r in range(splits.folds.shape[0])]])
    for i, path in enumerate(paths):
      writer.writerow([path, class_names[labels[i]], int(holdout[i]), *splits.folds[:, i].tolist()])
