"""Calibration: does a confidence of 0.9 mean 90 % correct? Reliability bins, ECE and temperature scaling.

Confidence is the max class probability and a prediction its argmax (ties to the lower class index).
Temperature scaling divides the logits by one scalar T > 0 (T > 1 softens over-confident models); it
changes confidences but never the predicted class, so accuracy is unchanged.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import optimize, special

from jaxcell.analysis.ensembles import as_targets_and_probs
from jaxcell.evaluation import metrics as metrics_lib

DEFAULT_NUM_BINS = 15
PROB_CLIP = 1e-12  # log(0) would make a confident miss infinitely costly; same clip as metrics' NLL.
TEMPERATURE_BOUNDS = (0.01, 100.0)


def reliability_bins(targets, probs, num_bins: int = DEFAULT_NUM_BINS) -> dict:
  """Per equal-width confidence bin: mean confidence, accuracy and number of images.

  Bin b covers (edges[b], edges[b+1]] of [0, 1] (the first also holds 0). Empty bins have count 0 and nan
  confidence/accuracy. Returns {bin_edges [B+1], confidence [B], accuracy [B], count [B]}.
  """
  if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
  targets, probs = as_targets_and_probs(targets, probs)
  confidence = probs.max(axis=1)
  correct = probs.argmax(axis=1) == targets
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # searchsorted over the interior edges, side="left": a confidence equal to an edge goes to the bin below.
  bins = np.searchsorted(edges[1:-1], confidence, side="left")
  count = np.bincount(bins, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_confidence = np.bincount(bins, weights=confidence, minlength=num_bins) / count
    accuracy = np.bincount(bins, weights=correct.astype(np.float64), minlength=num_bins) / count
  return {"bin_edges": edges, "confidence": mean_confidence, "accuracy": accuracy, "count": count}


def ece_from_bins(bins: dict) -> float:
  """ECE of `reliability_bins` output: sum over non-empty bins of (count / N) x |accuracy - confidence|."""
  count = np.asarray(bins["count"], dtype=np.float64)
  filled = count > 0
  gap = np.abs(np.asarray(bins["accuracy"])[filled] - np.asarray(bins["confidence"])[filled])
  return float(np.sum(count[filled] / count.sum() * gap))


def expected_calibration_error(targets, probs, num_bins: int = DEFAULT_NUM_BINS) -> float:
  """Expected calibration error with `num_bins` equal-width bins over [0, 1] (Guo et al., 2017).

  ECE = sum_b (n_b / N) |acc_b - conf_b|, with acc_b the accuracy and conf_b the mean max-probability of the
  n_b images whose confidence falls in bin b. 0 is perfectly calibrated; the value depends on num_bins and is
  noisy on small test sets, so compare models at the same num_bins and on the same images.
  """
  return ece_from_bins(reliability_bins(targets, probs, num_bins))


def log_probs(probs) -> np.ndarray:
  """log of probabilities clipped at 1e-12, for `fit_temperature` on probabilities (e.g. read from a CSV)."""
  array = np.asarray(probs, dtype=np.float64)
  if not np.all(np.isfinite(array)) or array.min() < 0:
    raise ValueError("probs must be finite and non-negative; pass softmax outputs, not logits.")
  return np.log(np.clip(array, PROB_CLIP, 1.0))


def _nll(scores: np.ndarray, targets: np.ndarray, temperature: float) -> float:
  scaled = scores / temperature
  return float(np.mean(special.logsumexp(scaled, axis=1) - scaled[np.arange(targets.size), targets]))


def fit_temperature(logits_or_log_probs, targets, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
  """The temperature T minimising the NLL of softmax(scores / T), searched over log T within `bounds`.

  Log-probabilities work as well as logits (softmax ignores a per-row constant); for probabilities pass
  `log_probs(probs)`. Fit only on out-of-fold predictions (each CV model on its own test fold): on training
  images the models are over-fitted and near-certain, and fitting on the holdout then scoring the holdout
  would tune on the test set and report an optimistic calibration. Warns when T lands on a bound.
  """
  scores = np.asarray(logits_or_log_probs, dtype=np.float64)
  if scores.ndim != 2 or scores.shape[1] < 2:
    raise ValueError(f"logits must have shape [num_images, num_classes >= 2], got {scores.shape}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError("logits contain inf or nan; for probabilities with zeros pass log_probs(probs) (clipped).")
  targets = metrics_lib.as_labels("targets", targets, scores.shape[1])
  if targets.size != scores.shape[0]:
    raise ValueError(f"targets has {targets.size} entries but logits has {scores.shape[0]} rows.")
  low, high = bounds
  if not 0 < low < high:
    raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}.")

  result = optimize.minimize_scalar(
    lambda log_t: _nll(scores, targets, math.exp(log_t)),
    bounds=(math.log(low), math.log(high)),
    method="bounded",
    options={"xatol": 1e-6},
  )
  # Brent's method stops where the NLL goes flat, which on separable data is short of the bound it heads for;
  # a bound that does as well wins (listed first, so min picks it on a tie) and triggers the warning.
  candidates = {low: _nll(scores, targets, low), high: _nll(scores, targets, high), math.exp(result.x): result.fun}
  temperature = min(candidates, key=candidates.get)
  if min(abs(math.log(temperature / low)), abs(math.log(temperature / high))) < 1e-3:
    warnings.warn(
      f"fitted temperature {temperature:.4g} is at the search bound {bounds}: the predictions are (nearly) "
      "all correct or all wrong, so the NLL keeps falling; treat it as unreliable.",
      stacklevel=2,
    )
  return temperature


def apply_temperature(probs, temperature: float) -> np.ndarray:
  """Rescales probabilities [..., C] to softmax(log(probs) / T), the same as dividing the logits by T."""
  if not (math.isfinite(temperature) and temperature > 0):
    raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")
  scaled = log_probs(probs) / temperature
  return special.softmax(scaled, axis=-1)
