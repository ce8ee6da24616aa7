"""Learning-curve table (numbers, order, NaN counting), its CSV, and the learning-curve plot."""

import csv
import math
import random

import numpy as np
import pytest
from PIL import Image

from jaxcell.reporting.learning_curves import (
  LEARNING_CURVE_COLUMNS,
  learning_curve_table,
  plot_learning_curves,
  write_learning_curve_csv,
)

ARMS = ("resnet", "cnn")  # 'resnet' first: the table keeps the study's arm order, not a-z
SIZES = (5, 10, 20, None)
SEEDS = (0, 1)
FOLDS = (0, 1, 2)
SPLITS = ("test", "holdout")


def known_score(arm: str, split: str, size: int | None, seed: int, fold: int) -> float:
  """A distinct, predictable score per model that grows with the training-set size."""
  size_rank = SIZES.index(size)
  return 0.4 + 0.1 * ARMS.index(arm) + 0.1 * size_rank + 0.03 * seed + 0.01 * fold + 0.002 * (split == "holdout")


def study_rows(splits=SPLITS, sizes=SIZES, shuffle_seed=0):
  rows, lane = [], 0
  for arm in ARMS:
    for size in sizes:
      for seed in SEEDS:
        for fold in FOLDS:
          for split in splits:
            score = known_score(arm, split, size, seed, fold)
            rows.append(
              {
                "arm": arm,
                "lane": lane,
                "seed": seed,
                "repeat": 0,
                "fold": fold,
                "n_per_class": size,
                "split": split,
                "num_images": 30,
                "balanced_accuracy": score,
                "accuracy": score + 0.01,
                "recall/a": score,
                "recall/b": score,
              }
            )
          lane += 1
  # Shuffle the rows but keep the arms' order of first appearance: the table must sort the rest.
  first, rest = rows[:1], rows[1:]
  random.Random(shuffle_seed).shuffle(rest)
  return first + rest


def select(rows, arm, split, size, metric="balanced_accuracy"):
  return np.array(
    [row[metric] for row in rows if row["arm"] == arm and row["split"] == split and row["n_per_class"] == size]
  )


# --- table --------------------------------------------------------------------------------------


def test_table_numbers_match_numpy():
  rows = study_rows()
  table = learning_curve_table(rows, "balanced_accuracy", num_resamples=500)
  assert len(table) == len(ARMS) * len(SPLITS) * len(SIZES)
  for entry in table:
    assert tuple(entry) == LEARNING_CURVE_COLUMNS
    values = select(rows, entry["arm"], entry["split"], entry["n_per_class"])
    assert entry["n"] == values.size == len(SEEDS) * len(FOLDS)
    assert entry["n_nan"] == 0
    assert entry["mean"] == pytest.approx(values.mean())
    assert entry["std"] == pytest.approx(values.std(ddof=1))
    assert entry["median"] == pytest.approx(np.median(values))
    assert entry["q25"] == pytest.approx(np.quantile(values, 0.25))
    assert entry["q75"] == pytest.approx(np.quantile(values, 0.75))
    assert entry["min"] == pytest.approx(values.min())
    assert entry["max"] == pytest.approx(values.max())
    assert entry["min"] <= entry["ci_low"] <= entry["mean"] <= entry["ci_high"] <= entry["max"]
    assert entry["ci_low"] < entry["ci_high"]


def test_table_is_sorted_by_arm_split_then_size_with_all_last():
  table = learning_curve_table(study_rows(shuffle_seed=3), "accuracy", num_resamples=10)
  keys = [(entry["arm"], entry["split"], entry["n_per_class"]) for entry in table]
  expected = [(arm, split, size) for arm in ARMS for split in SPLITS for size in SIZES]
  assert keys == expected


