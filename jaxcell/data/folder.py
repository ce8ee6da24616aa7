"""Reads an image folder (root/<class>/<image>, or root/{train,test,holdout}/<class>/<image>) into a `Dataset`.

scan.py finds the files (every entry used or skipped with its reason), decode.py turns each into uint8 greyscale or
RGB of one square size. A file that cannot be used is reported as a SkippedFile, never dropped silently. Decoding is
the slow part, so the decoded arrays can be cached in one .npz per input state (the listing with sizes and times).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os

import numpy as np

from jaxcell import progress
from jaxcell.data import cache, channel_files
from jaxcell.data.dataset import Dataset, SkippedFile
from jaxcell.data.decode import RESIZE_MODES, decode_image, failure_reason
from jaxcell.data.scan import EXPECTED_LAYOUT, scan_folder

logger = logging.getLogger(__name__)

_CACHE_VERSION = 2  # 2: N-channel images, channel_pattern in the key.
_MAX_DECODE_THREADS = 8


def read_image_folder(
  root: str,
  image_size: int,
  channels: int,
  sixteen_bit: str = "full_range",
  cache_dir: str | None = None,
  write_cache: bool = True,
  resize: str = "resize",
  channel_pattern: str = "",
) -> Dataset:
  """Reads every image under `root`, resized (or centre-cropped, resize='center_crop') to image_size x image_size
  with `channels` channels.

  With `cache_dir`, a cache of the same input state is read instead of decoding; a fresh decode is cached there
  unless `write_cache` is False (a study validates before it writes anything, then calls `cache.save`). The
  returned dataset's `cache_path` names that cache file either way.

  With `channel_pattern`, each image's channels are separate files grouped by their names (channel_files.py)."""
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f"image_size is {image_size!r}; it must be a positive int.")
  if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
    raise ValueError(f"channels is {channels!r}; use 1 (greyscale), 3 (RGB) or the number of channels (>= 1).")
  if sixteen_bit not in ("full_range", "per_image"):
    raise ValueError(f"sixteen_bit is {sixteen_bit!r}; use 'full_range' or 'per_image'.")
  if resize not in RESIZE_MODES:
    raise ValueError(f"resize is {resize!r}; use one of {RESIZE_MODES}.")
  if not os.path.isdir(root):
    raise ValueError(f"Image folder {root!r} does not exist or is not a folder. {EXPECTED_LAYOUT}")
  if not os.access(root, os.R_OK | os.X_OK):
    raise ValueError(f"Image folder {root!r} cannot be read (permission denied); check its permissions.")
  class_names, candidates, skipped = scan_folder(root)
  cache_path = None
  if cache_dir is not None:
    decoding = [image_size, channels, sixteen_bit, resize, channel_pattern]
    cache_path = _cache_path(root, candidates, skipped, decoding, cache_dir)
    cached = cache.read(cache_path)
    if cached is not None:
      logger.info("Read %d decoded images from the cache %s.", len(cached), cache_path)
      return cached

  files_of = None
  if channel_pattern:
    candidates, files_of, not_grouped = channel_files.group(candidates, channel_pattern, channels)
    skipped += not_grouped
  decoded = _decode_all(root, [path for path, _, _ in candidates], image_size, channels, sixteen_bit, resize, files_of)
  images, labels, paths, splits = [], [], [], []
  for (path, class_name, split), result in zip(candidates, decoded):
    if isinstance(result, SkippedFile):
      skipped.append(result)
      continue
    images.append(result)
    labels.append(class_names.index(class_name))
    paths.append(path)
    splits.append(split)

  if not images:
    raise ValueError(
      f"No readable image under {root!r} ({len(skipped)} files skipped, e.g. "
      f"{[(s.path, s.reason) for s in skipped[:3]]}). {EXPECTED_LAYOUT}"
    )
  counts = np.bincount(labels, minlength=len(class_names))
  for name, count in zip(class_names, counts):
    if count == 0:
      raise ValueError(
        f"Class {name!r} under {root!r} has no readable image; every file in its "
        "folder was skipped. Fix or remove those files (see the skipped-file report)."
      )
  dataset = Dataset(
    images=np.stack(images),
    labels=np.array(labels, dtype=np.int32),
    class_names=tuple(class_names),
    paths=tuple(paths),
    given_split=None if splits[0] is None else np.array(splits),
    skipped=tuple(sorted(skipped, key=lambda s: s.path)),
    cache_path=cache_path,
  )
  if cache_path is not None and write_cache:
    cache.write(cache_path, dataset)
  return dataset


def _decode_all(
  root: str, paths: list[str], image_size: int, channels: int, sixteen_bit: str, resize: str, files_of=None
) -> list[np.ndarray | SkippedFile]:
  """Decodes in a small thread pool (PIL releases the GIL); results keep the order of `paths`. `files_of` maps
  grouped image ids to their channel files."""

  def decode_or_skip(path: str) -> np.ndarray | SkippedFile:
    try:
      if files_of is not None:
        return channel_files.decode_channels(root, files_of[path], image_size, channels, sixteen_bit, resize)
      return decode_image(os.path.join(root, path), image_size, channels, sixteen_bit, resize)
    except Exception as e:  # pylint: disable=broad-except
      return SkippedFile(path, failure_reason(e))

  workers = min(_MAX_DECODE_THREADS, os.cpu_count() or 1)
  out = []
  with progress.stage("read images", total=len(paths), unit="images") as bar:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      for result in pool.map(decode_or_skip, paths):
        out.append(result)
        bar.update()
  return out


def _listing_with_stats(root: str, paths: list[str]) -> list[tuple[str, int, int]]:
  """(path, size, mtime) of every entry; links that cannot be followed count by the link itself."""
  listing = []
  for path in sorted(paths):
    full = os.path.join(root, path.rstrip("/"))
    try:
      stat = os.stat(full)
    except OSError:
      stat = os.lstat(full)
    listing.append((path, stat.st_size, stat.st_mtime_ns))
  return listing


def _cache_path(root, candidates, skipped, decoding: list, cache_dir: str) -> str:
  listing = _listing_with_stats(root, [path for path, _, _ in candidates] + [s.path for s in skipped])
  state = [_CACHE_VERSION, os.path.abspath(root), listing, *decoding]
  return cache.cache_path(cache_dir, "folder", state)
