"""Tests for jaxcell.data.splits: disjointness, stratification, determinism, groups, errors."""

import numpy as np
import pytest

from jaxcell.data.splits import NOT_IN_CV, TRAIN_ONLY, Splits, fold_indices, make_splits, subsample_per_class


def _labels(*counts: int) -> np.ndarray:
  return np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(counts)])


def _check_partition(splits: Splits, labels: np.ndarray) -> None:
  """Holdout, CV train and CV test are disjoint and the test folds partition the CV pool."""
  for repeat in range(splits.num_repeats):
    pool = np.flatnonzero(splits.folds[repeat] != NOT_IN_CV)
    assert np.intersect1d(pool, splits.holdout).size == 0
    tests = []
    for fold in range(splits.num_folds):
      train, test = fold_indices(splits, repeat, fold)
      assert train.dtype == test.dtype == np.int64
      assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
      assert np.intersect1d(train, test).size == 0
      assert np.intersect1d(train, splits.holdout).size == 0
      np.testing.assert_array_equal(np.union1d(train, test), pool)
      tests.append(test)
    all_tests = np.concatenate(tests)
    assert all_tests.size == np.unique(all_tests).size == pool.size


def test_bionic_holdout_of_100_images_is_exactly_10():
  labels = _labels(50, 50)
  splits = make_splits(labels, holdout_fraction=0.1, num_folds=5, num_repeats=4, seed=0)
  assert splits.holdout.size == 10
  assert np.bincount(labels[splits.holdout]).tolist() == [5, 5]
  assert splits.holdout.dtype == np.int64 and np.all(np.diff(splits.holdout) > 0)
  assert splits.folds.shape == (4, 100) and splits.folds.dtype == np.int32
  _check_partition(splits, labels)


def test_folds_are_stratified_and_balanced_within_one():
  labels = _labels(23, 17, 41)  # Remainders that BioNIC's chunking got wrong.
  splits = make_splits(labels, holdout_fraction=0.1, num_folds=5, num_repeats=1, seed=3)
  _check_partition(splits, labels)
  folds = splits.folds[0]
  for c in range(3):
    per_fold = [np.sum((folds == f) & (labels == c)) for f in range(5)]
    assert max(per_fold) - min(per_fold) <= 1
    assert sum(per_fold) == np.sum(labels == c) - np.sum(labels[splits.holdout] == c)
  totals = np.bincount(folds[folds >= 0], minlength=5)
  assert totals.max() - totals.min() <= 1


def test_same_folds_every_repeat_unless_reshuffled():
  labels = _labels(30, 30)
  same = make_splits(labels, holdout_fraction=0.1, num_folds=3, num_repeats=3, seed=1)
  assert all(np.array_equal(same.folds[0], same.folds[r]) for r in range(3))
  fresh = make_splits(labels, holdout_fraction=0.1, num_folds=3, num_repeats=3, seed=1, reshuffle_folds=True)
  np.testing.assert_array_equal(fresh.folds[0], same.folds[0])
  np.testing.assert_array_equal(fresh.holdout, same.holdout)
  assert not np.array_equal(fresh.folds[1], fresh.folds[0])
  # The CV pool is the same in every repeat; only the fold assignment changes.
  np.testing.assert_array_equal(fresh.folds[1] >= 0, fresh.folds[0] >= 0)
  _check_partition(fresh, labels)


def test_deterministic_by_seed():
  labels = _labels(40, 25, 31)
  kwargs = dict(holdout_fraction=0.2, num_folds=4, num_repeats=2, reshuffle_folds=True)
  a = make_splits(labels, seed=7, **kwargs)
  b = make_splits(labels, seed=7, **kwargs)
  c = make_splits(labels, seed=8, **kwargs)
  np.testing.assert_array_equal(a.holdout, b.holdout)
  np.testing.assert_array_equal(a.folds, b.folds)
  assert not np.array_equal(a.holdout, c.holdout)
  assert not np.array_equal(a.folds, c.folds)


def test_per_class_cap():
  labels = _labels(100, 12)
  splits = make_splits(
    labels, holdout_fraction=0.1, num_folds=5, num_repeats=2, seed=0, max_per_class=20, reshuffle_folds=True
  )
  for r in range(2):
    pool = splits.folds[r] >= 0
    assert np.bincount(labels[pool]).tolist() == [20, 11]  # 12 - floor(1.2) = 11 under the cap.
  assert splits.cv_pool.size == 31 and np.intersect1d(splits.cv_pool, splits.holdout).size == 0
  assert np.bincount(labels[splits.holdout]).tolist() == [10, 1]
  _check_partition(splits, labels)


