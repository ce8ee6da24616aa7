"""Summary statistics with bootstrap intervals, and the study's `summary.md`.

Rows (from `workdir.results.read_rows`) are grouped by (arm, split, n_per_class); each metric gets
n, mean, std, median, min, max and a percentile-bootstrap confidence interval of the mean over
the trained models. NaN scores (e.g. AUC on a split with a single class) are not averaged in, but
they are counted (`n_nan`) and shown, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxcell.evaluation.metrics import describe_metric
from jaxcell.workdir.results import CV_TEST_SPLIT, HOLDOUT_SPLIT, metric_columns
from jaxcell.workdir import storage

SPLIT_TITLES = {CV_TEST_SPLIT: "CV test folds", HOLDOUT_SPLIT: "Global holdout"}
_SPLIT_ORDER = {CV_TEST_SPLIT: 0, HOLDOUT_SPLIT: 1}
# Bounds the resample matrix (resamples x values) so huge inputs don't exhaust memory.
_BOOTSTRAP_CHUNK_ELEMENTS = 2_000_000


def bootstrap_ci(
  values: Sequence[float] | np.ndarray,
  *,
  confidence: float = 0.95,
  num_resamples: int = 10_000,
  seed: int = 0,
) -> tuple[float, float]:
  """Percentile bootstrap confidence interval of the mean; nans are ignored.

  Returns (nan, nan) when no finite value is left and (v, v) for a single value.
  """
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence}.")
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be at least 1, got {num_resamples}.")
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  values = values[~np.isnan(values)]
  if values.size == 0:
    return float("nan"), float("nan")
  if values.size == 1:
    return float(values[0]), float(values[0])

  rng = np.random.default_rng(seed)
  chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // values.size)
  resampled_means = []
  for start in range(0, num_resamples, chunk):
    indices = rng.integers(0, values.size, size=(min(chunk, num_resamples - start), values.size))
    resampled_means.append(values[indices].mean(axis=1))
  resampled_means = np.concatenate(resampled_means)
  tail = (1.0 - confidence) / 2.0
  low, high = np.quantile(resampled_means, [tail, 1.0 - tail])
  return float(low), float(high)


def group_sort_key(group: tuple[str, str, int | None], arm_order: dict[str, int]) -> tuple:
  """Table order of (arm, split, n_per_class): arms as first seen, test before holdout, 'all' last."""
  arm, split, n_per_class = group
  return (
    arm_order[arm],
    _SPLIT_ORDER.get(split, len(_SPLIT_ORDER)),
    split,
    n_per_class is None,  # 'all images' after the subset sizes
    n_per_class or 0,
  )


def summarize(
  rows: Sequence[Mapping[str, object]],
  metrics: Sequence[str] | None = None,
  *,
  confidence: float = 0.95,
  num_resamples: int = 10_000,
  seed: int = 0,
) -> list[dict[str, object]]:
  """One dict per (arm, split, n_per_class, metric) with n, n_nan, mean, std, median, min, max,
  ci_low and ci_high. Groups are ordered by arm (first appearance), split (test, holdout, other)
  and n_per_class (ascending, 'all' last); metrics default to every metric column."""
  if not rows:
    raise ValueError("no result rows to summarize; has the study finished any lane?")
  metrics = list(metrics) if metrics is not None else metric_columns(rows)
  unknown = [metric for metric in metrics if metric not in rows[0]]
  if unknown:
    raise ValueError(f"unknown metrics {unknown}; the rows have {metric_columns(rows)}.")

  groups: dict[tuple[str, str, int | None], list[Mapping[str, object]]] = {}
  arm_order: dict[str, int] = {}
  for row in rows:
    arm_order.setdefault(row["arm"], len(arm_order))
    groups.setdefault((row["arm"], row["split"], row["n_per_class"]), []).append(row)

  summaries = []
  for group in sorted(groups, key=lambda g: group_sort_key(g, arm_order)):
    arm, split, n_per_class = group
    for metric in metrics:
      all_values = np.array([row[metric] for row in groups[group]], dtype=np.float64)
      values = all_values[~np.isnan(all_values)]
      n = values.size
      ci_low, ci_high = bootstrap_ci(values, confidence=confidence, num_resamples=num_resamples, seed=seed)
      summaries.append(
        {
          "arm": arm,
          "split": split,
          "n_per_class": n_per_class,
          "metric": metric,
          "n": n,
          "n_nan": int(all_values.size - n),
          "mean": float(values.mean()) if n else float("nan"),
          "std": float(values.std(ddof=1)) if n >= 2 else float("nan"),
          "median": float(np.median(values)) if n else float("nan"),
          "min": float(values.min()) if n else float("nan"),
          "max": float(values.max()) if n else float("nan"),
          "ci_low": ci_low,
          "ci_high": ci_high,
        }
      )
  return summaries


# --- markdown -----------------------------------------------------------------------------------


def _number(value: float) -> str:
  return "n/a" if np.isnan(value) else f"{value:.3f}"


def _range(low: float, high: float) -> str:
  return "n/a" if np.isnan(low) else f"{low:.3f}–{high:.3f}"


def _how_to_read(confidence: float, num_resamples: int) -> list[str]:
  percent = f"{confidence * 100:g}%"
  return [
    "## How to read this",
    "",
    "Each row of a table summarises one metric over all trained models of an arm (seeds × "
    "repeats × folds). **CV test folds**: every model scored on the cross-validation fold it "
    "did not train on; folds of one repeat share training images, so these scores are not "
    "independent. **Global holdout**: every model scored on the same held-out images, never "
    "used for training by any model; their spread shows how much the trained model varies, "
    "not how much the test images would. "
    f"The **{percent} CI** is a percentile bootstrap interval ({num_resamples:,} resamples) "
    "of the mean over models; it treats the models as independent and ignores the finite "
    "holdout, so read it as a lower bound on the real uncertainty. `n` counts models with a "
    "score; `(+k nan)` marks models whose metric is undefined on that split (for example AUC "
    "when the split holds a single class).",
    "",
  ]


def _group_table(entries: Sequence[Mapping[str, object]], confidence: float) -> list[str]:
  lines = [
    f"| metric | n | mean | std | median | min–max | {confidence * 100:g}% CI |",
    "|---|---|---|---|---|---|---|",
  ]
  for entry in entries:
    n = f"{entry['n']}" + (f" (+{entry['n_nan']} nan)" if entry["n_nan"] else "")
    lines.append(
      f"| {entry['metric']} | {n} | {_number(entry['mean'])} | {_number(entry['std'])} | "
      f"{_number(entry['median'])} | {_range(entry['min'], entry['max'])} | "
      f"{_range(entry['ci_low'], entry['ci_high'])} |"
    )
  return lines


def write_summary_markdown(
  path: storage.PathLike,
  rows: Sequence[Mapping[str, object]],
  *,
  title: str,
  setup_lines: Sequence[str],
  metrics: Sequence[str] | None = None,
  confidence: float = 0.95,
  num_resamples: int = 10_000,
  seed: int = 0,
) -> str:
  """Write `summary.md` (title, setup, how to read it, one table per arm and split, metric
  glossary) and return its text."""
  summaries = summarize(rows, metrics, confidence=confidence, num_resamples=num_resamples, seed=seed)
  lines = [f"# {title}", ""]
  lines += [f"- {line}" for line in setup_lines]
  lines += [""] + _how_to_read(confidence, num_resamples)

  tables: dict[tuple, list[Mapping[str, object]]] = {}
  for entry in summaries:
    tables.setdefault((entry["arm"], entry["split"], entry["n_per_class"]), []).append(entry)
  current_arm = None
  for (arm, split, n_per_class), entries in tables.items():
    if arm != current_arm:
      lines += [f"## {arm}", ""]
      current_arm = arm
    images = "all" if n_per_class is None else str(n_per_class)
    lines += [f"### {SPLIT_TITLES.get(split, split)} (training images per class: {images})", ""]
    lines += _group_table(entries, confidence) + [""]

  lines += ["## Metrics", ""]
  shown = dict.fromkeys(entry["metric"] for entry in summaries)
  lines += [f"- `{metric}`: {describe_metric(metric)}" for metric in shown]
  text = "\n".join(lines) + "\n"

  storage.write_text(path, text)
  return text
