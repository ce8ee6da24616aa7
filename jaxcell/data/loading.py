"""`load_dataset`, the one entry point from a data config to a `Dataset`: the synthetic cells, an image folder or a
tensorflow-datasets dataset, with the image format checked and optional groups (slide, patient) attached from a
regex or a CSV."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from collections.abc import Sequence

import numpy as np

from jaxcell.data.dataset import SIXTEEN_BIT_MODES, SOURCES, Dataset
from jaxcell.data import channel_files, decode, tfds_source
from jaxcell.data.folder import read_image_folder
from jaxcell.data.synthetic import make_synthetic_cells

logger = logging.getLogger(__name__)


def load_dataset(data_config, cache_dir: str | None = None, write_cache: bool = True) -> Dataset:
  """Builds the dataset a config describes ('synthetic', 'folder' or 'tfds') and attaches its groups.

  `data_config` is an ml_collections ConfigDict with the fields source, root, image_size, channels,
  resize, sixteen_bit, group_regex, group_csv, tfds_name, tfds_split, tfds_data_dir and synthetic (images_per_class,
  seed).
  """
  source = data_config.source
  image_size, channels = _validated_image_format(data_config)
  resize = data_config.get("resize", "resize")
  if resize not in decode.RESIZE_MODES:
    raise ValueError(f"data.resize is {resize!r}; use one of {decode.RESIZE_MODES}.")
  if source == "synthetic":
    synthetic = data_config.synthetic
    # The synthetic cells have no original size: a centre crop keeps the middle of a rendering at twice the size.
    rendered = 2 * image_size if resize == "center_crop" else image_size
    dataset = make_synthetic_cells(
      images_per_class=synthetic.images_per_class,
      image_size=rendered,
      seed=synthetic.seed,
      channels=channels,
      collection=synthetic.get("collection", "demo"),
    )
    if resize == "center_crop":
      crops = np.stack([decode.center_crop(image, image_size) for image in dataset.images])
      dataset = dataclasses.replace(dataset, images=crops)
  elif source == "folder":
    root = data_config.get("root")
    if not root:
      raise ValueError(
        "data.source is 'folder' but data.root is empty; set --config.data.root to "
        "a folder laid out as root/<class>/<image>."
      )
    sixteen_bit = data_config.get("sixteen_bit", "full_range")
    if sixteen_bit not in SIXTEEN_BIT_MODES:
      raise ValueError(f"data.sixteen_bit is {sixteen_bit!r}; use one of {SIXTEEN_BIT_MODES}.")
    dataset = read_image_folder(
      root,
      image_size,
      channels,
      sixteen_bit,
      cache_dir=cache_dir,
      write_cache=write_cache,
      resize=resize,
      channel_pattern=data_config.get("channel_pattern") or "",
    )
  elif source == "tfds":
    if not data_config.get("tfds_name"):
      raise ValueError(
        "data.source is 'tfds' but data.tfds_name is empty; set it, e.g. --config.data.tfds_name=malaria."
      )
    dataset = tfds_source.read_tfds(
      data_config.tfds_name,
      data_config.get("tfds_split", "train"),
      data_config.get("tfds_data_dir", ""),
      image_size,
      channels,
      data_config.get("sixteen_bit", "full_range"),
      cache_dir=cache_dir,
      write_cache=write_cache,
      resize=resize,
    )
  else:
    raise ValueError(f"data.source is {source!r}; use one of {SOURCES}.")

  group_regex = data_config.get("group_regex")
  group_csv = data_config.get("group_csv")
  if group_regex and group_csv:
    raise ValueError("Set at most one of data.group_regex and data.group_csv.")
  if group_regex:
    keys = _group_keys_from_regex(dataset.paths, group_regex)
  elif group_csv:
    keys = _group_keys_from_csv(dataset.paths, group_csv)
  else:
    keys = None
  if keys is not None:
    dataset = dataclasses.replace(dataset, groups=_group_ids(dataset.paths, keys))

  logger.info(
    "Loaded %d images in %d classes %s (per class %s)%s; skipped %d files.",
    len(dataset),
    dataset.num_classes,
    list(dataset.class_names),
    dataset.class_counts.tolist(),
    "" if dataset.groups is None else f" in {len(np.unique(dataset.groups))} groups",
    len(dataset.skipped),
  )
  if dataset.skipped:
    first = dataset.skipped[0]
    logger.warning(
      "Skipped %d files that are not usable images (e.g. %s: %s); the run's skipped-files report lists them all.",
      len(dataset.skipped),
      first.path,
      first.reason,
    )
  return dataset


def _validated_image_format(data_config) -> tuple[int, int]:
  image_size = data_config.image_size
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(
      f"data.image_size is {image_size!r}; it must be a positive int (the side of the square images, e.g. 64 or 224)."
    )
  channels = data_config.channels
  if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
    raise ValueError(f"data.channels is {channels!r}; use 1 (greyscale), 3 (RGB) or the image's channel count.")
  return int(image_size), int(channels)


def _group_keys_from_regex(paths: Sequence[str], pattern: str) -> list[str | None]:
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"data.group_regex {pattern!r} is not a valid regular expression: {e}") from e
  keys = []
  for path in paths:
    match = regex.search(path)
    if match is None:
      keys.append(None)
    elif regex.groups:
      keys.append(match.group(1))
    else:
      keys.append(match.group(0))
  return keys


def _group_keys_from_csv(paths: Sequence[str], csv_path: str) -> list[str | None]:
  if not os.path.isfile(csv_path):
    raise ValueError(f"data.group_csv {csv_path!r} does not exist.")
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    if reader.fieldnames is None or not {"path", "group"} <= set(reader.fieldnames):
      raise ValueError(f"data.group_csv {csv_path!r} must have the columns path,group (found {reader.fieldnames}).")
    path_to_group = {_normalized(row["path"]): row["group"] for row in reader}
  return [path_to_group.get(_normalized(path)) for path in paths]


def _normalized(path: str) -> str:
  return path.strip().replace("\\", "/").removeprefix("./")


def _group_ids(paths: Sequence[str], keys: Sequence[str | None]) -> np.ndarray:
  """Maps group keys to int ids in sorted key order; every image must have a group."""
  missing = [path for path, key in zip(paths, keys) if key is None or key == ""]
  if missing:
    raise ValueError(
      f"{len(missing)} images have no group (first {min(5, len(missing))}: "
      f"{missing[:5]}); fix data.group_regex / data.group_csv so that every image "
      "gets one."
    )
  key_to_id = {key: i for i, key in enumerate(sorted(set(keys)))}
  return np.array([key_to_id[key] for key in keys], dtype=np.int32)


def source_text(data_config) -> str:
  """Where the images came from, in words, for summaries and reports."""
  if data_config.source == "folder":
    return data_config.root
  if data_config.source == "tfds":
    return f"tfds {data_config.tfds_name}[{data_config.tfds_split}]"
  collection = data_config.synthetic.get("collection", "demo")
  return f"synthetic cells (seed {data_config.synthetic.seed}{'' if collection == 'demo' else ', ' + collection})"


def source_format(data_config, dataset: Dataset) -> dict:
  """Sizes, channel counts and bit depths of the files the dataset was read from (decode.format_summary), so that
  prediction can warn about new images unlike them."""
  if data_config.source != "folder":
    size, channels = _validated_image_format(data_config)
    return {"min_side": size, "max_side": size, "channels": [channels], "bits": [8]}
  pattern = data_config.get("channel_pattern") or ""
  if pattern:  # One channel file stands for its image; the image has data.channels of them.
    files = channel_files.image_files(data_config.root, dataset.paths, pattern).values()
    found = [os.path.join(data_config.root, f[0]) for f in files if f]
    described = [dict(d, channels=data_config.channels) for d in map(decode.describe, found) if d]
    return decode.format_summary(described)
  return decode.format_summary([decode.describe(os.path.join(data_config.root, path)) for path in dataset.paths])
