"""Calibration: reliability bins, expected calibration error, temperature scaling, reliability plot."""

import numpy as np
import pytest
from PIL import Image
from scipy.special import log_softmax, softmax

from probability_helpers import binary_probs

from jaxcell.analysis.calibration import (
  apply_temperature,
  expected_calibration_error,
  fit_temperature,
  log_probs,
  reliability_bins,
)
from jaxcell.evaluation.metrics import negative_log_likelihood
from jaxcell.reporting.triage_plots import plot_reliability


# Five bins of width 0.2. Confidences 0.55 | 0.6 | 0.65, 0.7, 0.75 | 0.9, 0.95 (0.6 sits on an edge: bin (0.4, 0.6]).
CONF = [0.55, 0.6, 0.65, 0.7, 0.75, 0.9, 0.95]
PREDS = [0, 0, 1, 1, 1, 1, 0]
TARGETS = [0, 1, 1, 1, 0, 1, 0]  # correct: T F T T F T T


def synthetic_logits(temperature, n=4000, num_classes=4, seed=0):
  """Labels drawn from softmax(logits / temperature): the model's logits are off by exactly that temperature."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, num_classes)) * 3.0
  probs = softmax(logits / temperature, axis=1)
  targets = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
  return logits, np.minimum(targets, num_classes - 1)  # cumsum may end a rounding error below 1


def test_reliability_bins_and_ece_hand_example():
  bins = reliability_bins(TARGETS, binary_probs(CONF, PREDS), num_bins=5)
  np.testing.assert_allclose(bins["bin_edges"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
  np.testing.assert_array_equal(bins["count"], [0, 0, 2, 3, 2])
  np.testing.assert_allclose(bins["confidence"][2:], [0.575, 0.7, 0.925])
  np.testing.assert_allclose(bins["accuracy"][2:], [0.5, 2 / 3, 1.0])
  assert np.isnan(bins["confidence"][0]) and np.isnan(bins["accuracy"][1])
  expected = 2 / 7 * 0.075 + 3 / 7 * abs(2 / 3 - 0.7) + 2 / 7 * 0.075
  assert expected_calibration_error(TARGETS, binary_probs(CONF, PREDS), num_bins=5) == pytest.approx(expected)
  # A confidence exactly on an edge belongs to the bin below it: (0.5, 0.75] with four bins.
  edge = reliability_bins([0, 0], binary_probs([0.75, 0.7500001], [0, 0]), num_bins=4)
  np.testing.assert_array_equal(edge["count"], [0, 0, 1, 1])


def test_ece_is_zero_when_confidence_matches_accuracy():
  # Ten images at confidence 0.8, eight of them right: perfectly calibrated.
  probs = binary_probs([0.8] * 10, [1] * 10)
  targets = [1] * 8 + [0] * 2
  assert expected_calibration_error(targets, probs) == pytest.approx(0.0, abs=1e-12)
  # The same predictions, all wrong: ECE is the whole confidence.
  assert expected_calibration_error([0] * 10, probs) == pytest.approx(0.8)


def test_reliability_bins_reject_bad_input():
  with pytest.raises(ValueError, match="num_bins"):
    reliability_bins(TARGETS, binary_probs(CONF, PREDS), num_bins=0)
  with pytest.raises(ValueError, match="softmax"):
    reliability_bins([0, 1], np.array([[2.0, -1.0], [0.5, 0.5]]))


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(true_temperature):
  logits, targets = synthetic_logits(true_temperature)
  fitted = fit_temperature(logits, targets)
  assert fitted == pytest.approx(true_temperature, rel=0.10)
  # Log-probabilities differ from logits by a per-row constant, which softmax ignores.
  assert fit_temperature(log_softmax(logits, axis=1), targets) == pytest.approx(fitted, rel=1e-4)
  # And the fit lowers the NLL and the ECE of the miscalibrated model.
  before = softmax(logits, axis=1)
  after = apply_temperature(before, fitted)
  assert negative_log_likelihood(targets, after) < negative_log_likelihood(targets, before)
  assert expected_calibration_error(targets, after) < expected_calibration_error(targets, before)


def test_fit_temperature_from_csv_probabilities_with_zeros():
  logits, targets = synthetic_logits(2.0, n=2000, seed=1)
  probs = np.round(softmax(logits, axis=1), 6)  # as read back from predictions CSV: some exact zeros
  assert (probs == 0).any()
  with pytest.raises(ValueError, match="log_probs"), np.errstate(divide="ignore"):
    fit_temperature(np.log(probs), targets)
  assert fit_temperature(log_probs(probs), targets) == pytest.approx(2.0, rel=0.15)


def test_fit_temperature_warns_at_the_bound_and_checks_input():
  logits = np.array([[2.0, 0.0], [0.0, 2.0]])
  with pytest.warns(UserWarning, match="search bound"):
    fitted = fit_temperature(logits, [0, 1])  # all right: the NLL keeps falling as T -> 0
  assert fitted == pytest.approx(0.01)
  with pytest.raises(ValueError, match="rows"):
    fit_temperature(logits, [0, 1, 1])
  with pytest.raises(ValueError, match="shape"):
    fit_temperature(logits[0], [0])


def test_apply_temperature_matches_scaled_logits_and_keeps_predictions():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(3, 50, 4))  # any leading shape, classes last
  probs = softmax(logits, axis=-1)
  np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, atol=1e-12)
  scaled = apply_temperature(probs, 1.7)
  np.testing.assert_allclose(scaled, softmax(logits / 1.7, axis=-1), atol=1e-9)
  np.testing.assert_array_equal(scaled.argmax(axis=-1), probs.argmax(axis=-1))
  assert scaled.max(axis=-1).mean() < probs.max(axis=-1).mean()  # T > 1 softens
  with pytest.raises(ValueError, match="temperature"):
    apply_temperature(probs, 0.0)


def test_plot_reliability_writes_png(tmp_path):
  logits, targets = synthetic_logits(2.0, n=500)
  probs = softmax(logits, axis=1)
  bins = {
    "raw": reliability_bins(targets, probs),
    "temperature-scaled": reliability_bins(targets, apply_temperature(probs, fit_temperature(logits, targets))),
  }
  path = tmp_path / "reliability.png"
  plot_reliability(bins, path)
  image = np.asarray(Image.open(path).convert("L"), dtype=float)
  assert image.shape[0] > 400 and image.shape[1] > 400
  assert image.std() > 5
  with pytest.raises(ValueError, match="no reliability"):
    plot_reliability({}, tmp_path / "empty.png")
