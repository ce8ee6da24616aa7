"""Metrics against scikit-learn on many random cases, plus BioNIC's own test vectors."""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcell.evaluation import metrics as jm

# BioNIC's dataset_prep_tests vectors: weighted_accuracy(preds, targets) -> expected.
BIONIC_VECTORS = [
  ([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1], 0.0),
  ([0, 0, 1, 1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1], 0.4),
  ([1, 1, 1, 1, 1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0], 0.7),
  ([1, 1, 1, 1, 0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0], 0.6),
]


def random_case(rng, num_classes, num_examples):
  """Labels with some classes missing from targets or preds, and probabilities with ties."""
  target_classes = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
  pred_classes = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
  targets = rng.choice(target_classes, size=num_examples)
  preds = rng.choice(pred_classes, size=num_examples)
  return targets, preds


def tied_probs(rng, num_examples, num_classes):
  """Small integer weights normalised: many exactly equal values within and across rows."""
  weights = rng.integers(1, 4, size=(num_examples, num_classes)).astype(np.float64)
  return weights / weights.sum(axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def quiet_sklearn():
  # sklearn warns (rightly) about classes absent from y_true; the cases are deliberate.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    yield


CASES = [(seed, num_classes) for num_classes in range(2, 7) for seed in range(12)]


@pytest.mark.parametrize("seed, num_classes", CASES)
def test_label_metrics_match_sklearn(seed, num_classes):
  rng = np.random.default_rng(seed * 100 + num_classes)
  targets, preds = random_case(rng, num_classes, num_examples=int(rng.integers(1, 40)))
  labels = np.arange(num_classes)

  np.testing.assert_array_equal(
    jm.confusion_matrix(targets, preds, num_classes),
    skm.confusion_matrix(targets, preds, labels=labels),
  )
  assert jm.confusion_matrix(targets, preds, num_classes).dtype == np.int64
  assert jm.accuracy(targets, preds) == pytest.approx(skm.accuracy_score(targets, preds))
  assert jm.balanced_accuracy(targets, preds, num_classes) == pytest.approx(skm.balanced_accuracy_score(targets, preds))
  assert jm.macro_f1(targets, preds, num_classes) == pytest.approx(
    skm.f1_score(targets, preds, average="macro", zero_division=0)
  )
  sk_recall = skm.recall_score(targets, preds, labels=labels, average=None, zero_division=0)
  recall = jm.per_class_recall(targets, preds, num_classes)
  absent = ~np.isin(labels, targets)
  assert np.all(np.isnan(recall[absent]))
  np.testing.assert_allclose(recall[~absent], sk_recall[~absent])


@pytest.mark.parametrize("seed, num_classes", CASES)
def test_roc_auc_matches_sklearn(seed, num_classes):
  rng = np.random.default_rng(seed * 100 + num_classes)
  num_examples = int(rng.integers(num_classes, 50))
  # Every class present, as sklearn requires for the multiclass score.
  targets = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, num_examples)])
  probs = (
    tied_probs(rng, targets.size, num_classes) if seed % 2 else rng.dirichlet(np.ones(num_classes), size=targets.size)
  )
  if num_classes == 2:
    expected = skm.roc_auc_score(targets, probs[:, 1])
  else:
    expected = skm.roc_auc_score(targets, probs, multi_class="ovr", average="macro")
  assert jm.roc_auc_ovr(targets, probs) == pytest.approx(expected)


def test_roc_auc_uses_only_classes_present_in_targets():
  rng = np.random.default_rng(3)
  targets = rng.choice([0, 2], size=30)
  probs = rng.dirichlet(np.ones(4), size=30)
  expected = np.mean([skm.roc_auc_score(targets == c, probs[:, c]) for c in (0, 2)])
  assert jm.roc_auc_ovr(targets, probs) == pytest.approx(expected)


def test_roc_auc_is_nan_with_a_single_class():
  probs = np.full((4, 3), 1 / 3)
  assert np.isnan(jm.roc_auc_ovr([1, 1, 1, 1], probs))