def test_table_counts_nan_and_handles_a_single_model():
  rows = study_rows()
  nan_row, other_row = [
    row for row in rows if row["arm"] == "cnn" and row["split"] == "holdout" and row["n_per_class"] == 10
  ][:2]
  nan_row["balanced_accuracy"] = other_row["balanced_accuracy"] = math.nan
  single = dict(rows[0], n_per_class=40, balanced_accuracy=0.9)  # a size with one model
  table = learning_curve_table(rows + [single], "balanced_accuracy", num_resamples=100)

  by_key = {(entry["arm"], entry["split"], entry["n_per_class"]): entry for entry in table}
  with_nan = by_key[("cnn", "holdout", 10)]
  finite = select(rows, "cnn", "holdout", 10)
  finite = finite[~np.isnan(finite)]
  assert (with_nan["n"], with_nan["n_nan"]) == (len(SEEDS) * len(FOLDS) - 2, 2)
  assert with_nan["mean"] == pytest.approx(finite.mean())
  assert with_nan["q75"] == pytest.approx(np.quantile(finite, 0.75))

  lonely = by_key[(single["arm"], single["split"], 40)]
  assert (lonely["n"], lonely["n_nan"]) == (1, 0)
  assert lonely["mean"] == lonely["median"] == lonely["q25"] == lonely["ci_low"] == 0.9
  assert math.isnan(lonely["std"])
  # 40 is sorted between the subset sizes and 'all'
  sizes = [
    entry["n_per_class"] for entry in table if (entry["arm"], entry["split"]) == (single["arm"], single["split"])
  ]
  assert sizes == [5, 10, 20, 40, None]


def test_table_rejects_unknown_metric_and_empty_rows():
  with pytest.raises(ValueError, match="unknown metric 'f2'"):
    learning_curve_table(study_rows(), "f2")
  with pytest.raises(ValueError, match="no result rows"):
    learning_curve_table([], "accuracy")


def test_csv_round_trip(tmp_path):
  rows = study_rows()
  rows[0]["balanced_accuracy"] = math.nan
  table = learning_curve_table(rows, "balanced_accuracy", num_resamples=50)
  path = tmp_path / "out" / "learning_curve.csv"
  write_learning_curve_csv(path, table)

  with path.open(newline="") as handle:
    reader = csv.DictReader(handle)
    assert tuple(reader.fieldnames) == LEARNING_CURVE_COLUMNS
    read = list(reader)
  assert len(read) == len(table)
  for written, row in zip(table, read):
    assert row["arm"] == written["arm"] and row["split"] == written["split"]
    size = written["n_per_class"]
    assert row["n_per_class"] == ("all" if size is None else str(size))
    assert int(row["n"]) == written["n"] and int(row["n_nan"]) == written["n_nan"]
    for column in LEARNING_CURVE_COLUMNS[5:]:
      assert float(row[column]) == pytest.approx(written[column], nan_ok=True)
  assert sum(int(row["n_nan"]) for row in read) == 1


def test_csv_rejects_entries_without_the_table_columns(tmp_path):
  with pytest.raises(ValueError, match=r"lacks the columns \['metric', 'split'"):
    write_learning_curve_csv(tmp_path / "bad.csv", [{"arm": "cnn"}])


# --- plot ---------------------------------------------------------------------------------------


def assert_real_png(path):
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.width > 300 and image.height > 200
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
  assert pixels.std() > 0


def test_plot_writes_a_png_with_both_splits(tmp_path):
  rows = study_rows()
  rows[0]["balanced_accuracy"] = math.nan
  path = tmp_path / "plots" / "learning_curve.png"
  assert plot_learning_curves(rows, "balanced_accuracy", path) is True
  assert_real_png(path)
  with Image.open(path) as image:
    two_panel_width = image.width
  one_split = tmp_path / "one_split.png"
  assert plot_learning_curves(study_rows(splits=("test",)), "accuracy", one_split, title="t")
  with Image.open(one_split) as image:
    assert image.width < two_panel_width  # one panel, not an empty second one
  assert_real_png(one_split)


def test_plot_handles_single_model_sizes_and_unbounded_metrics(tmp_path):
  rows = [row for row in study_rows(splits=("holdout",), sizes=(5, None)) if row["seed"] == 0]
  rows = [dict(row, nll=2.5) for row in rows]  # above 1: the axis must stretch, not clip
  single = dict(rows[0], n_per_class=50, nll=math.nan)  # a size whose only score is nan
  path = tmp_path / "nll.png"
  assert plot_learning_curves(rows + [single], "nll", path, num_classes=3)
  assert_real_png(path)


def test_plot_needs_two_sizes(tmp_path):
  path = tmp_path / "learning_curve.png"
  assert plot_learning_curves(study_rows(sizes=(None,)), "accuracy", path) is False
  assert plot_learning_curves(study_rows(sizes=(10,)), "accuracy", path) is False
  assert not path.exists()


def test_plot_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="unknown metric"):
    plot_learning_curves(study_rows(), "f2", tmp_path / "x.png")
  with pytest.raises(ValueError, match="num_classes must be a positive integer"):
    plot_learning_curves(study_rows(), "accuracy", tmp_path / "x.png", num_classes=0)
