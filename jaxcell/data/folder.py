"""Reads an image folder (root/<class>/<image>, or root/{train,test,holdout}/<class>/<image>).

Every image becomes uint8 greyscale or RGB of one square size, whatever it was on disk: 8- or
16-bit, greyscale, RGB, palette, with alpha, PNG/JPEG/BMP/TIFF. Conversions are explicit:

- greyscale -> RGB replicates the channel; RGB -> greyscale is ITU-R 601 luminance (PIL 'L');
- alpha (RGBA, LA) is composited over black; palette images are expanded to RGB;
- uint16 is divided by 257 ('full_range') or stretched min..max per image ('per_image');
  any other non-uint8 type (float, int32) is stretched min..max per image;
- the resize is PIL's antialiased bilinear, not aspect preserving (torchvision's Resize, as BioNIC).

A file that cannot be used is reported as a SkippedFile with its reason, never dropped silently.
Decoding is the slow part, so the decoded arrays can be cached in one .npz per input state.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from jaxcell.data.dataset import Dataset, SkippedFile

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff")
SPLIT_NAMES = ("train", "test", "holdout")
EXPECTED_LAYOUT = (
  "Expected root/<class>/<image> (e.g. root/healthy/a.png, root/infected/b.png) or "
  "root/{train,test,holdout}/<class>/<image>."
)
_CACHE_VERSION = 1
_MAX_DECODE_THREADS = 8


class UnreadableImageError(Exception):
  """An image file that cannot be used; the message is the reason shown to the user."""


def read_image_folder(
  root: str, image_size: int, channels: int, sixteen_bit: str = "full_range", cache_dir: str | None = None
) -> Dataset:
  """Reads every image under `root`, resized to image_size x image_size with `channels` channels."""
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f"image_size is {image_size!r}; it must be a positive int.")
  if channels not in (1, 3):
    raise ValueError(f"channels is {channels!r}; use 1 (greyscale) or 3 (RGB).")
  if sixteen_bit not in ("full_range", "per_image"):
    raise ValueError(f"sixteen_bit is {sixteen_bit!r}; use 'full_range' or 'per_image'.")
  if not os.path.isdir(root):
    raise ValueError(f"Image folder {root!r} does not exist or is not a folder. {EXPECTED_LAYOUT}")
  class_names, candidates, skipped = _scan(root)
  listing = _listing_with_stats(root, [path for path, _, _ in candidates] + [s.path for s in skipped])
  cache_path = None
  if cache_dir is not None:
    key = _cache_key(root, listing, image_size, channels, sixteen_bit)
    cache_path = os.path.join(cache_dir, f"jaxcell-folder-{key}.npz")
    cached = _load_cache(cache_path)
    if cached is not None:
      logger.info("Read %d decoded images from the cache %s.", len(cached), cache_path)
      return cached

  decoded = _decode_all(root, [path for path, _, _ in candidates], image_size, channels, sixteen_bit)
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
  )
  if cache_path is not None:
    _save_cache(cache_path, dataset)
  return dataset


def decode_image(path: str, image_size: int, channels: int, sixteen_bit: str) -> np.ndarray:
  """Reads one image file as uint8 [image_size, image_size, channels].

  Raises UnreadableImageError with an actionable reason for anything that is not a usable image.
  """
  if os.path.getsize(path) == 0:
    raise UnreadableImageError("zero-byte file")
  if path.lower().endswith((".tif", ".tiff")):
    array = _read_tiff(path)
  else:
    array = _read_with_pillow(path)
  if not array.dtype.isnative:
    array = array.astype(array.dtype.newbyteorder("="))  # Big-endian 16-bit ('I;16B').
  return _resized(_to_channels(_to_uint8(_composited_over_black(array), sixteen_bit), channels), image_size)


def _scan(root: str) -> tuple[list[str], list[tuple[str, str, str | None]], list[SkippedFile]]:
  """Finds the classes and the candidate image files (relative path, class, split) in sorted order."""
  entries = list(os.scandir(root))
  top_folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
  skipped = [SkippedFile(e.name, "not inside a class folder") for e in entries if e.is_file()]
  skipped += [SkippedFile(f"{e.name}/", "hidden folder") for e in entries if e.is_dir() and e.name.startswith(".")]
  if not top_folders:
    raise ValueError(f"No class folders in {root!r}. {EXPECTED_LAYOUT}")
  if set(top_folders) <= set(SPLIT_NAMES) and "train" in top_folders:
    class_folders = []
    for split in top_folders:
      split_dir = os.path.join(root, split)
      skipped += [
        SkippedFile(f"{split}/{e.name}", f"not inside a class folder of {split}/")
        for e in os.scandir(split_dir)
        if e.is_file()
      ]
      class_folders += [
        (f"{split}/{e.name}", e.name, split) for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
      ]
  else:
    class_folders = [(name, name, None) for name in top_folders]

  candidates = []
  for folder, class_name, split in sorted(class_folders):
    images, others = _files_under(root, folder)
    if not images:
      raise ValueError(
        f"Class folder {os.path.join(root, folder)!r} contains no image file "
        f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder."
      )
    candidates += [(path, class_name, split) for path in images]
    skipped += others
  class_names = sorted({class_name for _, class_name, _ in class_folders})
  if len(class_names) < 2:
    raise ValueError(
      f"Found {len(class_names)} class folder(s) {class_names} in {root!r}; "
      f"classification needs at least 2. {EXPECTED_LAYOUT}"
    )
  return class_names, sorted(candidates), skipped


def _files_under(root: str, folder: str) -> tuple[list[str], list[SkippedFile]]:
  """Image files under root/folder, recursively, and the files that are skipped at sight."""
  images, skipped = [], []
  for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
    relative_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
    for name in [d for d in dirnames if d.startswith(".")]:
      skipped.append(SkippedFile(f"{relative_dir}/{name}/", "hidden folder"))
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for name in filenames:
      path = f"{relative_dir}/{name}"
      extension = os.path.splitext(name)[1].lower()
      if name.startswith("."):
        skipped.append(SkippedFile(path, "hidden file"))
      elif extension not in IMAGE_EXTENSIONS:
        skipped.append(
          SkippedFile(
            path, f"not an image file extension ({extension or 'none'}); expected one of {', '.join(IMAGE_EXTENSIONS)}"
          )
        )
      else:
        images.append(path)
  return images, skipped


def _decode_all(
  root: str, paths: list[str], image_size: int, channels: int, sixteen_bit: str
) -> list[np.ndarray | SkippedFile]:
  """Decodes in a small thread pool (PIL releases the GIL); results keep the order of `paths`."""

  def decode_or_skip(path: str) -> np.ndarray | SkippedFile:
    try:
      return decode_image(os.path.join(root, path), image_size, channels, sixteen_bit)
    except UnreadableImageError as e:
      return SkippedFile(path, str(e))
    except Exception as e:  # pylint: disable=broad-except
      # Decoders fail in many library-specific ways; any failure makes this one file unusable.
      return SkippedFile(path, f"cannot decode image ({type(e).__name__}: {e})")

  workers = min(_MAX_DECODE_THREADS, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(decode_or_skip, paths))


def _read_tiff(path: str) -> np.ndarray:
  try:
    with tifffile.TiffFile(path) as tif:
      if len(tif.pages) > 1:
        raise UnreadableImageError(f"multi-page TIFF ({len(tif.pages)} pages); save one 2-D image per file")
      array = tif.pages[0].asarray()
  except UnreadableImageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableImageError(f"cannot read TIFF ({type(e).__name__}: {e})") from e
  if array.ndim == 3 and array.shape[0] <= 4 < array.shape[-1]:
    array = np.moveaxis(array, 0, -1)  # Planar (channel-first) storage.
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] > 4):
    raise UnreadableImageError(
      f"TIFF of shape {array.shape}: only greyscale, RGB and RGBA (at most 4 "
      "channels) are supported; save the channels as separate images"
    )
  return array


def _read_with_pillow(path: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      image.load()
      mode = image.mode
      if mode == "1":
        image = image.convert("L")
      elif mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
      elif mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
        raise UnreadableImageError(f"unsupported mode {mode!r}; convert the image to RGB or greyscale")
      return np.asarray(image)
  except UnidentifiedImageError as e:
    raise UnreadableImageError("cannot identify image file (corrupt or not an image)") from e
  except Image.DecompressionBombError as e:
    raise UnreadableImageError(f"image too large ({e})") from e
  except OSError as e:
    raise UnreadableImageError(f"truncated or corrupt image ({e})") from e


def _composited_over_black(array: np.ndarray) -> np.ndarray:
  """Drops the alpha channel of LA / RGBA arrays by compositing over black (as float64)."""
  if array.ndim == 2 or array.shape[-1] in (1, 3):
    return array
  full_opacity = np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1.0
  alpha = array[..., -1:].astype(np.float64) / full_opacity
  colour = array[..., :-1].astype(np.float64) * alpha
  if array.dtype in (np.uint8, np.uint16):
    return np.round(colour).astype(array.dtype)  # Keep the type so the uint16 mode still applies.
  return colour


def _to_uint8(array: np.ndarray, sixteen_bit: str) -> np.ndarray:
  if array.dtype == np.uint8:
    return array
  if array.dtype == np.uint16 and sixteen_bit == "full_range":
    return np.round(array / 257.0).astype(np.uint8)  # 65535 / 257 == 255 exactly.
  return _stretched(array)


def _stretched(array: np.ndarray) -> np.ndarray:
  """Maps the image's own min..max (over all channels) to 0..255; a constant image becomes 0."""
  values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  low, high = values.min(), values.max()
  if high <= low:
    return np.zeros(array.shape, np.uint8)
  return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if channels == 3 and array.ndim == 2:
    return np.repeat(array[..., None], 3, axis=-1)
  if channels == 1 and array.ndim == 3:
    return np.asarray(Image.fromarray(array, "RGB").convert("L"))  # ITU-R 601 luminance.
  return array


