"""Input normalisation constants: BioNIC's per-dataset statistics or ImageNet's."""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def bionic_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """BioNIC's `getMeanStddev`: the mean over images of per-image channel means and of per-image stds.

  (Not the pooled std: BioNIC averaged per-image standard deviations.) `images` is uint8 [N, H, W, C].
  """
  x = images.astype(np.float32) / 255.0
  means = x.mean(axis=(1, 2))
  stds = x.std(axis=(1, 2))
  return means.mean(axis=0), np.maximum(stds.mean(axis=0), 1e-3)


def normalization_constants(kind: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) float32 [C] for 'dataset', 'imagenet' or 'none'; ImageNet's for other than 3 channels are its
  channel means, repeated (what the adapted stem of pretrained weights expects, convert/pretrained.py)."""
  channels = images.shape[-1]
  if kind == "dataset":
    mean, std = bionic_statistics(images)
  elif kind == "imagenet":
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    if channels != 3:
      mean, std = np.repeat(mean.mean(), channels), np.repeat(std.mean(), channels)
  elif kind == "none":
    mean, std = np.zeros(channels), np.ones(channels)
  else:
    raise ValueError(f"data.normalization={kind!r}; use 'dataset', 'imagenet' or 'none'.")
  return mean.astype(np.float32), std.astype(np.float32)
