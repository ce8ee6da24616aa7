"""Confidence triage: risk-coverage curves, thresholds for a target accuracy, triage CSV and image copies."""

import csv

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score

from probability_helpers import binary_probs

from jaxcell.analysis.triage import (
  HIGH,
  LOW,
  aurc,
  copy_triage_images,
  risk_coverage,
  threshold_for_accuracy,
  threshold_interval,
  triage_at,
  triage_rows,
  write_triage_csv,
)
from jaxcell.reporting.triage_plots import plot_risk_coverage


# Six images, most confident first: correct, correct, wrong (tied 0.8 with the next), correct, wrong, correct.
CONF = [0.95, 0.9, 0.8, 0.8, 0.7, 0.6]
PREDS = [1, 0, 1, 1, 0, 0]
TARGETS = np.array([1, 0, 0, 1, 1, 0])


def random_case(n=300, seed=0):
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.ones(3) * 0.5, size=n)
  # Confident predictions are more often right, like a real model.
  right = rng.random(n) < probs.max(axis=1)
  targets = np.where(right, probs.argmax(axis=1), (probs.argmax(axis=1) + 1) % 3)
  return targets, probs


def test_risk_coverage_hand_example():
  curve = risk_coverage(TARGETS, binary_probs(CONF, PREDS))
  np.testing.assert_allclose(curve["thresholds"], [0.95, 0.9, 0.8, 0.7, 0.6])
  np.testing.assert_allclose(curve["coverage"], [1 / 6, 2 / 6, 4 / 6, 5 / 6, 1.0])
  np.testing.assert_allclose(curve["accuracy_covered"], [1, 1, 3 / 4, 3 / 5, 4 / 6])
  np.testing.assert_allclose(curve["risk"], 1 - curve["accuracy_covered"])
  # Step integral: 1/6*0 + 1/6*0 + 2/6*(1/4) + 1/6*(2/5) + 1/6*(2/6)
  assert curve["aurc"] == pytest.approx(2 / 6 * 0.25 + 1 / 6 * 0.4 + 1 / 6 * (2 / 6))


def test_risk_coverage_properties_and_aurc_without_ties():
  targets, probs = random_case()
  curve = risk_coverage(targets, probs)
  assert np.all(np.diff(curve["coverage"]) > 0)
  assert np.all(np.diff(curve["thresholds"]) < 0)
  assert curve["coverage"][-1] == pytest.approx(1.0)
  assert curve["accuracy_covered"][-1] == pytest.approx(accuracy_score(targets, probs.argmax(axis=1)))
  # No ties in random floats: AURC is the mean risk of the top-k most confident images, k = 1..N.
  order = np.argsort(-probs.max(axis=1))
  correct = (probs.argmax(axis=1) == targets)[order]
  top_k_risk = 1 - np.cumsum(correct) / np.arange(1, correct.size + 1)
  assert aurc(targets, probs) == pytest.approx(top_k_risk.mean())
  # Confidence that carries information beats a random ranking of the same predictions.
  assert aurc(targets, probs) < 1 - accuracy_score(targets, probs.argmax(axis=1))


def test_triage_at_counts_and_empty_groups():
  probs = binary_probs(CONF, PREDS)
  out = triage_at(TARGETS, probs, 0.8)  # kept: >= 0.8 (BioNIC's rule), four images, one wrong
  assert (out["num_kept"], out["num_deferred"], out["num_correct_kept"], out["num_correct_deferred"]) == (4, 2, 3, 1)
  assert out["coverage"] == pytest.approx(4 / 6)
  assert out["accuracy_kept"] == pytest.approx(0.75)
  assert out["accuracy_deferred"] == pytest.approx(0.5)
  everything = triage_at(TARGETS, probs, 0.5)
  assert everything["coverage"] == 1.0 and np.isnan(everything["accuracy_deferred"])
  assert np.isnan(triage_at(TARGETS, probs, 0.99)["accuracy_kept"])
  with pytest.raises(ValueError, match="threshold"):
    triage_at(TARGETS, probs, 80)


def test_threshold_for_accuracy_exact():
  probs = binary_probs(CONF, PREDS)
  # Covered accuracies by threshold: 0.95->1, 0.9->1, 0.8->0.75, 0.7->0.6, 0.6->0.667.
  assert threshold_for_accuracy(TARGETS, probs, 1.0)["threshold"] == pytest.approx(0.9)
  hit = threshold_for_accuracy(TARGETS, probs, 0.75)
  assert hit["threshold"] == pytest.approx(0.8)
  assert (hit["coverage"], hit["num_kept"], hit["reason"]) == (pytest.approx(4 / 6), 4, None)
  # 0.65 is reached at 0.8 and again at 0.6 (accuracy is not monotone): the lowest threshold wins.
  low = threshold_for_accuracy(TARGETS, probs, 0.65)
  assert low["threshold"] == pytest.approx(0.6) and low["coverage"] == pytest.approx(1.0)
  miss = threshold_for_accuracy(np.array([0, 1]), binary_probs([0.9, 0.8], [1, 0]), 0.9)
  assert miss["threshold"] is None and miss["coverage"] == 0.0
  assert "no threshold reaches accuracy 0.9" in miss["reason"]