def _resized(array: np.ndarray, image_size: int) -> np.ndarray:
  resized = np.asarray(Image.fromarray(array).resize((image_size, image_size), Image.BILINEAR))
  return resized[..., None] if resized.ndim == 2 else resized


def _listing_with_stats(root: str, paths: list[str]) -> list[tuple[str, int, int]]:
  listing = []
  for path in sorted(paths):
    stat = os.stat(os.path.join(root, path))
    listing.append((path, stat.st_size, stat.st_mtime_ns))
  return listing


def _cache_key(root: str, listing: list[tuple[str, int, int]], image_size: int, channels: int, sixteen_bit: str) -> str:
  state = [_CACHE_VERSION, os.path.abspath(root), listing, image_size, channels, sixteen_bit]
  return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:24]


def _save_cache(cache_path: str, dataset: Dataset) -> None:
  os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
  temporary = f"{cache_path}.{os.getpid()}.tmp.npz"
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
  os.replace(temporary, cache_path)  # Atomic: a reader never sees half a file.
  logger.info("Cached %d decoded images in %s.", len(dataset), cache_path)


def _load_cache(cache_path: str) -> Dataset | None:
  if not os.path.exists(cache_path):
    return None
  try:
    with np.load(cache_path, allow_pickle=False) as cache:
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
      )
  except Exception as e:  # pylint: disable=broad-except
    logger.warning("Ignoring unreadable cache %s (%s); decoding the images again.", cache_path, e)
    return None
