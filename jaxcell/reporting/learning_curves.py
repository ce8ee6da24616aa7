"""Learning curves: how a metric grows with the number of training images per class.

Rows (from `workdir.results.read_rows`) are grouped by (arm, split, n_per_class). `learning_curve_table`
summarises each group over its trained models (seeds x repeats x folds) and `plot_learning_curves`
draws one line per arm against the training-set size, one panel per split. `n_per_class=None`
means "all images of the fold": its real size differs per fold and is not in the results table, so
it is shown as a separate 'all' point right of the largest subset size, joined by a dotted line.
NaN scores are left out of every statistic but counted (`n_nan`), never dropped silently.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jaxcell.reporting.plots import chance_level, infer_num_classes
from jaxcell.reporting.summary import SPLIT_TITLES, bootstrap_ci, group_sort_key
from jaxcell.workdir.results import CV_TEST_SPLIT, HOLDOUT_SPLIT, metric_columns
from jaxcell.workdir import storage

LEARNING_CURVE_COLUMNS: tuple[str, ...] = (
  "metric",
  "arm",
  "split",
  "n_per_class",
  "n",
  "n_nan",
  "mean",
  "std",
  "median",
  "q25",
  "q75",
  "min",
  "max",
  "ci_low",
  "ci_high",
)
ALL_IMAGES_LABEL = "all"

_DPI = 120
_SPLIT_ORDER = {CV_TEST_SPLIT: 0, HOLDOUT_SPLIT: 1}
# On the log axis 'all' sits one doubling right of the largest subset size.
_ALL_POSITION_FACTOR = 2.0
# Arms at the same size are nudged apart (multiplicatively, as the axis is log) so points don't hide.
_ARM_DODGE_LOG2 = 0.05

Group = tuple[str, str, int | None]  # (arm, split, n_per_class)


def _check_rows(rows: Sequence[Mapping[str, object]], metric: str) -> None:
  if not rows:
    raise ValueError("no result rows for a learning curve; has the study finished any lane?")
  if metric not in rows[0]:
    raise ValueError(f"unknown metric {metric!r}; the rows have {metric_columns(rows)}.")


def _grouped_scores(rows: Sequence[Mapping[str, object]], metric: str) -> dict[Group, np.ndarray]:
  """Every model's score per (arm, split, n_per_class), in table order: arms as they first
  appear (the study's order), splits test/holdout/other, sizes ascending with 'all' last."""
  arm_order: dict[str, int] = {}
  groups: dict[Group, list[float]] = {}
  for row in rows:
    arm_order.setdefault(row["arm"], len(arm_order))
    groups.setdefault((row["arm"], row["split"], row["n_per_class"]), []).append(row[metric])

  ordered = sorted(groups, key=lambda group: group_sort_key(group, arm_order))
  return {group: np.asarray(groups[group], dtype=np.float64) for group in ordered}


def _statistics(values: np.ndarray) -> dict[str, float]:
  """Location and spread of the finite `values`; nan where too few values define a statistic."""
  if values.size == 0:
    return {name: math.nan for name in ("mean", "std", "median", "q25", "q75", "min", "max")}
  q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
  return {
    "mean": float(values.mean()),
    "std": float(values.std(ddof=1)) if values.size >= 2 else math.nan,
    "median": float(median),
    "q25": float(q25),
    "q75": float(q75),
    "min": float(values.min()),
    "max": float(values.max()),
  }


def learning_curve_table(
  rows: Sequence[Mapping[str, object]],
  metric: str,
  *,
  confidence: float = 0.95,
  num_resamples: int = 2000,
  seed: int = 0,
) -> list[dict[str, object]]:
  """One dict per (arm, split, n_per_class) with the `LEARNING_CURVE_COLUMNS`.

  `n` counts models with a finite score and `n_nan` those without; `std` uses ddof=1, q25/q75
  are the interquartile range across models, and ci_low/ci_high a percentile-bootstrap interval
  of the mean. `n_per_class` stays None for 'all images'. Sorted by arm (first appearance),
  split (test, holdout, other) and size (ascending, 'all' last).
  """
  _check_rows(rows, metric)
  table = []
  for (arm, split, n_per_class), scores in _grouped_scores(rows, metric).items():
    finite = scores[~np.isnan(scores)]
    ci_low, ci_high = bootstrap_ci(finite, confidence=confidence, num_resamples=num_resamples, seed=seed)
    table.append(
      {
        "metric": metric,
        "arm": arm,
        "split": split,
        "n_per_class": n_per_class,
        "n": int(finite.size),
        "n_nan": int(scores.size - finite.size),
        **_statistics(finite),
        "ci_low": ci_low,
        "ci_high": ci_high,
      }
    )
  return table


def write_learning_curve_csv(path, table: Sequence[Mapping[str, object]]) -> None:
  """Write `learning_curve.csv`: the `LEARNING_CURVE_COLUMNS`, n_per_class None as 'all'."""
  buffer = io.StringIO(newline="")
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(LEARNING_CURVE_COLUMNS)
  for entry in table:
    missing = [column for column in LEARNING_CURVE_COLUMNS if column not in entry]
    if missing:
      raise ValueError(
        f"learning-curve entry {dict(entry)} lacks the columns {missing}; build the table with learning_curve_table."
      )
    cells = dict(entry)
    if cells["n_per_class"] is None:
      cells["n_per_class"] = ALL_IMAGES_LABEL
    writer.writerow([cells[column] for column in LEARNING_CURVE_COLUMNS])
  storage.write_text(path, buffer.getvalue())


# --- plot ---------------------------------------------------------------------------------------


def _x_positions(sizes: set[int | None]) -> dict[int | None, float]:
  """Where each training-set size goes on the log x axis ('all' right of the largest size)."""
  numeric = sorted(size for size in sizes if size is not None)
  positions: dict[int | None, float] = {size: float(size) for size in numeric}
  if None in sizes:
    positions[None] = (numeric[-1] if numeric else 1.0) * _ALL_POSITION_FACTOR
  return positions


def _draw_arm(
  ax: Axes,
  scores_by_size: Mapping[int | None, np.ndarray],
  positions: Mapping[int | None, float],
  dodge: float,
  color: str,
) -> float:
  """One arm's mean line, interquartile band and per-model points; returns the largest score."""
  sizes = [size for size, scores in scores_by_size.items() if np.isfinite(scores).any()]
  if not sizes:
    return 0.0
  finite = {size: scores_by_size[size][np.isfinite(scores_by_size[size])] for size in sizes}
  x = np.array([positions[size] for size in sizes]) * dodge
  stats = [_statistics(finite[size]) for size in sizes]
  means = np.array([entry["mean"] for entry in stats])

  ax.fill_between(
    x,
    [entry["q25"] for entry in stats],
    [entry["q75"] for entry in stats],
    color=color,
    alpha=0.2,
    linewidth=0,
  )
  # The step to 'all' is dotted: its x distance is symbolic, not a measured size.
  measured = sum(size is not None for size in sizes)
  ax.plot(x[:measured], means[:measured], "-o", color=color, markersize=5, zorder=4)
  if measured < len(sizes):
    ax.plot(x[max(measured - 1, 0) :], means[max(measured - 1, 0) :], ":", color=color, zorder=4)
    ax.plot(x[-1:], means[-1:], "o", color=color, markersize=5, zorder=4)
  for position, size in zip(x, sizes):
    ax.scatter(
      np.full(finite[size].size, position),
      finite[size],
      s=10,
      alpha=0.3,
      color=color,
      linewidths=0,
      zorder=3,
    )
  return max(float(values.max()) for values in finite.values())


def plot_learning_curves(
  rows: Sequence[Mapping[str, object]],
  metric: str,
  path: storage.PathLike,
  *,
  num_classes: int | None = None,
  title: str | None = None,
) -> bool:
  """Save a PNG of `metric` against training images per class: one panel per split, one line
  per arm (mean over models), the interquartile range shaded and every model a faint point.

  Returns False and writes nothing when the rows hold fewer than two distinct training-set
  sizes (a single size is no curve; the box plot shows it). `num_classes` sets the chance line,
  by default the number of `recall/<class>` columns.
  """
  _check_rows(rows, metric)
  if num_classes is not None and num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes}.")
  if num_classes is None:
    num_classes = infer_num_classes(rows)
  sizes = {row["n_per_class"] for row in rows}
  if len(sizes) < 2:
    return False

  groups = _grouped_scores(rows, metric)
  arms = list(dict.fromkeys(arm for arm, _, _ in groups))
  splits = list(dict.fromkeys(split for _, split, _ in groups))
  splits.sort(key=lambda split: _SPLIT_ORDER.get(split, len(_SPLIT_ORDER)))
  positions = _x_positions(sizes)
  colors = {arm: f"C{index % 10}" for index, arm in enumerate(arms)}

  figure = Figure(figsize=(5.5 * len(splits), 4.8), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots(1, len(splits), sharey=True, squeeze=False)[0]
  chance = chance_level(metric, num_classes) if num_classes else None
  largest = 0.0
  for ax, split in zip(axes, splits):
    for arm_index, arm in enumerate(arms):
      scores_by_size = {
        size: scores
        for (group_arm, group_split, size), scores in groups.items()
        if group_arm == arm and group_split == split
      }
      dodge = 2.0 ** (_ARM_DODGE_LOG2 * (arm_index - (len(arms) - 1) / 2))
      largest = max(largest, _draw_arm(ax, scores_by_size, positions, dodge, colors[arm]))
    if chance is not None:
      ax.axhline(chance, linestyle="--", color="grey", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(
      list(positions.values()),
      [ALL_IMAGES_LABEL if size is None else str(size) for size in positions],
    )
    ax.minorticks_off()
    ax.set_xlim(min(positions.values()) / 1.4, max(positions.values()) * 1.4)
    ax.set_xlabel("training images per class")
    ax.set_title(SPLIT_TITLES.get(split, split))
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(metric)
  # Scores live in [0, 1]; only unbounded metrics (nll) may stretch the axis.
  axes[0].set_ylim(0.0, max(1.0, largest * 1.05, (chance or 0.0) * 1.05))

  handles = [Line2D([], [], marker="o", color=colors[arm], label=arm) for arm in arms]
  if chance is not None:
    handles.append(Line2D([], [], linestyle="--", color="grey", label=f"chance ({chance:.2f})"))
  axes[-1].legend(handles=handles, loc="best", fontsize="small")
  figure.suptitle(
    f"{title or f'{metric} vs training images per class'}\n"
    "line: mean over models · band: interquartile range · points: single models",
    fontsize="medium",
  )

  storage.save_figure(figure, path, dpi=_DPI)
  return True
