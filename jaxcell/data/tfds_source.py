"""Reads a tensorflow-datasets image-classification dataset (malaria, colorectal_histology, patch_camelyon, ...)
into the same in-memory `Dataset` as an image folder.

Every example is converted like a file (decode.from_array: uint8, data.channels, antialiased bilinear resize), its
path is its stable tfds id ('tfds:<name>/<split>/<tfds_id>', the record file and index within it), so splits, caches
and predictions are reproducible; examples come in the dataset's stored order (shuffle_files=False). The class
names are the label feature's names, in its order. The decoded images are cached like a folder's, keyed by the
dataset's name, version, split, data folder, size and channels.

Nothing is downloaded here: a study must not start a multi-GB download on its own. A dataset that is not prepared
gets an error saying how to prepare it (`tfds build NAME`, and where a manual download goes).
"""

from __future__ import annotations

import difflib
import logging
import os

import numpy as np

from jaxcell import progress
from jaxcell.data import cache, decode
from jaxcell.data.dataset import Dataset, SkippedFile

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1


class TfdsError(ValueError):
  """A tfds dataset that cannot be read as configured; the message says what to do."""


def read_tfds(
  name: str,
  split: str,
  data_dir: str,
  image_size: int,
  channels: int,
  sixteen_bit: str = "full_range",
  cache_dir: str | None = None,
  write_cache: bool = True,
  resize: str = "resize",
) -> Dataset:
  """Reads split `split` (any tfds split spec: 'train', 'train[:2000]', 'train+test') of tfds dataset `name`
  from `data_dir` ('' = tfds's default, $TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  tfds = _tensorflow_datasets()
  builder = _builder(tfds, name, data_dir)
  image_key, label_key = _feature_keys(tfds, builder, name)
  cache_path = None
  if cache_dir is not None:
    state = [_CACHE_VERSION, name, str(builder.info.version), split, os.path.abspath(builder.data_dir)]
    cache_path = cache.cache_path(cache_dir, "tfds", [*state, image_size, channels, sixteen_bit, resize])
    cached = cache.read(cache_path)
    if cached is not None:
      logger.info("Read %d decoded images of tfds %s[%s] from the cache %s.", len(cached), name, split, cache_path)
      return cached

  examples = _examples(tfds, builder, name, split)
  class_names = tuple(builder.info.features[label_key].names)
  images, labels, paths, skipped = [], [], [], []
  index = -1
  total = _split_size(builder, split)
  try:
    with progress.stage(f"read tfds {name}[{split}]", total=total, unit="examples", time_as="read images") as bar:
      for index, example in enumerate(examples):
        bar.update()
        tfds_id = example.get("tfds_id", b"")
        path = f"tfds:{name}/{split}/" + (tfds_id.decode() if tfds_id else f"{index:08d}")
        try:
          images.append(decode.from_array(np.asarray(example[image_key]), image_size, channels, sixteen_bit, resize))
        except Exception as e:  # pylint: disable=broad-except
          skipped.append(SkippedFile(path, decode.failure_reason(e)))
          continue
        labels.append(int(example[label_key]))
        paths.append(path)
  except Exception as e:  # pylint: disable=broad-except  (TensorFlow's DataLossError, a truncated record...)
    first_line = (str(e).strip().splitlines() or [""])[0][:300]  # TensorFlow appends a whole traceback.
    raise TfdsError(
      f"Reading tfds {name}[{split}] failed after {index + 1} examples ({type(e).__name__}: {first_line}); the "
      f"prepared files may be incomplete or corrupt: prepare them again with `tfds build {name} --overwrite`."
    ) from e

  if not images:
    raise TfdsError(f"tfds {name}[{split}] has no usable example ({len(skipped)} skipped); check data.tfds_split.")
  counts = np.bincount(labels, minlength=len(class_names))
  empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
  if empty:
    raise TfdsError(
      f"tfds {name}[{split}] has no example of class(es) {empty}; take a split that holds every class "
      "(a slice such as 'train[:500]' may not)."
    )
  dataset = Dataset(
    images=np.stack(images),
    labels=np.array(labels, dtype=np.int32),
    class_names=class_names,
    paths=tuple(paths),
    skipped=tuple(skipped),
    cache_path=cache_path,
  )
  if cache_path is not None and write_cache:
    cache.write(cache_path, dataset)
  return dataset


def _tensorflow_datasets():
  """tensorflow_datasets, imported on first use (it loads TensorFlow: ~0.7 GB and seconds, only for this source),
  with TensorFlow kept off the GPUs, whose memory JAX needs."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow's devices are already initialised (an earlier call, or the user's own code).
    pass
  return tfds


def _split_size(builder, split: str) -> int | None:
  """How many examples the split spec selects, where the prepared dataset's metadata says (for the ETA)."""
  try:
    return int(builder.info.splits[split].num_examples)
  except Exception:  # pylint: disable=broad-except  (not prepared, mocked, or a spec tfds cannot size)
    return None


def _builder(tfds, name: str, data_dir: str):
  try:
    return tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    close = difflib.get_close_matches(name, tfds.list_builders(with_community_datasets=False), n=3)
    hint = f" Did you mean {close}?" if close else " `tfds.list_builders()` lists them."
    raise TfdsError(f"data.tfds_name={name!r} is not a tensorflow-datasets dataset.{hint}") from e


def _feature_keys(tfds, builder, name: str) -> tuple[str, str]:
  """The example's image and class-label features (preferring ones called 'image' and 'label')."""
  features = builder.info.features
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
  if not images or not labels:
    raise TfdsError(
      f"tfds {name} is not an image-classification dataset: jaxcell needs an Image and a ClassLabel feature "
      f"(it has {dict((k, type(f).__name__) for k, f in features.items())})."
    )
  return ("image" if "image" in images else images[0]), ("label" if "label" in labels else labels[0])


def _examples(tfds, builder, name: str, split: str):
  """The split's examples as NumPy dicts, in stored order, with their tfds ids."""
  read_config = tfds.ReadConfig(add_tfds_id=True, try_autocache=False)
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
  except AssertionError as e:  # tfds's way of saying "not prepared".
    raise TfdsError(_not_prepared(builder, name)) from e
  except (ValueError, KeyError) as e:
    known = sorted(builder.info.splits) if builder.info.splits else []
    raise TfdsError(
      f"data.tfds_split={split!r} is not a split of tfds {name} ({e}); its splits are {known or 'unknown'} "
      "(slices such as 'train[:80%]' and unions such as 'train+test' work too)."
    ) from e
  return tfds.as_numpy(dataset)


def _not_prepared(builder, name: str) -> str:
  data_dir = str(builder.data_dir_root)  # Not builder.data_dir: that is <root>/<name>[/<config>]/<version>.
  message = (
    f"tfds {name} is not prepared in {data_dir}. Prepare it once (it downloads the data): "
    f"`tfds build {name} --data_dir {data_dir}`, then run again" + f" with data.tfds_data_dir={data_dir}."
  )
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    manual = os.path.join(data_dir, "downloads", "manual")
    message += (
      f" This dataset needs a manual download first, into {manual}: {builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
    )
  return message
