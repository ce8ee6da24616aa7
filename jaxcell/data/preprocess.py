"""BioNIC's classic pre-processing (`augmentations.py`) as a data stage, with scikit-image.

    images = apply(images, params)          # uint8 [N, H, W, C] -> uint8 [N, H, W, C], C unchanged

`data.preprocess` picks the method; its parameters are the `data.preprocess_*` fields (`params_from_config`).
It runs once per study arm on the decoded, resized images (cached in the workdir, keyed by the images and the
parameters), before normalisation, augmentation and every model.

Where this differs from BioNIC's OpenCV code, on purpose:
- BioNIC pre-processed the original-resolution image before resizing; jaxcell works on the decoded images at
  `data.image_size`, so kernel sizes (top-hat, opening, threshold block, LBP radius) count pixels of that size.
- Greyscale is ITU-R 601 luminance (as PIL 'L'; OpenCV's BGR->grey of an RGB array swaps the red and blue weights).
- Sobel is scikit-image's 3x3 `sobel_v` (OpenCV used ksize=5), its magnitude scaled to 0..255; BioNIC multiplied the
  float gradient by 255 and cast to uint8, wrapping negative and large values around — an artefact not reproduced.
- CLAHE's clip limit is scikit-image's (a fraction of a tile's pixels); OpenCV's clipLimit=2.0 over 8x8 tiles is
  about 2/256 = 0.0078 of a tile, the default here.
- Thresholded images are 0/255 in every channel, as BioNIC's 'L' -> 'RGB' conversion gave.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import numpy as np
from skimage import exposure, feature, filters, morphology

from jaxcell import progress

log = logging.getLogger(__name__)

METHODS = ("none", "clahe", "tophat_otsu", "tophat_mean", "sobel_otsu", "sobel_mean", "erode", "lbp")
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Params:
  method: str = "none"
  tophat_size: int = 10  # White top-hat footprint (square side, pixels); BioNIC: 10.
  opening_size: int = 5  # Opening ('erode') footprint; BioNIC: 5.
  threshold_block: int = 7  # Adaptive mean threshold block (odd); BioNIC: 7.
  threshold_offset: float = 5.0  # Adaptive threshold offset C on 0..255 grey; BioNIC: the dataset's cutoff (5).
  clahe_clip_limit: float = 2 / 256  # scikit-image clip limit; ~ OpenCV clipLimit=2.0.
  clahe_tiles: int = 8  # Tiles per side (OpenCV tileGridSize 8x8).
  lbp_points: int = 90  # Local binary pattern P; BioNIC: 90.
  lbp_radius: float = 10.0  # Local binary pattern R; BioNIC: 10.


def params_from_config(data_config) -> Params:
  return Params(
    method=data_config.preprocess,
    tophat_size=int(data_config.preprocess_tophat_size),
    opening_size=int(data_config.preprocess_opening_size),
    threshold_block=int(data_config.preprocess_threshold_block),
    threshold_offset=float(data_config.preprocess_threshold_offset),
    clahe_clip_limit=float(data_config.preprocess_clahe_clip_limit),
    clahe_tiles=int(data_config.preprocess_clahe_tiles),
    lbp_points=int(data_config.preprocess_lbp_points),
    lbp_radius=float(data_config.preprocess_lbp_radius),
  )


def grey(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W]: the image's ITU-R 601 luminance (its only channel for greyscale images)."""
  if image.shape[-1] == 1:
    return image[..., 0]
  weights = np.array([299, 587, 114]) / 1000.0
  return np.clip(np.round(image[..., :3].astype(np.float64) @ weights), 0, 255).astype(np.uint8)


def _square(size: int) -> np.ndarray:
  return morphology.footprint_rectangle((size, size))


def _per_channel(image: np.ndarray, fn) -> np.ndarray:
  return np.stack([fn(image[..., c]) for c in range(image.shape[-1])], axis=-1).astype(np.uint8)


