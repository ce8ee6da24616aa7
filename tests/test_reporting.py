"""Results table round trip, summary statistics and intervals, summary.md and box plots."""

import math

import numpy as np
import pytest
from PIL import Image

from jaxcell.reporting.plots import chance_level, plot_boxplots
from jaxcell.workdir.results import ID_COLUMNS, append_rows, read_rows
from jaxcell.reporting.summary import bootstrap_ci, summarize, write_summary_markdown

METRICS = ("accuracy", "balanced_accuracy", "roc_auc_ovr", "recall/a", "recall/b")


def make_rows(arm="resnet", n_models=4, split="test", n_per_class=None, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for lane in range(n_models):
    row = {
      "arm": arm,
      "lane": lane,
      "seed": 7,
      "repeat": lane // 2,
      "fold": lane % 2,
      "n_per_class": n_per_class,
      "split": split,
      "num_images": 20,
    }
    row.update({metric: float(rng.uniform(0.4, 1.0)) for metric in METRICS})
    rows.append(row)
  return rows


def study_rows():
  return (
    make_rows("resnet", split="test", seed=1)
    + make_rows("resnet", split="holdout", seed=2)
    + make_rows("cnn", split="test", seed=3)
    + make_rows("cnn", split="holdout", seed=4)
  )


# --- results table ------------------------------------------------------------------------------


def test_append_and_read_round_trip_with_nan_and_none(tmp_path):
  path = tmp_path / "results.csv"
  first = make_rows(n_models=2, n_per_class=None)
  first[1]["roc_auc_ovr"] = float("nan")
  second = make_rows(n_models=2, n_per_class=10, seed=5)
  second[0]["accuracy"] = np.float32(0.75)  # numpy scalars are accepted
  append_rows(path, first)
  append_rows(path, second)  # resumed run: appends, header written once

  lines = path.read_text().splitlines()
  assert lines[0].split(",")[: len(ID_COLUMNS)] == list(ID_COLUMNS)
  assert lines[0].split(",")[len(ID_COLUMNS) :] == list(METRICS)
  assert len(lines) == 5

  rows = read_rows(path)
  assert [row["n_per_class"] for row in rows] == [None, None, 10, 10]
  assert math.isnan(rows[1]["roc_auc_ovr"])
  assert rows[2]["accuracy"] == 0.75
  for written, read in zip(first + second, rows):
    assert list(read) == list(ID_COLUMNS) + list(METRICS)
    for column in ("arm", "lane", "seed", "repeat", "fold", "split", "num_images"):
      assert read[column] == written[column]
      assert type(read[column]) is type(written[column])
    for metric in METRICS:
      assert read[metric] == pytest.approx(float(written[metric]), nan_ok=True)


def test_rows_with_reordered_columns_are_written_in_file_order(tmp_path):
  path = tmp_path / "results.csv"
  append_rows(path, make_rows(n_models=1))
  reordered = [dict(reversed(list(row.items()))) for row in make_rows(n_models=1, seed=9)]
  append_rows(path, reordered)
  rows = read_rows(path)
  assert rows[1]["accuracy"] == pytest.approx(reordered[0]["accuracy"])


def test_header_mismatch_is_an_error(tmp_path):
  path = tmp_path / "results.csv"
  append_rows(path, make_rows(n_models=1))
  other = make_rows(n_models=1)
  other[0]["recall/c"] = 0.5
  with pytest.raises(ValueError, match=r"only in the rows: \['recall/c'\]"):
    append_rows(path, other)
  assert len(read_rows(path)) == 1  # nothing was appended


@pytest.mark.parametrize(
  "change, message",
  [
    ({"lane": 1.5}, "integer"),
    ({"n_per_class": "all"}, "integer"),
    ({"arm": ""}, "non-empty string"),
    ({"accuracy": "high"}, "number"),
  ],
)
def test_bad_values_are_rejected(tmp_path, change, message):
  row = make_rows(n_models=1)[0] | change
  with pytest.raises(ValueError, match=message):
    append_rows(tmp_path / "results.csv", [row])


def test_rows_must_share_columns_and_id_columns(tmp_path):
  rows = make_rows(n_models=2)
  del rows[1]["accuracy"]
  with pytest.raises(ValueError, match="different columns"):
    append_rows(tmp_path / "a.csv", rows)
  row = make_rows(n_models=1)[0]
  del row["fold"]
  with pytest.raises(ValueError, match="identifying columns"):
    append_rows(tmp_path / "b.csv", [row])


def test_truncated_file_is_reported(tmp_path):
  path = tmp_path / "results.csv"
  append_rows(path, make_rows(n_models=2))
  text = path.read_text()
  last_line_start = text.rindex("\n", 0, len(text) - 1) + 1
  path.write_text(text[: last_line_start + 25])  # an interrupted write cut the last row
  with pytest.raises(ValueError, match="newline"):
    append_rows(path, make_rows(n_models=1))
  with pytest.raises(ValueError, match="line 3"):
    read_rows(path)
  with pytest.raises(FileNotFoundError):
    read_rows(tmp_path / "missing.csv")


# --- summary statistics ---------------------------------------------------------------------------


def test_summarize_matches_numpy():
  rows = study_rows()
  rows[0]["accuracy"] = float("nan")
  summaries = summarize(rows, num_resamples=500)
  assert len(summaries) == 4 * len(METRICS)
  assert [(s["arm"], s["split"]) for s in summaries[:: len(METRICS)]] == [
    ("resnet", "test"),
    ("resnet", "holdout"),
    ("cnn", "test"),
    ("cnn", "holdout"),
  ]
  for entry in summaries:
    values = np.array(
      [row[entry["metric"]] for row in rows if (row["arm"], row["split"]) == (entry["arm"], entry["split"])]
    )
    values = values[~np.isnan(values)]
    assert entry["n"] == values.size
    assert entry["mean"] == pytest.approx(values.mean())
    assert entry["std"] == pytest.approx(values.std(ddof=1))
    assert entry["median"] == pytest.approx(np.median(values))
    assert (entry["min"], entry["max"]) == (values.min(), values.max())
    assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
  first = summaries[0]
  assert (first["metric"], first["n"], first["n_nan"]) == ("accuracy", 3, 1)


def test_summarize_groups_by_training_set_size_and_handles_small_groups():
  rows = make_rows(n_models=1, n_per_class=None) + make_rows(n_models=3, n_per_class=5)
  summaries = summarize(rows, ["accuracy"], num_resamples=200)
  assert [(s["n_per_class"], s["n"]) for s in summaries] == [(5, 3), (None, 1)]
  single = summaries[1]
  assert math.isnan(single["std"])
  assert single["ci_low"] == single["ci_high"] == single["mean"]
  with pytest.raises(ValueError, match="unknown metrics"):
    summarize(rows, ["f2"])
  with pytest.raises(ValueError, match="no result rows"):
    summarize([])


def test_bootstrap_ci_contains_mean_narrows_and_is_deterministic():
  rng = np.random.default_rng(0)
  small = rng.normal(0.7, 0.1, size=10)
  large = rng.normal(0.7, 0.1, size=1000)
  low, high = bootstrap_ci(small)
  assert low < small.mean() < high
  large_low, large_high = bootstrap_ci(large, num_resamples=2000)
  assert large_high - large_low < (high - low) / 3
  assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
  assert bootstrap_ci(small, seed=3) != bootstrap_ci(small, seed=4)
  wider = bootstrap_ci(small, confidence=0.99)
  assert wider[0] < low and wider[1] > high


def test_bootstrap_ci_edge_cases():
  assert bootstrap_ci([0.8]) == (0.8, 0.8)
  assert bootstrap_ci([0.8, float("nan")]) == (0.8, 0.8)
  assert all(math.isnan(v) for v in bootstrap_ci([float("nan")]))
  assert all(math.isnan(v) for v in bootstrap_ci([]))
  assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
  with pytest.raises(ValueError, match="confidence"):
    bootstrap_ci([0.1, 0.2], confidence=95)


def test_write_summary_markdown(tmp_path):
  rows = study_rows()
  rows[-1]["roc_auc_ovr"] = float("nan")
  path = tmp_path / "summary.md"
  text = write_summary_markdown(
    path,
    rows,
    title="Toy study",
    setup_lines=["dataset: toy (2 classes)", "model: resnet"],
    metrics=["accuracy", "roc_auc_ovr"],
    num_resamples=300,
  )
  assert path.read_text() == text
  assert text.startswith("# Toy study\n")
  assert "- dataset: toy (2 classes)" in text
  assert "## How to read this" in text and "Global holdout" in text
  assert "| metric | n | mean | std | median | min–max | 95% CI |" in text
  assert text.index("## resnet") < text.index("## cnn")
  assert text.count("### CV test folds (training images per class: all)") == 2

  summary = {
    (s["arm"], s["split"], s["metric"]): s for s in summarize(rows, ["accuracy", "roc_auc_ovr"], num_resamples=300)
  }
  s = summary[("resnet", "test", "accuracy")]
  expected_row = (
    f"| accuracy | 4 | {s['mean']:.3f} | {s['std']:.3f} | {s['median']:.3f} | "
    f"{s['min']:.3f}–{s['max']:.3f} | {s['ci_low']:.3f}–{s['ci_high']:.3f} |"
  )
  assert expected_row in text
  assert "| roc_auc_ovr | 3 (+1 nan) |" in text
  assert "- `roc_auc_ovr`: " in text


# --- plots --------------------------------------------------------------------------------------


def assert_png(path):
  assert path.stat().st_size > 1000
  with Image.open(path) as image:
    assert image.format == "PNG"
    width, height = image.size
    assert 300 <= width <= 4000 and 300 <= height <= 2000


def test_plot_boxplots_writes_png(tmp_path):
  path = tmp_path / "plots" / "balanced_accuracy.png"
  plot_boxplots(study_rows(), "balanced_accuracy", path, num_classes=2, title="Toy")
  assert_png(path)


def test_plot_boxplots_single_model_nan_and_sizes(tmp_path):
  rows = make_rows(n_models=1, split="test") + make_rows(n_models=1, split="holdout")
  plot_boxplots(rows, "accuracy", tmp_path / "single.png")
  assert_png(tmp_path / "single.png")

  rows = study_rows() + make_rows("cnn", n_models=2, split="holdout", n_per_class=5)
  for row in rows:
    if row["arm"] == "cnn" and row["split"] == "holdout":
      row["roc_auc_ovr"] = float("nan")  # a whole box without data
  rows[0]["roc_auc_ovr"] = float("nan")
  plot_boxplots(rows, "roc_auc_ovr", tmp_path / "nan.png", num_classes=3)
  assert_png(tmp_path / "nan.png")


def test_plot_boxplots_rejects_unknown_metric(tmp_path):
  with pytest.raises(ValueError, match="unknown metric"):
    plot_boxplots(study_rows(), "f2", tmp_path / "x.png")
  assert not (tmp_path / "x.png").exists()


def test_chance_levels():
  assert chance_level("balanced_accuracy", 4) == 0.25
  assert chance_level("recall/a", 2) == 0.5
  assert chance_level("roc_auc_ovr", 5) == 0.5
  assert chance_level("nll", 3) == pytest.approx(math.log(3))
  assert chance_level("something_else", 3) is None
