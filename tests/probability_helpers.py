"""Small probability arrays shared by the triage and calibration tests."""

import numpy as np


def binary_probs(confidences, preds):
  """[N, 2] probabilities whose max is `confidences` on class `preds`."""
  confidences, preds = np.asarray(confidences, float), np.asarray(preds)
  probs = np.empty((confidences.size, 2))
  probs[np.arange(confidences.size), preds] = confidences
  probs[np.arange(confidences.size), 1 - preds] = 1.0 - confidences
  return probs