def test_threshold_interval_across_models():
  probs = binary_probs(CONF, PREDS)
  unreachable = (np.array([0, 1]), binary_probs([0.9, 0.8], [1, 0]))
  models = [(TARGETS, probs), (TARGETS[:4], probs[:4]), unreachable, (TARGETS[:2], probs[:2])]
  out = threshold_interval(models, 0.75)
  # Per model: coverage 4/6 at 0.8; 4/4 at 0.8; unreachable -> 0; 2/2 at 0.9.
  np.testing.assert_allclose(out["coverages"], [4 / 6, 1.0, 0.0, 1.0])
  assert out["thresholds"][2] is None and out["reasons"][2] is not None
  assert out["num_unreachable"] == 1 and out["num_models"] == 4
  np.testing.assert_allclose(out["coverage_interval"], np.percentile([4 / 6, 1.0, 0.0, 1.0], [2.5, 97.5]))
  np.testing.assert_allclose(out["threshold_interval"], np.percentile([0.8, 0.8, 0.9], [2.5, 97.5]))
  with pytest.raises(ValueError, match="empty"):
    threshold_interval([], 0.9)


def test_triage_rows_and_csv(tmp_path):
  rows = triage_rows([f"im{i}.png" for i in range(6)], TARGETS, binary_probs(CONF, PREDS), ["bad", "good"], 0.85)
  assert [r["bucket"] for r in rows] == [HIGH, HIGH, LOW, LOW, LOW, LOW]
  assert rows[2] == {"path": "im2.png", "target": "bad", "prediction": "good", "confidence": 0.8, "bucket": LOW}
  path = tmp_path / "out" / "triage.csv"
  write_triage_csv(path, rows)
  with open(path, newline="") as f:
    read = list(csv.DictReader(f))
  assert list(read[0]) == ["path", "target", "prediction", "confidence", "bucket"]
  assert read[0]["confidence"] == "0.950000" and read[5]["bucket"] == LOW
  with pytest.raises(ValueError, match="paths"):
    triage_rows(["only_one.png"], TARGETS, binary_probs(CONF, PREDS), ["bad", "good"], 0.85)


def test_copy_triage_images_names_collisions_and_missing(tmp_path):
  source = tmp_path / "images"
  for name in ("bad/cell.png", "good/cell.png", "good/other.png"):
    (source / name).parent.mkdir(parents=True, exist_ok=True)
    (source / name).write_bytes(name.encode())
  rows = [
    {"path": "bad/cell.png", "target": "bad", "prediction": "bad", "confidence": 0.9, "bucket": HIGH},
    {"path": "good/cell.png", "target": "bad", "prediction": "bad", "confidence": 0.95, "bucket": HIGH},
    {"path": "good/other.png", "target": "good/ok", "prediction": "bad", "confidence": 0.6, "bucket": LOW},
    {"path": "good/missing.png", "target": "good", "prediction": "good", "confidence": 0.7, "bucket": LOW},
  ]
  out = tmp_path / "triage"
  report = copy_triage_images(rows, source, out)
  assert report["failed"] == [(str(source / "good/missing.png"), "source file not found")]
  names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
  assert names == [
    "high_confidence/target-bad__pred-bad__cell.png",
    "high_confidence/target-bad__pred-bad__cell__2.png",  # same name, different source: not overwritten
    "low_confidence/target-good_ok__pred-bad__other.png",  # "/" in a class name cannot become a folder
  ]
  assert (out / "high_confidence/target-bad__pred-bad__cell__2.png").read_bytes() == b"good/cell.png"
  assert len(report["copied"]) == 3
  # A second run into the same folder keeps the first run's files.
  again = copy_triage_images(rows[:1], source, out)
  assert again["copied"][0][1].endswith("cell__3.png")
  with pytest.raises(ValueError, match="bucket"):
    copy_triage_images([dict(rows[0], bucket="medium")], source, out)


def test_plot_risk_coverage_writes_png(tmp_path):
  targets, probs = random_case()
  curves = {"model": risk_coverage(targets, probs), "hand": risk_coverage(TARGETS, binary_probs(CONF, PREDS))}
  path = tmp_path / "plots" / "risk_coverage.png"
  plot_risk_coverage(curves, path)
  image = np.asarray(Image.open(path).convert("L"), dtype=float)
  assert image.shape[0] > 300 and image.shape[1] > 600
  assert image.std() > 5  # lines and text, not a blank canvas
  with pytest.raises(ValueError, match="no risk-coverage"):
    plot_risk_coverage({}, tmp_path / "empty.png")
