"""Classification metrics for small, possibly imbalanced test sets (numpy only).

Every metric takes integer class labels (targets, preds) or class probabilities and returns plain
Python floats, so results can go straight into the results table. Conventions follow scikit-learn
(the test suite checks each metric against it); `bionic_weighted_accuracy` reproduces the one
metric the BioNIC study reported, including its rule that a single-class predictor scores 0.

Classes absent from the targets have no recall; they are skipped by the averages (and reported as
nan per class) instead of silently counting as 0 or 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_DESCRIPTIONS: dict[str, str] = {
  "accuracy": "Fraction of images whose predicted class is the true class.",
  "balanced_accuracy": (
    "Mean per-class recall over the classes present in the test set; "
    "unlike accuracy, a majority-class guesser scores only 1/num_classes."
  ),
  "bionic_weighted_accuracy": (
    "BioNIC's reported 'weighted accuracy': balanced accuracy, except that a model "
    "predicting the same class for every image scores 0."
  ),
  "macro_f1": (
    "Unweighted mean F1 (harmonic mean of precision and recall) over the classes "
    "that occur in the targets or the predictions."
  ),
  "roc_auc_ovr": (
    "Mean one-vs-rest ROC AUC over the classes present in the test set: the chance that a "
    "random image of a class gets a higher probability for it than a random other image."
  ),
  "nll": "Mean negative log-likelihood of the true class (cross-entropy; lower is better).",
  "recall/<class>": "Fraction of the images of this class that were predicted as this class.",
}

RECALL_PREFIX = "recall/"
# The metrics of classification_metrics besides the per-class recalls, in its order.
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "bionic_weighted_accuracy", "macro_f1", "roc_auc_ovr", "nll")
_PROB_CLIP = 1e-12
_ROW_SUM_TOLERANCE = 1e-3


def describe_metric(name: str) -> str:
  """The plain-English description of a metric name, including `recall/<class>` columns."""
  if name.startswith(RECALL_PREFIX):
    return METRIC_DESCRIPTIONS["recall/<class>"]
  return METRIC_DESCRIPTIONS.get(name, "")


# --- input validation ---------------------------------------------------------------------------


def _check_num_classes(num_classes: int) -> int:
  is_integer = isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool)
  if not is_integer or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
  return int(num_classes)


def as_labels(name: str, labels, num_classes: int | None = None) -> np.ndarray:
  """Checks `labels` (`name` in messages): non-empty, 1-D, integer, in [0, num_classes) or just >= 0; as int64."""
  array = np.asarray(labels)
  if array.ndim != 1:
    raise ValueError(f"{name} must be a 1-D sequence of class indices, got shape {array.shape}.")
  if array.size == 0:
    raise ValueError(f"{name} is empty; metrics need at least one example.")
  if array.dtype.kind not in "iu":
    raise ValueError(
      f"{name} must hold integer class indices, got dtype {array.dtype}; "
      "convert labels with .astype(int) (or map class names to indices) first."
    )
  if array.min() < 0 or (num_classes is not None and array.max() >= num_classes):
    limit = f"[0, {num_classes - 1}]" if num_classes is not None else "non-negative"
    raise ValueError(
      f"{name} holds labels outside {limit}: min {array.min()}, max {array.max()}. "
      "Check num_classes / class_names against the dataset."
    )
  return array.astype(np.int64)


def _as_label_pair(targets, preds, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  targets = as_labels("targets", targets, num_classes)
  preds = as_labels("preds", preds, num_classes)
  if targets.shape != preds.shape:
    raise ValueError(f"targets and preds must have the same length, got {targets.size} and {preds.size}.")
  return targets, preds


def as_probs(probs, num_examples: int) -> np.ndarray:
  """Checks probabilities [num_examples, C]: finite, non-negative, rows summing to 1; returns them as float64."""
  array = np.asarray(probs, dtype=np.float64)
  if array.ndim != 2 or array.shape[0] != num_examples:
    raise ValueError(f"probs must have shape [num_examples={num_examples}, num_classes], got {array.shape}.")
  if not np.all(np.isfinite(array)) or array.min() < 0:
    raise ValueError("probs must be finite and non-negative; pass softmax outputs, not logits.")
  row_sums = array.sum(axis=1)
  worst = int(np.argmax(np.abs(row_sums - 1.0)))
  if abs(row_sums[worst] - 1.0) > _ROW_SUM_TOLERANCE:
    raise ValueError(
      f"probs rows must sum to 1 (row {worst} sums to {row_sums[worst]:.6f}); apply a softmax to the logits first."
    )
  return array


# --- label-based metrics ------------------------------------------------------------------------


def confusion_matrix(targets, preds, num_classes: int) -> np.ndarray:
  """Counts [C, C]: row = true class, column = predicted class (scikit-learn's convention)."""
  num_classes = _check_num_classes(num_classes)
  targets, preds = _as_label_pair(targets, preds, num_classes)
  counts = np.bincount(targets * num_classes + preds, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(np.int64)


def per_class_recall(targets, preds, num_classes: int) -> np.ndarray:
  """Recall of each class; nan for classes with no example in `targets`."""
  counts = confusion_matrix(targets, preds, num_classes)
  support = counts.sum(axis=1)
  recall = np.full(num_classes, np.nan)
  present = support > 0
  recall[present] = np.diag(counts)[present] / support[present]
  return recall


def balanced_accuracy(targets, preds, num_classes: int) -> float:
  """Mean recall over the classes present in `targets` (== sklearn balanced_accuracy_score)."""
  return float(np.nanmean(per_class_recall(targets, preds, num_classes)))


def bionic_weighted_accuracy(targets, preds, num_classes: int) -> float:
  """BioNIC's weighted accuracy: balanced accuracy, but 0.0 if every prediction is one class.

  Note the argument order: BioNIC's own `weighted_accuracy(preds, targets)` takes preds first.
  """
  targets, preds = _as_label_pair(targets, preds, _check_num_classes(num_classes))
  if np.unique(preds).size == 1:
    return 0.0
  return balanced_accuracy(targets, preds, num_classes)


def accuracy(targets, preds) -> float:
  """Fraction of correct predictions."""
  targets, preds = _as_label_pair(targets, preds)
  return float(np.mean(targets == preds))


def macro_f1(targets, preds, num_classes: int) -> float:
  """Mean F1 over classes seen in targets or preds (== sklearn f1_score(average='macro'))."""
  counts = confusion_matrix(targets, preds, num_classes)
  true_positives = np.diag(counts)
  false_positives = counts.sum(axis=0) - true_positives
  false_negatives = counts.sum(axis=1) - true_positives
  # A class seen anywhere has a non-zero denominator, so no zero-division case remains.
  seen = (counts.sum(axis=0) + counts.sum(axis=1)) > 0
  denominator = 2 * true_positives + false_positives + false_negatives
  f1 = 2 * true_positives[seen] / denominator[seen]
  return float(np.mean(f1))


# --- probability-based metrics ------------------------------------------------------------------


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, tied values sharing the mean of their ranks."""
  _, inverse, tie_counts = np.unique(values, return_inverse=True, return_counts=True)
  ends = np.cumsum(tie_counts)
  mean_rank = ends - (tie_counts - 1) / 2.0
  return mean_rank[inverse.reshape(-1)]


def _binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
  """ROC AUC via the Mann-Whitney U statistic (ties count one half)."""
  num_positive = int(is_positive.sum())
  num_negative = is_positive.size - num_positive
  positive_rank_sum = _average_ranks(scores)[is_positive].sum()
  u_statistic = positive_rank_sum - num_positive * (num_positive + 1) / 2.0
  return float(u_statistic / (num_positive * num_negative))


def roc_auc_ovr(targets, probs) -> float:
  """Macro one-vs-rest ROC AUC over the classes present in `targets`; nan if fewer than two.

  With two probability columns this is the usual binary AUC of probs[:, 1]. Equals sklearn's
  roc_auc_score(multi_class='ovr', average='macro') whenever every class occurs in targets.
  """
  targets = as_labels("targets", targets)
  probs = as_probs(probs, targets.size)
  num_classes = probs.shape[1]
  as_labels("targets", targets, num_classes)
  present = np.unique(targets)
  if present.size < 2:
    return float("nan")
  if num_classes == 2:
    return _binary_auc(targets == 1, probs[:, 1])
  return float(np.mean([_binary_auc(targets == c, probs[:, c]) for c in present]))


def negative_log_likelihood(targets, probs) -> float:
  """Mean -log p(true class), with probabilities clipped at 1e-12 so a confident miss stays finite."""
  targets = as_labels("targets", targets)
  probs = as_probs(probs, targets.size)
  as_labels("targets", targets, probs.shape[1])
  true_class_probs = probs[np.arange(targets.size), targets]
  return float(-np.mean(np.log(np.clip(true_class_probs, _PROB_CLIP, 1.0))))


def classification_metrics(targets, probs, class_names: Sequence[str]) -> dict[str, float]:
  """All metrics of one model on one split, in the results-table column order.

  Predictions are argmax(probs), ties going to the lowest class index.
  """
  class_names = list(class_names)
  if not class_names:
    raise ValueError("class_names is empty; pass the dataset's class names in label order.")
  if len(set(class_names)) != len(class_names):
    raise ValueError(f"class_names must be unique, got {class_names}.")
  num_classes = len(class_names)
  targets = as_labels("targets", targets, num_classes)
  probs = as_probs(probs, targets.size)
  if probs.shape[1] != num_classes:
    raise ValueError(f"probs has {probs.shape[1]} columns but there are {num_classes} class_names.")
  preds = np.argmax(probs, axis=1)  # np.argmax returns the first maximum: ties -> lowest index.

  metrics = {
    "accuracy": accuracy(targets, preds),
    "balanced_accuracy": balanced_accuracy(targets, preds, num_classes),
    "bionic_weighted_accuracy": bionic_weighted_accuracy(targets, preds, num_classes),
    "macro_f1": macro_f1(targets, preds, num_classes),
    "roc_auc_ovr": roc_auc_ovr(targets, probs),
    "nll": negative_log_likelihood(targets, probs),
  }
  recall = per_class_recall(targets, preds, num_classes)
  for name, value in zip(class_names, recall):
    metrics[f"{RECALL_PREFIX}{name}"] = float(value)
  return metrics


def nan_metrics(class_names) -> dict[str, float]:
  """The keys of `classification_metrics`, every value NaN: the row of a model that could not be scored."""
  return {
    **{name: float("nan") for name in SCALAR_METRICS},
    **{f"{RECALL_PREFIX}{c}": float("nan") for c in class_names},
  }
