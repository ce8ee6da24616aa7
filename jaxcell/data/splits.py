"""Deterministic evaluation splits: a global holdout, stratified K folds, repeats (BioNIC §2.2).

The protocol, with BioNIC's bugs fixed:
- global holdout: per class floor(holdout_fraction * n) images, chosen at random once;
- CV pool: the rest, capped per class at max_per_class (if set);
- K folds, stratified per class with sizes that differ by at most 1 (BioNIC appended the remainder
  to the last fold, or dropped it); the same folds for every repeat as in BioNIC, or fresh ones per
  repeat with reshuffle_folds=True;
- everything derives from one integer seed, so a split can be rebuilt anywhere, exactly.

With groups (slide, specimen, patient), whole groups are assigned, so that no group is on both
sides of the holdout or of any fold; per-class balance then becomes approximate.
A dataset that ships its own train/test/holdout folders (`given_split`) keeps them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

NOT_IN_CV = -1  # In `Splits.folds`: holdout, or over the per-class cap.
TRAIN_ONLY = -2  # In `Splits.folds`: in the training set of every fold, never tested (given train set).
SPLIT_NAMES = ("train", "test", "holdout")

# Purposes mixed into the seed so that each random choice has its own independent stream.
_HOLDOUT, _CAP, _FOLDS = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Splits:
  holdout: np.ndarray  # int64 sorted indices of the global holdout.
  folds: np.ndarray  # int32 [num_repeats, N]: test-fold id per image per repeat, or NOT_IN_CV / TRAIN_ONLY.
  num_folds: int

  @property
  def num_repeats(self) -> int:
    return self.folds.shape[0]

  @property
  def cv_pool(self) -> np.ndarray:
    """Sorted int64 indices of the images some fold trains or tests on (`folds >= 0` misses TRAIN_ONLY)."""
    return np.flatnonzero((self.folds != NOT_IN_CV).any(axis=0)).astype(np.int64)


def make_splits(
  labels: np.ndarray,
  *,
  holdout_fraction: float,
  num_folds: int,
  num_repeats: int,
  seed: int,
  groups: np.ndarray | None = None,
  max_per_class: int | None = None,
  reshuffle_folds: bool = False,
  given_split: np.ndarray | None = None,
  class_names: Sequence[str] | None = None,
) -> Splits:
  """Builds the holdout and the CV folds of every repeat (see the module docstring).

  `class_names` only makes error messages name classes instead of numbering them.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a non-empty 1-D integer array, got shape {labels.shape} of {labels.dtype}.")
  if labels.min() < 0:
    raise ValueError(f"labels must be >= 0 (class indices), found {labels.min()}.")
  name = (lambda c: repr(class_names[c])) if class_names is not None else str
  counts = np.bincount(labels, minlength=0 if class_names is None else len(class_names))
  for c in np.flatnonzero(counts == 0):
    raise ValueError(f"class {name(c)} has no images; remove it or add images.")
  if not 0 <= holdout_fraction < 1:
    raise ValueError(f"holdout_fraction is {holdout_fraction}; it must be in [0, 1).")
  if num_repeats < 1:
    raise ValueError(f"num_repeats is {num_repeats}; it must be at least 1.")
  if max_per_class is not None and max_per_class < 1:
    raise ValueError(f"max_per_class is {max_per_class}; use None (no cap) or a positive number.")
  groups = _checked_per_image(groups, "groups", labels.size)
  given_split = _checked_per_image(given_split, "given_split", labels.size)
  if given_split is not None:
    unknown = sorted(set(given_split.tolist()) - set(SPLIT_NAMES))
    if unknown:
      raise ValueError(f"given_split has values {unknown}; only {SPLIT_NAMES} are allowed.")
    if groups is not None:
      _warn_if_groups_straddle(groups, given_split)
    if np.any(given_split == "test"):
      return _given_test_split(labels, given_split, num_repeats, seed, max_per_class)
    if holdout_fraction > 0:
      logger.info("Using the given holdout/ folder as the holdout; holdout_fraction is not used.")
  if num_folds < 2:
    raise ValueError(
      f"num_folds is {num_folds}; cross-validation needs at least 2 folds "
      "(a single train/test split comes only from a given test/ folder)."
    )

  if given_split is not None:
    in_holdout = given_split == "holdout"
  elif groups is not None:
    in_holdout = _group_holdout(labels, groups, holdout_fraction, seed)
  else:
    in_holdout = _stratified_holdout(labels, holdout_fraction, seed)
  in_pool = _capped(labels, ~in_holdout, max_per_class, seed)
  _check_enough_for_folds(labels, in_pool, num_folds, max_per_class, name)

  folds = np.full((num_repeats, labels.size), NOT_IN_CV, np.int32)
  for repeat in range(num_repeats):
    if repeat > 0 and not reshuffle_folds:
      folds[repeat] = folds[0]  # BioNIC: the same folds in every repeat.
    elif groups is None:
      folds[repeat] = _stratified_folds(labels, in_pool, num_folds, (seed, _FOLDS, repeat))
    else:
      folds[repeat] = _group_folds(labels, groups, in_pool, num_folds, (seed, _FOLDS, repeat))
  return Splits(holdout=np.flatnonzero(in_holdout).astype(np.int64), folds=folds, num_folds=num_folds)