def test_groups_never_straddle_holdout_or_folds():
  rng = np.random.default_rng(0)
  groups = np.repeat(np.arange(24), rng.integers(3, 9, 24))
  labels = (groups % 3).astype(np.int32)  # Each slide holds one class, as with one slide per condition.
  labels[::7] = (labels[::7] + 1) % 3  # Some slides hold two classes.
  splits = make_splits(
    labels, holdout_fraction=0.15, num_folds=4, num_repeats=2, seed=5, groups=groups, reshuffle_folds=True
  )
  assert splits.holdout.size > 0
  held_out_groups = set(groups[splits.holdout])
  for r in range(2):
    pool = splits.folds[r] >= 0
    assert held_out_groups.isdisjoint(groups[pool])
    for fold in range(4):
      train, test = fold_indices(splits, r, fold)
      assert test.size > 0
      assert set(groups[train]).isdisjoint(groups[test])
  _check_partition(splits, labels)


def test_given_split_with_test_folder_is_one_fold():
  given = np.array(["train"] * 6 + ["test"] * 4 + ["holdout"] * 2)
  labels = _labels(3, 3, 2, 2, 1, 1)
  splits = make_splits(labels, holdout_fraction=0.1, num_folds=5, num_repeats=3, seed=0, given_split=given)
  assert splits.num_folds == 1 and splits.folds.shape == (3, 12)
  np.testing.assert_array_equal(splits.holdout, [10, 11])
  for r in range(3):
    train, test = fold_indices(splits, r, 0)
    np.testing.assert_array_equal(train, np.arange(6))
    np.testing.assert_array_equal(test, np.arange(6, 10))
  assert np.all(splits.folds[:, :6] == TRAIN_ONLY)
  np.testing.assert_array_equal(splits.cv_pool, np.arange(10))


def test_given_holdout_without_test_folder_keeps_cross_validation():
  labels = _labels(20, 20)
  given = np.array(["train"] * 40, dtype="<U7")
  given[[0, 1, 20, 21]] = "holdout"
  splits = make_splits(labels, holdout_fraction=0.3, num_folds=3, num_repeats=1, seed=0, given_split=given)
  np.testing.assert_array_equal(splits.holdout, [0, 1, 20, 21])
  assert splits.num_folds == 3
  _check_partition(splits, labels)


def test_subsample_per_class_is_nested_and_deterministic():
  labels = _labels(30, 8, 20)
  pool = np.arange(2, 58)
  small = subsample_per_class(pool, labels, 5, seed=1)
  large = subsample_per_class(pool, labels, 10, seed=1)
  assert np.bincount(labels[small]).tolist() == [5, 5, 5]
  assert np.bincount(labels[large]).tolist() == [10, 8, 10]  # Class 1 has only 8 in the pool.
  assert np.isin(small, large).all()
  assert np.isin(large, pool).all()
  np.testing.assert_array_equal(small, subsample_per_class(pool[::-1], labels, 5, seed=1))
  assert not np.array_equal(small, subsample_per_class(pool, labels, 5, seed=2))
  assert small.dtype == np.int64 and np.all(np.diff(small) > 0)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(holdout_fraction=1.0), r"holdout_fraction is 1.0; it must be in \[0, 1\)"),
    (dict(holdout_fraction=-0.1), r"holdout_fraction is -0.1"),
    (dict(num_folds=1), r"num_folds is 1; cross-validation needs at least 2 folds"),
    (dict(num_repeats=0), r"num_repeats is 0; it must be at least 1"),
    (
      dict(num_folds=5),
      r"class 'b' has 3 images after the holdout, need at least num_folds=5; "
      r"lower num_folds or add images",
    ),
    (dict(max_per_class=2), r"class 'a' has 2 images after the holdout and the per-class cap"),
  ],
)
def test_errors(kwargs, message):
  labels = _labels(20, 3)
  args = dict(holdout_fraction=0.1, num_folds=3, num_repeats=1, seed=0, class_names=("a", "b"))
  with pytest.raises(ValueError, match=message):
    make_splits(labels, **{**args, **kwargs})


def test_error_for_empty_class():
  with pytest.raises(ValueError, match=r"class 'b' has no images"):
    make_splits(
      _labels(10, 0, 10), holdout_fraction=0.1, num_folds=2, num_repeats=1, seed=0, class_names=("a", "b", "c")
    )
  with pytest.raises(ValueError, match=r"class 'c' has no images"):
    make_splits(_labels(10, 10), holdout_fraction=0.1, num_folds=2, num_repeats=1, seed=0, class_names=("a", "b", "c"))


def test_error_for_fewer_groups_than_folds():
  labels = _labels(10, 10)
  groups = np.array([0] * 7 + [1] * 6 + [2] * 7)
  with pytest.raises(
    ValueError,
    match=r"Only 3 groups are left for cross-validation, need at least "
    r"num_folds=5",
  ):
    make_splits(labels, holdout_fraction=0.0, num_folds=5, num_repeats=1, seed=0, groups=groups)


def test_error_for_bad_given_split_values():
  with pytest.raises(ValueError, match=r"given_split has values \['validation'\]"):
    make_splits(
      _labels(5, 5),
      holdout_fraction=0.0,
      num_folds=2,
      num_repeats=1,
      seed=0,
      given_split=np.array(["train"] * 9 + ["validation"]),
    )