def _binary(mask: np.ndarray, channels: int) -> np.ndarray:
  return np.repeat((mask.astype(np.uint8) * 255)[..., None], channels, axis=-1)


def _otsu(g: np.ndarray) -> np.ndarray:
  return g > filters.threshold_otsu(g) if g.min() < g.max() else np.zeros(g.shape, bool)


def _adaptive_mean(g: np.ndarray, p: Params) -> np.ndarray:
  """OpenCV's ADAPTIVE_THRESH_MEAN_C: a pixel is on when it exceeds its block's mean minus the offset."""
  return g.astype(np.float64) > filters.threshold_local(
    g.astype(np.float64), p.threshold_block, "mean", p.threshold_offset
  )


def _sobel(g: np.ndarray) -> np.ndarray:
  edges = np.abs(filters.sobel_v(g.astype(np.float64)))
  top = edges.max()
  return np.zeros(g.shape, np.uint8) if top == 0 else np.round(edges * (255.0 / top)).astype(np.uint8)


def apply_one(image: np.ndarray, p: Params) -> np.ndarray:
  """One uint8 [H, W, C] image pre-processed by `p.method` (same shape and dtype)."""
  channels = image.shape[-1]
  if p.method == "none":
    return image
  if p.method == "erode":  # BioNIC's ErosionAndDilation: a morphological opening per channel.
    return _per_channel(image, lambda x: morphology.opening(x, _square(p.opening_size)))
  if p.method in ("tophat_otsu", "tophat_mean"):
    top = _per_channel(image, lambda x: morphology.white_tophat(x, _square(p.tophat_size)))
    g = grey(top)
    return _binary(_otsu(g) if p.method == "tophat_otsu" else _adaptive_mean(g, p), channels)
  if p.method in ("sobel_otsu", "sobel_mean"):  # Threshold first, then Sobel (BioNIC's order).
    g = grey(image)
    mask = _otsu(g) if p.method == "sobel_otsu" else _adaptive_mean(g, p)
    return np.repeat(_sobel(mask.astype(np.uint8) * 255)[..., None], channels, axis=-1)
  if p.method == "clahe":
    g = grey(image)
    tiles = (max(1, g.shape[0] // p.clahe_tiles), max(1, g.shape[1] // p.clahe_tiles))
    out = exposure.equalize_adapthist(g, kernel_size=tiles, clip_limit=p.clahe_clip_limit)
    return np.repeat(np.round(out * 255).astype(np.uint8)[..., None], channels, axis=-1)
  if p.method == "lbp":  # 'uniform' codes 0..P+1, kept as they are (BioNIC's 'F' -> 'RGB').
    codes = feature.local_binary_pattern(grey(image), p.lbp_points, p.lbp_radius, method="uniform")
    return np.repeat(np.clip(codes, 0, 255).astype(np.uint8)[..., None], channels, axis=-1)
  raise ValueError(f"data.preprocess={p.method!r}; use one of {METHODS}.")


def apply(images: np.ndarray, p: Params, cache_dir: str | None = None) -> np.ndarray:
  """Every image pre-processed; with `cache_dir`, read from / written to a cache keyed by images and params."""
  if p.method == "none":
    return images
  path = None
  if cache_dir is not None:
    digest = hashlib.sha256(images.tobytes())
    digest.update(json.dumps([_CACHE_VERSION, list(images.shape), dataclasses.asdict(p)]).encode())
    path = os.path.join(cache_dir, f"jaxcell-preprocess-{p.method}-{digest.hexdigest()[:24]}.npz")
    if os.path.exists(path):
      with np.load(path, allow_pickle=False) as cached:
        return cached["images"]
  out = []
  with progress.stage(f"pre-process ({p.method})", total=len(images), unit="images", time_as="pre-process") as bar:
    for image in images:
      out.append(apply_one(image, p))
      bar.update()
  out = np.stack(out)
  log.info("Pre-processed %d images with %s.", len(out), p.method)
  if path is not None:
    os.makedirs(cache_dir, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(temporary, images=out)
    os.replace(temporary, path)
  return out
