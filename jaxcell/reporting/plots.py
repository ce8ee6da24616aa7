"""Box plots of per-model scores, as in BioNIC's results notebook.

One panel per split (CV test folds, then the global holdout, then any other split), one box per
arm (and training-set size, when several were run), every model's score overlaid as a jittered
point, and the score of a uniform random guesser as a dashed line. Figures are drawn with the
Agg canvas directly, so plotting never touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxcell.evaluation.metrics import RECALL_PREFIX
from jaxcell.reporting.summary import SPLIT_TITLES
from jaxcell.workdir.results import CV_TEST_SPLIT, HOLDOUT_SPLIT, metric_columns
from jaxcell.workdir import storage

_DPI = 120
_JITTER_HALF_WIDTH = 0.12
_ACCURACY_LIKE = ("accuracy", "balanced_accuracy", "bionic_weighted_accuracy", "macro_f1")


def chance_level(metric: str, num_classes: int) -> float | None:
  """Expected score of a uniform random guesser, or None where no single value makes sense."""
  if metric in _ACCURACY_LIKE or metric.startswith(RECALL_PREFIX):
    return 1.0 / num_classes
  if metric == "roc_auc_ovr":
    return 0.5
  if metric == "nll":
    return math.log(num_classes)
  return None


def _ordered_splits(rows: Sequence[Mapping[str, object]]) -> list[str]:
  present = dict.fromkeys(row["split"] for row in rows)
  known = [split for split in (CV_TEST_SPLIT, HOLDOUT_SPLIT) if split in present]
  return known + sorted(split for split in present if split not in known)


def _box_label(arm: str, n_per_class: int | None, show_size: bool, n: int, n_nan: int) -> str:
  label = arm
  if show_size:
    label += f"\n{'all' if n_per_class is None else n_per_class}/class"
  if n == 0:
    return label + "\nno data"
  return label + f"\nn={n}" + (f" (+{n_nan} nan)" if n_nan else "")


def _draw_panel(ax, rows, metric: str, show_size: bool, rng: np.random.Generator) -> float:
  """Draw one split's boxes and points; returns the largest finite score drawn (or 0)."""
  groups: dict[tuple[str, int | None], list[float]] = {}
  for row in rows:
    groups.setdefault((row["arm"], row["n_per_class"]), []).append(float(row[metric]))

  labels, largest = [], 0.0
  for position, ((arm, n_per_class), scores) in enumerate(groups.items(), start=1):
    scores = np.asarray(scores)
    finite = scores[np.isfinite(scores)]
    labels.append(_box_label(arm, n_per_class, show_size, finite.size, scores.size - finite.size))
    if finite.size == 0:
      continue
    largest = max(largest, float(finite.max()))
    ax.boxplot(
      [finite],
      positions=[position],
      widths=0.5,
      showfliers=False,
      medianprops={"color": "tab:orange", "linewidth": 2},
    )
    jitter = rng.uniform(-_JITTER_HALF_WIDTH, _JITTER_HALF_WIDTH, size=finite.size)
    ax.scatter(position + jitter, finite, s=14, alpha=0.7, color="tab:blue", zorder=3)
  ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20 if len(labels) > 3 else 0)
  ax.set_xlim(0.4, len(labels) + 0.6)
  ax.grid(axis="y", alpha=0.3)
  return largest


def infer_num_classes(rows: Sequence[Mapping[str, object]]) -> int | None:
  """The number of classes, from the per-class recall columns (None when there are none)."""
  recall_columns = [name for name in metric_columns(rows) if name.startswith(RECALL_PREFIX)]
  return len(recall_columns) or None


def plot_boxplots(
  rows: Sequence[Mapping[str, object]],
  metric: str,
  path: storage.PathLike,
  *,
  num_classes: int | None = None,
  title: str | None = None,
) -> None:
  """Save a PNG with one panel per split and one box of per-model `metric` scores per arm.

  `num_classes` sets the chance line (1/num_classes for accuracy-like metrics, 0.5 for AUC,
  log(num_classes) for nll); by default it is the number of `recall/<class>` columns.
  """
  if not rows:
    raise ValueError("no result rows to plot; has the study finished any lane?")
  if metric not in rows[0]:
    raise ValueError(f"unknown metric {metric!r}; the rows have {metric_columns(rows)}.")
  if num_classes is None:
    num_classes = infer_num_classes(rows)
  elif num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes}.")

  splits = _ordered_splits(rows)
  show_size = len({row["n_per_class"] for row in rows}) > 1
  num_boxes = max(len({(row["arm"], row["n_per_class"]) for row in rows if row["split"] == split}) for split in splits)
  panel_width = max(4.0, 1.3 * num_boxes + 1.5)
  figure = Figure(figsize=(len(splits) * panel_width, 5.0), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots(1, len(splits), sharey=True, squeeze=False)[0]

  rng = np.random.default_rng(0)  # fixed jitter: re-running gives the same picture
  chance = chance_level(metric, num_classes) if num_classes else None
  largest = 0.0
  for ax, split in zip(axes, splits):
    split_rows = [row for row in rows if row["split"] == split]
    largest = max(largest, _draw_panel(ax, split_rows, metric, show_size, rng))
    ax.set_title(SPLIT_TITLES.get(split, split))
    if chance is not None:
      ax.axhline(chance, linestyle="--", color="grey", linewidth=1, label=f"chance ({chance:.2f})")
  axes[0].set_ylabel(metric)
  # Scores live in [0, 1]; only unbounded metrics (nll) may stretch the axis.
  top = max(1.0, largest * 1.05, (chance or 0.0) * 1.05)
  axes[0].set_ylim(0.0, top)
  if chance is not None:
    axes[-1].legend(loc="best", fontsize="small")
  figure.suptitle(title or f"{metric} per trained model")

  storage.save_figure(figure, path, dpi=_DPI)