def fold_indices(splits: Splits, repeat: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices) of one fold of one repeat, both sorted int64."""
  if not 0 <= repeat < splits.num_repeats:
    raise ValueError(f"repeat is {repeat}; there are {splits.num_repeats} repeats.")
  if not 0 <= fold < splits.num_folds:
    raise ValueError(f"fold is {fold}; there are {splits.num_folds} folds.")
  assignment = splits.folds[repeat]
  train = np.flatnonzero((assignment != fold) & (assignment != NOT_IN_CV))
  test = np.flatnonzero(assignment == fold)
  return train.astype(np.int64), test.astype(np.int64)


def subsample_per_class(indices: np.ndarray, labels: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
  """Up to n_per_class indices of each class (all of a smaller class), sorted int64.

  Each class is put in a random order fixed by (seed, class) and cut after n_per_class, so for a
  given seed the n=5 subset lies inside the n=10 subset (learning curves add images, never swap).
  """
  if n_per_class < 1:
    raise ValueError(f"n_per_class is {n_per_class}; it must be at least 1.")
  indices = np.unique(np.asarray(indices, dtype=np.int64))
  labels = np.asarray(labels)
  chosen = []
  for c in np.unique(labels[indices]):
    members = indices[labels[indices] == c]
    order = np.random.default_rng((seed, int(c))).permutation(members.size)
    chosen.append(members[order[:n_per_class]])
  return np.sort(np.concatenate(chosen)) if chosen else indices


def _checked_per_image(values: np.ndarray | None, what: str, n: int) -> np.ndarray | None:
  if values is None:
    return None
  values = np.asarray(values)
  if values.shape != (n,):
    raise ValueError(f"{what} has shape {values.shape}; it needs one entry per image ({n},).")
  return values


def _holdout_size(fraction: float, n: int) -> int:
  # floor as BioNIC's int(n * 0.1); the epsilon stops 0.29 * 100 = 28.999... from losing an image.
  return math.floor(fraction * n + 1e-9)


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  in_holdout = np.zeros(labels.size, bool)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    order = np.random.default_rng((seed, _HOLDOUT, int(c))).permutation(members.size)
    in_holdout[members[order[: _holdout_size(fraction, members.size)]]] = True
  return in_holdout


def _capped(labels: np.ndarray, eligible: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
  """The eligible images, keeping a random max_per_class of each class (fixed for all repeats)."""
  if max_per_class is None:
    return eligible.copy()
  kept = np.zeros(labels.size, bool)
  for c in np.unique(labels):
    members = np.flatnonzero(eligible & (labels == c))
    order = np.random.default_rng((seed, _CAP, int(c))).permutation(members.size)
    kept[members[order[:max_per_class]]] = True
  return kept


def _check_enough_for_folds(
  labels: np.ndarray, in_pool: np.ndarray, num_folds: int, max_per_class: int | None, name
) -> None:
  after = "after the holdout" + (" and the per-class cap" if max_per_class is not None else "")
  for c in np.unique(labels):
    n = int(np.sum(in_pool & (labels == c)))
    if n < num_folds:
      raise ValueError(
        f"class {name(c)} has {n} images {after}, need at least num_folds={num_folds}; lower num_folds or add images."
      )


def _stratified_folds(labels: np.ndarray, in_pool: np.ndarray, num_folds: int, seed: tuple[int, ...]) -> np.ndarray:
  """Deals each class's shuffled images round-robin over the folds (fold sizes differ by <= 1).

  Each class starts dealing where the previous class stopped, so fold totals are balanced too.
  """
  fold_of = np.full(labels.size, NOT_IN_CV, np.int32)
  start = 0
  for c in np.unique(labels):
    members = np.flatnonzero(in_pool & (labels == c))
    members = members[np.random.default_rng((*seed, int(c))).permutation(members.size)]
    fold_of[members] = (start + np.arange(members.size)) % num_folds
    start = (start + members.size) % num_folds
  return fold_of


def _group_counts(labels: np.ndarray, groups: np.ndarray, mask: np.ndarray):
  """Unique groups among the masked images and their per-class image counts [G, C]."""
  ids, group_index = np.unique(groups[mask], return_inverse=True)
  counts = np.zeros((ids.size, labels.max() + 1), np.int64)
  np.add.at(counts, (group_index, labels[mask]), 1)
  return ids, counts


def _group_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Adds whole groups, in random order, while they bring per-class counts closer to the target."""
  ids, counts = _group_counts(labels, groups, np.ones(labels.size, bool))
  target = np.array([_holdout_size(fraction, n) for n in counts.sum(0)])
  taken = np.zeros_like(target)
  chosen = []
  for g in np.random.default_rng((seed, _HOLDOUT)).permutation(ids.size):
    if np.abs(target - taken - counts[g]).sum() < np.abs(target - taken).sum():
      taken += counts[g]
      chosen.append(ids[g])
  if fraction > 0 and len(chosen) == ids.size:
    raise ValueError(
      f"holdout_fraction={fraction} with groups put every group in the holdout; "
      "lower holdout_fraction or use more, smaller groups."
    )
  return np.isin(groups, chosen)


