"""The in-memory dataset every study starts from (`data/loading.py` builds it from a data config).

A `Dataset` is small enough to hold in memory as uint8 (a few hundred to a few thousand images):
the training engine copies it to the device once and every model gathers its batches by index.
Files that could not be read are carried along as `SkippedFile` entries so that nothing is ever
dropped silently; `workdir.records.write_skipped_report` puts them in a CSV next to the results.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SOURCES = ("synthetic", "folder", "tfds")
SIXTEEN_BIT_MODES = ("full_range", "per_image")


@dataclasses.dataclass(frozen=True)
class SkippedFile:
  """A file under the dataset root that is not part of the dataset, and why."""

  path: str  # Relative to the dataset root.
  reason: str  # Human readable and actionable.


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Images of one classification task, all the same size, with their labels and provenance."""

  images: np.ndarray  # uint8 [N, H, W, C], C in {1, 3}.
  labels: np.ndarray  # int32 [N], index into class_names.
  class_names: tuple[str, ...]  # Alphabetical for folders, like torchvision's ImageFolder.
  paths: tuple[str, ...]  # Relative to the root, or a synthetic id 'synthetic/<class>/00012'.
  groups: np.ndarray | None = None  # int32 [N] group id (slide, specimen, patient), or None.
  given_split: np.ndarray | None = None  # str [N] of 'train'/'test'/'holdout', or None.
  skipped: tuple[SkippedFile, ...] = ()
  # The decoded-image cache file of the input state this dataset was read from (folders read with a cache dir).
  cache_path: str | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def class_counts(self) -> np.ndarray:
    return np.bincount(self.labels, minlength=self.num_classes)

  def __len__(self) -> int:
    return len(self.labels)
