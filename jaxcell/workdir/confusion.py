"""confusion_matrices.csv: one confusion matrix per model and split, in long form — its writer and its reader."""

from __future__ import annotations

import collections
import os

import numpy as np

from jaxcell.workdir import predictions, storage

COLUMNS = (*predictions.LANE_COLUMNS, "split", "target", "prediction", "count")


def append_confusion(csv_path: str, lane_fields: dict, split: str, matrix: np.ndarray, class_names) -> None:
  """Appends a model's matrix in long form (rows = true class, columns = predicted class)."""
  rows = [
    dict(lane_fields, split=split, target=class_names[t], prediction=class_names[p], count=int(matrix[t, p]))
    for t in range(len(class_names))
    for p in range(len(class_names))
  ]
  predictions.append_predictions(csv_path, rows)


def summed_confusion(csv_path: str | os.PathLike, class_names) -> dict[tuple[str, str], np.ndarray]:
  """{(arm, split): counts summed over the arm's models}, in order of first appearance; {} without the file."""
  if not storage.as_path(csv_path).exists():
    return {}
  index = {name: i for i, name in enumerate(class_names)}
  sums = collections.defaultdict(lambda: np.zeros((len(class_names),) * 2, np.int64))
  for r in storage.read_csv(csv_path):
    sums[(r["arm"], r["split"])][index[r["target"]], index[r["prediction"]]] += int(r["count"])
  return dict(sums)
