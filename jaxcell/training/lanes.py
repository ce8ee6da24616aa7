"""Lanes: one lane = one model to train, identified by (arm, seed, repeat, fold, n_per_class).

A lane's randomness (initialisation, sampling, augmentation) comes from a key derived from its identity
alone, never from its position in the study, so any lane can be re-run on its own and must match.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxcell.data import splits as splits_lib

# Two PRNGs, each where it is best. Training draws (sampling, augmentation) use threefry, which gives
# the same bits under vmap as alone, so lane i of a stacked study matches its solo run; XLA's
# RngBitGenerator ('rbg') does not. Initialisation happens per lane outside vmap, and there 'rbg'
# compiles a ResNet's initialisers in ~5 s where threefry takes ~20 s on CPU.
TRAIN_PRNG = "threefry2x32"
INIT_PRNG = "rbg"


@dataclasses.dataclass(frozen=True)
class Lane:
  index: int  # Position in the study (row order of results.csv, checkpoint folder name).
  arm: str  # Name of the study arm (a variant of the set-up); 'main' for single-arm studies.
  seed: int
  repeat: int
  fold: int
  n_per_class: int | None  # None = every training image of the fold.
  learning_rate: float
  weight_decay: float

  @property
  def name(self) -> str:
    n = "all" if self.n_per_class is None else self.n_per_class
    return f"{self.arm}/seed{self.seed}/repeat{self.repeat}/fold{self.fold}/n{n}"

  def key(self, impl: str = TRAIN_PRNG) -> jax.Array:
    """The lane's root PRNG key, from its identity (not its index).

    The arm is left out on purpose: matched lanes of different arms get the same initialisation (where shapes
    agree), batches and augmentations — common random numbers, so paired differences measure the arm, not luck.
    """
    key = jax.random.key(self.seed, impl=impl)
    for part in (self.repeat, self.fold, self.n_per_class or 0):
      key = jax.random.fold_in(key, part)
    return key

  def init_key(self) -> jax.Array:
    """The key of the lane's parameter initialisation."""
    return self.key(INIT_PRNG)

  def train_key(self) -> jax.Array:
    """The key of the lane's training draws (sampling, augmentation); the step is folded in later."""
    return jax.random.fold_in(self.key(), 1)


def make_lanes(arm_configs: dict, num_folds: int) -> list[Lane]:
  """All lanes of a study: arms × sizes × seeds × repeats × folds, each arm with its own hyperparameters.

  `arm_configs` maps arm name -> that arm's config (see jaxcell.arms); the protocol is the same for every arm.
  """
  lanes = []
  for arm, config in arm_configs.items():
    p = config.protocol
    for n in p.n_per_class:
      for s in range(p.num_seeds):
        for repeat in range(p.num_repeats):
          for fold in range(num_folds):
            lanes.append(
              Lane(
                index=len(lanes),
                arm=arm,
                seed=int(config.seed) + s,
                repeat=repeat,
                fold=fold,
                n_per_class=None if n is None else int(n),
                learning_rate=float(config.train.learning_rate),
                weight_decay=float(config.train.weight_decay),
              )
            )
  return lanes


def lane_indices(lane: Lane, splits: splits_lib.Splits, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) image indices of a lane: its fold, subsampled per class when n_per_class is set."""
  train, test = splits_lib.fold_indices(splits, lane.repeat, lane.fold)
  if lane.n_per_class is not None:
    # The subset seed ignores n, so smaller subsets are nested in larger ones (clean learning curves).
    train = splits_lib.subsample_per_class(
      train, labels, lane.n_per_class, seed=lane.seed * 1_000_003 + lane.repeat * 1009 + lane.fold
    )
  return train, test


def sampling_weights(train_idx: np.ndarray, labels: np.ndarray, class_balanced: bool) -> np.ndarray:
  """Per-example sampling probabilities: BioNIC's N/N_class weights (class-balanced) or uniform."""
  train_labels = labels[train_idx]
  if class_balanced:
    counts = np.bincount(train_labels)
    weights = 1.0 / counts[train_labels]
  else:
    weights = np.ones(len(train_idx))
  return (weights / weights.sum()).astype(np.float32)