def _group_folds(
  labels: np.ndarray, groups: np.ndarray, in_pool: np.ndarray, num_folds: int, seed: tuple[int, ...]
) -> np.ndarray:
  """Assigns whole groups to folds, largest first, each to the fold where its classes are scarcest."""
  ids, counts = _group_counts(labels, groups, in_pool)
  if ids.size < num_folds:
    raise ValueError(
      f"Only {ids.size} groups are left for cross-validation, need at least "
      f"num_folds={num_folds}; lower num_folds or holdout_fraction, or use finer groups."
    )
  class_totals = np.maximum(counts.sum(0), 1)
  order = np.random.default_rng(seed).permutation(ids.size)
  order = order[np.argsort(-counts[order].sum(1), kind="stable")]  # Random among equal sizes.
  fold_counts = np.zeros((num_folds, counts.shape[1]), np.int64)
  fold_of_group = np.empty(ids.size, np.int32)
  for g in order:
    # Share of each class already in the fold, weighted by this group's classes; ties: emptier fold.
    crowding = (fold_counts / class_totals) @ counts[g]
    fold = np.lexsort((np.arange(num_folds), fold_counts.sum(1), crowding))[0]
    fold_counts[fold] += counts[g]
    fold_of_group[g] = fold
  fold_of = np.full(labels.size, NOT_IN_CV, np.int32)
  fold_of[in_pool] = fold_of_group[np.searchsorted(ids, groups[in_pool])]
  return fold_of


def _warn_if_groups_straddle(groups: np.ndarray, given_split: np.ndarray) -> None:
  # The given folders are the user's decision; say so when they mix a group, but keep them.
  for a, b in (("train", "test"), ("train", "holdout"), ("test", "holdout")):
    shared = np.intersect1d(groups[given_split == a], groups[given_split == b])
    if shared.size:
      logger.warning(
        "%d groups (e.g. %s) have images in both the given %s and %s folders.", shared.size, shared[:5].tolist(), a, b
      )


def _given_test_split(
  labels: np.ndarray, given_split: np.ndarray, num_repeats: int, seed: int, max_per_class: int | None
) -> Splits:
  """The dataset's own train/test/holdout folders: one fold whose test set is the given test set."""
  in_train = _capped(labels, given_split == "train", max_per_class, seed)
  folds = np.full(labels.size, NOT_IN_CV, np.int32)
  folds[in_train] = TRAIN_ONLY
  folds[given_split == "test"] = 0
  return Splits(
    holdout=np.flatnonzero(given_split == "holdout").astype(np.int64),
    folds=np.tile(folds, (num_repeats, 1)),
    num_folds=1,
  )
