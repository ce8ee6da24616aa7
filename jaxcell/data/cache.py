"""The decoded-image cache: one .npz per input state (a folder's listing, a tfds dataset's name/version/split), with
the images, labels, names, given splits and skipped files of a `Dataset`. Plain arrays only (never pickles), written
atomically; an unreadable cache is ignored with a warning and the images decoded again."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from jaxcell.data.dataset import Dataset, SkippedFile

logger = logging.getLogger(__name__)


def cache_path(cache_dir: str, kind: str, state) -> str:
  """The cache file of one input state (any JSON-able description of everything the decoded images depend on)."""
  key = hashlib.sha256(json.dumps(state).encode()).hexdigest()[:24]
  return os.path.join(cache_dir, f"jaxcell-{kind}-{key}.npz")


def write(path: str, dataset: Dataset) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  temporary = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(
    temporary,
    images=dataset.images,
    labels=dataset.labels,
    class_names=np.array(dataset.class_names),
    paths=np.array(dataset.paths),
    given_split=np.array([] if dataset.given_split is None else dataset.given_split, dtype=str),
    skipped_paths=np.array([s.path for s in dataset.skipped], dtype=str),
    skipped_reasons=np.array([s.reason for s in dataset.skipped], dtype=str),
  )
  os.replace(temporary, path)  # Atomic: a reader never sees half a file.
  logger.info("Cached %d decoded images in %s.", len(dataset), path)


def read(path: str) -> Dataset | None:
  """The cached dataset, or None when there is no (readable) cache at `path`."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as cache:
      given_split = cache["given_split"]
      return Dataset(
        images=cache["images"],
        labels=cache["labels"],
        class_names=tuple(cache["class_names"].tolist()),
        paths=tuple(cache["paths"].tolist()),
        given_split=given_split if given_split.size else None,
        skipped=tuple(
          SkippedFile(p, r) for p, r in zip(cache["skipped_paths"].tolist(), cache["skipped_reasons"].tolist())
        ),
        cache_path=path,
      )
  except Exception as e:  # pylint: disable=broad-except
    logger.warning("Ignoring unreadable cache %s (%s); decoding the images again.", path, e)
    return None


def save(dataset: Dataset) -> None:
  """Caches a dataset read with write_cache=False under the input state it was read from (no re-scan, so a file
  changed since is not cached under its new state), unless that state is cached already."""
  if dataset.cache_path is not None and not os.path.exists(dataset.cache_path):
    write(dataset.cache_path, dataset)