@pytest.mark.parametrize("preds, targets, expected", BIONIC_VECTORS)
def test_bionic_weighted_accuracy_vectors(preds, targets, expected):
  # BioNIC passes preds first; jaxcell takes targets first, like sklearn.
  assert jm.bionic_weighted_accuracy(targets=targets, preds=preds, num_classes=2) == pytest.approx(expected)


def test_bionic_single_class_predictor_scores_zero():
  targets = [0, 0, 0, 1]
  preds = [0, 0, 0, 0]
  assert jm.balanced_accuracy(targets, preds, 2) == pytest.approx(0.5)
  assert jm.bionic_weighted_accuracy(targets, preds, 2) == 0.0
  # ...even when it is perfect on a single-class test set.
  assert jm.bionic_weighted_accuracy([2, 2], [2, 2], 3) == 0.0


@pytest.mark.parametrize("seed", range(10))
def test_classification_metrics_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  num_classes = int(rng.integers(2, 7))
  names = [f"class_{c}" for c in range(num_classes)]
  targets = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, 20)])
  probs = tied_probs(rng, targets.size, num_classes)
  result = jm.classification_metrics(targets, probs, names)

  assert list(result) == [
    "accuracy",
    "balanced_accuracy",
    "bionic_weighted_accuracy",
    "macro_f1",
    "roc_auc_ovr",
    "nll",
  ] + [f"recall/{name}" for name in names]
  assert all(isinstance(value, float) for value in result.values())
  preds = np.argmax(probs, axis=1)
  assert result["accuracy"] == pytest.approx(skm.accuracy_score(targets, preds))
  assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(targets, preds))
  assert result["macro_f1"] == pytest.approx(skm.f1_score(targets, preds, average="macro", zero_division=0))
  assert result["nll"] == pytest.approx(skm.log_loss(targets, probs, labels=np.arange(num_classes)))
  for c, name in enumerate(names):
    assert result[f"recall/{name}"] == pytest.approx(np.mean(preds[targets == c] == c))


def test_argmax_ties_go_to_lowest_index_and_nll_is_clipped():
  probs = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
  result = jm.classification_metrics([0, 1, 0], probs, ["a", "b", "c"])
  assert result["accuracy"] == pytest.approx(2 / 3)  # rows 0 and 1 are ties resolved downwards
  assert result["recall/a"] == pytest.approx(0.5)
  assert result["recall/b"] == pytest.approx(1.0)
  assert np.isnan(result["recall/c"])
  expected_nll = -(np.log(0.5) + np.log(0.5) + np.log(1e-12)) / 3
  assert result["nll"] == pytest.approx(expected_nll)


def test_every_metric_has_a_description():
  result = jm.classification_metrics([0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]), ["x", "y"])
  for name in result:
    assert jm.describe_metric(name)
  assert "0" in jm.METRIC_DESCRIPTIONS["bionic_weighted_accuracy"]


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: jm.accuracy([0, 1], [0]), "same length"),
    (lambda: jm.accuracy([], []), "empty"),
    (lambda: jm.accuracy([0.5, 1.0], [0, 1]), "integer"),
    (lambda: jm.confusion_matrix([0, 3], [0, 1], 3), "outside"),
    (lambda: jm.confusion_matrix([0, -1], [0, 1], 3), "outside"),
    (lambda: jm.confusion_matrix([[0, 1]], [[0, 1]], 3), "1-D"),
    (lambda: jm.balanced_accuracy([0, 1], [0, 1], 0), "num_classes"),
    (lambda: jm.roc_auc_ovr([0, 1], np.array([[0.9, 0.3], [0.2, 0.8]])), "sum to 1"),
    (lambda: jm.roc_auc_ovr([0, 1], np.array([[2.0, -1.0], [0.2, 0.8]])), "non-negative"),
    (lambda: jm.roc_auc_ovr([0, 1, 1], np.array([[0.5, 0.5], [0.2, 0.8]])), "shape"),
    (lambda: jm.classification_metrics([0, 1], np.eye(2), ["a", "b", "c"]), "columns"),
    (lambda: jm.classification_metrics([0, 2], np.eye(2), ["a", "b"]), "outside"),
    (lambda: jm.classification_metrics([0, 1], np.eye(2), ["a", "a"]), "unique"),
  ],
)
def test_bad_input_raises_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
