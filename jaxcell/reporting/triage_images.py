"""The holdout images behind triage.csv: sorted into bucket folders, or picked and loaded as report examples.

`write_triage_folders` puts a copy of each image in the folder of its bucket (high_confidence, low_confidence):
files are copied (`jaxcell.analysis.triage.copy_triage_images`), images that are not on disk (synthetic data) are
drawn as PNGs from an `image_lookup(path) -> uint8 HxWxC` function. Every image that cannot be written is logged
and returned with its reason, never dropped silently. `pick_examples` and `load_image` serve report.html.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from jaxcell.analysis import triage
from jaxcell.reporting import composite
from jaxcell.workdir import storage

log = logging.getLogger(__name__)

ImageLookup = Callable[[str], np.ndarray]


def dataset_root(config) -> str | None:
  """The folder that dataset paths are relative to: data.root for folder datasets, else None (synthetic ids)."""
  return config.data.root if config.data.source == "folder" and config.data.root else None


def source_file(path: str, source_root: str | None) -> str | None:
  """The image file behind a dataset path, or None when it is not on disk (synthetic ids)."""
  if not (source_root or path.startswith("/")):
    return None
  candidate = storage.as_path(source_root or "/") / path  # An absolute path replaces the root.
  return str(candidate) if candidate.is_file() else None


def as_uint8_image(array, path: str, colors: str | None = None) -> np.ndarray:
  """Checks what image_lookup returned (uint8 HxW or HxWxC); returns HxW or HxWx3, N channels as a colour
  composite (reporting/composite.py, tinted by `colors`)."""
  array = np.asarray(array)
  if array.dtype != np.uint8 or array.ndim not in (2, 3):
    raise ValueError(
      f"image_lookup({path!r}) returned {array.dtype} {array.shape}; it must return a uint8 HxWxC array."
    )
  return composite.composite(array, colors)


def _safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "_"


def write_lookup_images(
  rows: Sequence[dict], image_lookup: ImageLookup | None, out_dir, colors: str | None = None
) -> dict:
  """PNGs from image_lookup(path) into out_dir/<bucket>/ for images not on disk; failures are reported."""
  report: dict[str, list] = {"written": [], "failed": []}
  for row in rows:
    if image_lookup is None:
      report["failed"].append((row["path"], "not on disk and no image_lookup was given"))
      continue
    try:
      array = as_uint8_image(image_lookup(row["path"]), row["path"], colors)
    except (KeyError, ValueError, OSError) as error:
      report["failed"].append((row["path"], f"image_lookup failed: {error}"))
      continue
    directory = storage.as_path(out_dir) / row["bucket"]
    # The whole path goes into the name: synthetic ids share basenames across classes.
    stem = f"target-{_safe(row['target'])}__pred-{_safe(row['prediction'])}__{_safe(row['path'])}"
    destination, k = directory / f"{stem}.png", 2
    while destination.exists():
      destination, k = directory / f"{stem}__{k}.png", k + 1
    png = io.BytesIO()
    Image.fromarray(array).save(png, format="PNG")
    storage.write_bytes(destination, png.getvalue())
    report["written"].append((row["path"], str(destination)))
  return report


def write_triage_folders(
  rows: Sequence[dict], source_root: str | None, out_dir, image_lookup, colors: str | None = None
) -> dict:
  """Fills out_dir/{high,low}_confidence/ afresh: files on disk are copied, other images drawn via image_lookup."""
  out_dir = storage.as_path(out_dir)
  for bucket in (triage.HIGH, triage.LOW):  # Only our own sub-folders: a re-run must not pile up copies.
    if (out_dir / bucket).exists():
      (out_dir / bucket).rmtree()
  on_disk = [r for r in rows if source_file(r["path"], source_root)]
  elsewhere = [r for r in rows if not source_file(r["path"], source_root)]
  copied = triage.copy_triage_images(on_disk, source_root or "/", out_dir) if on_disk else {"copied": []}
  drawn = write_lookup_images(elsewhere, image_lookup, out_dir, colors)
  failed = copied.get("failed", []) + drawn["failed"]
  for path, reason in failed:
    log.warning("Triage folder: %s not written (%s)", path, reason)
  return {
    "directory": str(out_dir),
    "copied": len(copied["copied"]),
    "written_from_lookup": len(drawn["written"]),
    "failed": failed,
  }


def pick_examples(rows: Sequence[dict], bucket: str, count: int) -> list[dict]:
  """Trusted images: errors first (most instructive), then the most confident; deferred: least confident first."""
  rows = [r for r in rows if r["bucket"] == bucket]
  if bucket == triage.HIGH:
    rows.sort(key=lambda r: (r["target"] == r["prediction"], -float(r["confidence"])))
  else:
    rows.sort(key=lambda r: float(r["confidence"]))
  return rows[:count]


def load_image(path: str, config, image_lookup: ImageLookup | None, size: int) -> np.ndarray | None:
  """A holdout image as uint8 (files decoded at `size` px), from its file or image_lookup; None (logged) if neither
  works, so that one unreadable image costs the report a thumbnail, not the whole page."""
  try:
    on_disk = source_file(path, dataset_root(config))
    if on_disk:
      from jaxcell.data import decode  # Only needed for real files (tifffile and friends).

      image = decode.decode_image(on_disk, size, int(config.data.channels), config.data.sixteen_bit)
      return composite.composite(image, config.output.channel_colors)
    if image_lookup is not None:
      return as_uint8_image(image_lookup(path), path, config.output.channel_colors)
  except (KeyError, ValueError, OSError) as error:
    log.warning("Report: no thumbnail for %s (%s)", path, error)
  return None
