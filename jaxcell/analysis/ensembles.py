"""Ensembles of the models of one arm: mean probability, majority vote, and BioNIC's (leaky) vote.

Probabilities of M models on N images over C classes are stacked as an array [M, N, C]. jaxcell writes them
per image to `predictions_{test,holdout}.csv`; `workdir.predictions.load_prediction_table` reads such a file back
into one `ArmPredictions` per arm, aligned by image path. Every holdout image is predicted by every model of an arm,
so the holdout stack is complete. A CV test image is predicted only by the models whose test fold holds it
(one per repeat and seed): those entries are out-of-fold predictions, and `out_of_fold_probs` averages them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxcell.evaluation import metrics as metrics_lib
from jaxcell.workdir.predictions import ArmPredictions, PredictionTable

_ROW_SUM_TOLERANCE = 1e-3  # CSV probabilities carry 6 decimals, so rows sum to 1 only approximately.

# --- validation ---------------------------------------------------------------------------------


def as_model_probs(probs) -> np.ndarray:
  """Checks a stack of per-model probabilities [M, N, C]: finite (no NaN), non-negative, rows summing to 1."""
  array = np.asarray(probs, dtype=np.float64)
  if array.ndim != 3 or 0 in array.shape:
    raise ValueError(f"probs must have shape [num_models, num_images, num_classes] (all > 0), got {array.shape}.")
  if np.isnan(array).any():
    raise ValueError(
      "probs contain NaN: some models did not predict some images (a CV-test table, whose models each see "
      "one fold). Use out_of_fold_probs for CV-test predictions, or pass only complete (holdout) stacks."
    )
  if not np.all(np.isfinite(array)) or array.min() < 0:
    raise ValueError("probs must be finite and non-negative; pass softmax outputs, not logits.")
  row_sums = array.sum(axis=-1)
  worst = np.unravel_index(np.argmax(np.abs(row_sums - 1.0)), row_sums.shape)
  if abs(row_sums[worst] - 1.0) > _ROW_SUM_TOLERANCE:
    raise ValueError(
      f"probs rows must sum to 1 (model {worst[0]}, image {worst[1]} sums to {row_sums[worst]:.6f}); "
      "apply a softmax to the logits first."
    )
  return array


def as_targets_and_probs(targets, probs) -> tuple[np.ndarray, np.ndarray]:
  """Checks integer targets [N] against one model's (or one ensemble's) probabilities [N, C]."""
  targets = metrics_lib.as_labels("targets", targets)
  probs = metrics_lib.as_probs(probs, targets.size)
  metrics_lib.as_labels("targets", targets, probs.shape[1])
  return targets, probs


# --- ensembles ----------------------------------------------------------------------------------


def mean_probability(probs) -> np.ndarray:
  """The mean-probability ensemble [N, C] of a stack of model probabilities [M, N, C]."""
  return as_model_probs(probs).mean(axis=0)


def majority_vote(probs) -> tuple[np.ndarray, np.ndarray]:
  """Each model votes for its argmax class; returns the winning class [N] and its share of the votes [N].

  Ties are broken deterministically: among the classes with the most votes, the one with the higher mean
  probability (over all models) wins; if those are exactly equal too, the lower class index wins. A model's
  own argmax ties go to the lower class index, as in `classification_metrics`. Targets are never looked at.
  """
  probs = as_model_probs(probs)
  num_models, _, num_classes = probs.shape
  votes = np.eye(num_classes, dtype=np.int64)[probs.argmax(axis=-1)].sum(axis=0)  # [N, C] vote counts
  tied = votes == votes.max(axis=1, keepdims=True)
  score = np.where(tied, probs.mean(axis=0), -np.inf)
  preds = score.argmax(axis=1)  # first maximum: equal mean probabilities -> lower class index
  share = votes[np.arange(preds.size), preds] / num_models
  return preds, share


def bionic_leaky_vote(probs, targets) -> np.ndarray:
  """BioNIC's voting ensemble, reproduced for comparison with its published `_voting` scores only.

  BioNIC took `statistics.mode` of the row `[target, preds_0, ..., preds_{M-1}]` of its results CSV: the true
  label is one of the M+1 "votes", and on a tie `mode` returns the first value met, which is the target when it
  is among the tied. So an image counts as correct whenever the true class has at least (plurality - 1) model
  votes. This is wrong: the prediction depends on the label it is scored against, so the score is optimistically
  biased and cannot be reproduced without labels. Report `majority_vote` as the ensemble; use this only as a
  clearly labelled compatibility number.
  """
  probs = as_model_probs(probs)
  targets = metrics_lib.as_labels("targets", targets, probs.shape[-1])
  if targets.size != probs.shape[1]:
    raise ValueError(f"targets has {targets.size} entries but probs covers {probs.shape[1]} images.")
  model_preds = probs.argmax(axis=-1)  # [M, N]
  ballots = np.concatenate([targets[None, :], model_preds], axis=0)  # target first, as in BioNIC's CSV row
  votes = np.empty(targets.size, dtype=np.int64)
  for i, ballot in enumerate(ballots.T):
    counts = np.bincount(ballot, minlength=probs.shape[-1])
    # Python's statistics.mode (>= 3.8) is Counter.most_common(1): the first-inserted value among the maxima.
    tied = counts[ballot] == counts.max()
    votes[i] = ballot[np.argmax(tied)]
  return votes


def ensemble_metrics(targets, probs, class_names: Sequence[str], *, include_leaky: bool = False) -> dict[str, float]:
  """Metrics of the mean-probability and majority-vote ensembles of a complete stack [M, N, C].

  Keys: `mean_prob/<metric>` (every `classification_metrics` column), `majority_vote/<metric>` (the label-based
  ones: accuracy, balanced and BioNIC-weighted accuracy, macro F1, per-class recall; the vote has no
  probabilities for AUC or NLL), `member_mean/<metric>` (the average single model, for the ensemble's gain),
  `num_models`, and with `include_leaky` `bionic_leaky_vote/bionic_weighted_accuracy` (see `bionic_leaky_vote`).
  """
  class_names = list(class_names)
  probs = as_model_probs(probs)
  num_classes = len(class_names)
  if probs.shape[-1] != num_classes:
    raise ValueError(f"probs has {probs.shape[-1]} classes but there are {num_classes} class_names.")
  targets = metrics_lib.as_labels("targets", targets, num_classes)
  if targets.size != probs.shape[1]:
    raise ValueError(f"targets has {targets.size} entries but probs covers {probs.shape[1]} images.")

  out: dict[str, float] = {"num_models": float(probs.shape[0])}
  for name, value in metrics_lib.classification_metrics(targets, probs.mean(axis=0), class_names).items():
    out[f"mean_prob/{name}"] = value
  votes, _ = majority_vote(probs)
  out.update(_label_metrics("majority_vote", targets, votes, class_names))
  members = [metrics_lib.classification_metrics(targets, p, class_names) for p in probs]
  for name in ("accuracy", "balanced_accuracy", "bionic_weighted_accuracy", "macro_f1", "roc_auc_ovr", "nll"):
    out[f"member_mean/{name}"] = float(np.mean([m[name] for m in members]))
  if include_leaky:
    leaky = bionic_leaky_vote(probs, targets)
    out["bionic_leaky_vote/bionic_weighted_accuracy"] = metrics_lib.bionic_weighted_accuracy(
      targets, leaky, num_classes
    )
  return out


def _label_metrics(prefix: str, targets: np.ndarray, preds: np.ndarray, class_names: list[str]) -> dict[str, float]:
  num_classes = len(class_names)
  out = {
    f"{prefix}/accuracy": metrics_lib.accuracy(targets, preds),
    f"{prefix}/balanced_accuracy": metrics_lib.balanced_accuracy(targets, preds, num_classes),
    f"{prefix}/bionic_weighted_accuracy": metrics_lib.bionic_weighted_accuracy(targets, preds, num_classes),
    f"{prefix}/macro_f1": metrics_lib.macro_f1(targets, preds, num_classes),
  }
  recall = metrics_lib.per_class_recall(targets, preds, num_classes)
  for name, value in zip(class_names, recall):
    out[f"{prefix}/{metrics_lib.RECALL_PREFIX}{name}"] = float(value)
  return out


# --- prediction CSVs ----------------------------------------------------------------------------


def out_of_fold_probs(table: ArmPredictions | PredictionTable, arm: str | None = None) -> tuple[np.ndarray, tuple]:
  """Per image, the mean of the CV-test (out-of-fold) probabilities of the models that predicted it.

  Each model predicts only its own test fold, so an image gets one prediction per repeat (and seed); these
  are averaged with equal weight per model. Returns (probs [N, C], paths [N]) in the order of `table.paths`,
  so `table.targets` are the matching targets. A `PredictionTable` needs `arm` unless it holds one arm.
  """
  if isinstance(table, PredictionTable):
    if arm is None:
      if len(table.arms) != 1:
        raise ValueError(f"{table.csv_path} holds arms {list(table.arms)}; pass arm=<one of them>.")
      arm = next(iter(table.arms))
    table = table[arm]
  counts = table.present.sum(axis=0)
  if np.any(counts == 0):
    raise ValueError(f"{int((counts == 0).sum())} images of arm {table.arm!r} have no prediction at all.")
  summed = np.where(table.present[..., None], table.probs, 0.0).sum(axis=0)
  return summed / counts[:, None], table.paths
