"""The converted-weights file: Flax variables plus what a user must know to use them.

One `.npz` holds every array under its Flax path ('params/conv1/kernel', 'batch_stats/bn1/mean') and a
JSON document under '__metadata__':

    {"format": "jaxcell-weights", "version": 1,
     "architecture": "resnet18",               # a jaxcell model name (models.MODEL_NAMES)
     "source": "resnet18-f37072fd.pth",        # where the weights came from
     "num_classes": 1000,                      # outputs of the checkpoint's own head
     "normalization": {"mean": [...], "std": [...]},   # input normalisation the weights expect (0..1 pixels)
     "input_size": 224, "notes": "..."}

Readable with numpy alone: no torch, no pickle (`allow_pickle=False`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

FORMAT = "jaxcell-weights"
VERSION = 1
METADATA_KEY = "__metadata__"


class ConversionError(ValueError):
  """A checkpoint does not fit the architecture; the message names the offending keys."""


def check_keys(expected: Mapping[str, tuple], got: Mapping[str, tuple], what: str) -> None:
  """Raises ConversionError naming missing, unexpected and mis-shaped keys (shapes as tuples)."""
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  misshaped = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))
  if not (missing or unexpected or misshaped):
    return
  lines = [f"{what} does not match the architecture:"]
  if missing:
    lines.append(f"  missing keys ({len(missing)}): {_preview(missing)}")
  if unexpected:
    lines.append(f"  unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
  if misshaped:
    shapes = [f"{k} expected {tuple(expected[k])} got {tuple(got[k])}" for k in misshaped]
    lines.append(f"  mis-shaped keys ({len(misshaped)}): {_preview(shapes)}")
  raise ConversionError("\n".join(lines))


def _preview(items: list[str], limit: int = 8) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
  """{'params': {'conv1': {'kernel': x}}} -> {'params/conv1/kernel': x} (numpy arrays)."""
  flat = traverse_util.flatten_dict(dict(variables), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def unflatten_variables(flat: Mapping[str, np.ndarray]) -> dict:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def save_weights(path: str, variables: Mapping, metadata: Mapping) -> None:
  """Writes variables and metadata (architecture, source, num_classes, normalization required)."""
  for field in ("architecture", "source", "num_classes", "normalization"):
    if field not in metadata:
      raise ValueError(f"Converted-weights metadata needs {field!r}; got {sorted(metadata)}.")
  meta = {"format": FORMAT, "version": VERSION, **metadata}
  arrays = flatten_variables(variables)
  arrays[METADATA_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".partial.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)  # Never leave a half-written weights file behind.


def load_weights(path: str) -> tuple[dict, dict]:
  """Reads a file written by save_weights -> (variables, metadata); clear errors for anything else."""
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"No converted weights at {path}. Convert a checkpoint first: python -m jaxcell.convert --help"
    )
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile/ValueError/OSError: not an npz at all.
    raise ConversionError(f"{path} is not a jaxcell converted-weights .npz file ({e}).") from None
  if METADATA_KEY not in arrays:
    raise ConversionError(
      f"{path} has no {METADATA_KEY!r} entry: it is not a jaxcell converted-weights file. "
      "Convert the original checkpoint with python -m jaxcell.convert."
    )
  meta = json.loads(arrays.pop(METADATA_KEY).tobytes().decode())
  if meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise ConversionError(f"{path}: unsupported format {meta.get('format')!r} version {meta.get('version')!r}.")
  return unflatten_variables(arrays), meta
