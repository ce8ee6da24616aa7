"""Confusion matrices: one per model and split in `confusion_matrices.csv`, summed per arm in summary.md."""

from __future__ import annotations

import collections
import csv
import os

import numpy as np

from jaxcell.reporting import predictions

COLUMNS = (*predictions.LANE_COLUMNS, "split", "target", "prediction", "count")


def append_confusion(csv_path: str, lane_fields: dict, split: str, matrix: np.ndarray, class_names) -> None:
  """Appends a model's matrix in long form (rows = true class, columns = predicted class)."""
  rows = [
    dict(lane_fields, split=split, target=class_names[t], prediction=class_names[p], count=int(matrix[t, p]))
    for t in range(len(class_names))
    for p in range(len(class_names))
  ]
  predictions.append_predictions(csv_path, rows)


def summed_markdown(csv_path: str, class_names) -> str:
  """Markdown tables of the confusion counts summed over every model, per arm and split."""
  if not os.path.exists(csv_path):
    return ""
  index = {name: i for i, name in enumerate(class_names)}
  sums = collections.defaultdict(lambda: np.zeros((len(class_names),) * 2, np.int64))
  with open(csv_path, newline="") as f:
    for r in csv.DictReader(f):
      sums[(r["arm"], r["split"])][index[r["target"]], index[r["prediction"]]] += int(r["count"])
  lines = ["## Confusion matrices (summed over models; rows = true class, columns = predicted)", ""]
  for (arm, split), m in sorted(sums.items()):
    lines += [
      f"### {arm} — {split}",
      "",
      "| true \\ predicted | " + " | ".join(class_names) + " |",
      "|---" * (len(class_names) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(str(v) for v in m[i]) + " |" for i, name in enumerate(class_names)]
    lines.append("")
  return "\n".join(lines)
