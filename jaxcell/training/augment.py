"""On-device augmentation: one random affine warp per image plus photometric jitter.

Rotation, flips and random resized crop are folded into a single inverse mapping from output to source
pixels, so every image is resampled once (bilinear, black outside the image, like BioNIC's
`RandomRotation(90)` fill). Everything is jit- and vmap-friendly: the study engine runs it inside the
compiled train step on uint8 images that never leave the device.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Static augmentation settings (hashable, so a change recompiles instead of silently reusing)."""

  rotation_degrees: float = 0.0
  hflip: bool = False
  vflip: bool = False
  brightness: float = 0.0
  contrast: float = 0.0
  crop_scale: tuple[float, float] = (1.0, 1.0)
  crop_ratio: tuple[float, float] = (0.75, 4 / 3)

  @classmethod
  def from_config(cls, c) -> "AugmentConfig":
    return cls(
      rotation_degrees=float(c.rotation_degrees),
      hflip=bool(c.hflip),
      vflip=bool(c.vflip),
      brightness=float(c.brightness),
      contrast=float(c.contrast),
      crop_scale=tuple(float(v) for v in c.crop_scale),
      crop_ratio=tuple(float(v) for v in c.crop_ratio),
    )

  @property
  def geometric(self) -> bool:
    return self.rotation_degrees > 0 or self.hflip or self.vflip or self.crop_scale != (1.0, 1.0)


def _source_coordinates(key: jax.Array, size: tuple[int, int], cfg: AugmentConfig) -> jax.Array:
  """Source (row, col) pixel coordinates [2, H, W] of each output pixel for one random warp."""
  h, w = size
  k_rot, k_hflip, k_vflip, k_area, k_ratio, k_centre = jax.random.split(key, 6)
  # Output pixel centres in [-1, 1] (x to the right, y down).
  ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h * 2 - 1
  xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w * 2 - 1
  y, x = jnp.meshgrid(ys, xs, indexing="ij")
  if cfg.hflip:
    x = jnp.where(jax.random.bernoulli(k_hflip), -x, x)
  if cfg.vflip:
    y = jnp.where(jax.random.bernoulli(k_vflip), -y, y)
  if cfg.crop_scale != (1.0, 1.0):
    # torchvision RandomResizedCrop: area fraction and log-uniform aspect ratio, clipped to the image.
    area = jax.random.uniform(k_area, minval=cfg.crop_scale[0], maxval=cfg.crop_scale[1])
    log_ratio = jax.random.uniform(k_ratio, minval=math.log(cfg.crop_ratio[0]), maxval=math.log(cfg.crop_ratio[1]))
    ratio = jnp.exp(log_ratio)
    half_w = jnp.minimum(jnp.sqrt(area * ratio), 1.0)
    half_h = jnp.minimum(jnp.sqrt(area / ratio), 1.0)
    centre = jax.random.uniform(k_centre, (2,), minval=-1.0, maxval=1.0)
    x = centre[0] * (1 - half_w) + half_w * x
    y = centre[1] * (1 - half_h) + half_h * y
  if cfg.rotation_degrees > 0:
    angle = jnp.deg2rad(jax.random.uniform(k_rot, minval=-cfg.rotation_degrees, maxval=cfg.rotation_degrees))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x, y = cos * x - sin * y, sin * x + cos * y
  rows = (y + 1) / 2 * h - 0.5
  cols = (x + 1) / 2 * w - 0.5
  return jnp.stack([rows, cols])


def _warp(image: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear resampling of an [H, W, C] float image at coords [2, H, W]; zeros outside."""
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, list(coords), order=1, mode="constant")
  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


def augment_image(key: jax.Array, image: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """uint8 or float [H, W, C] -> float32 [H, W, C] in [0, 1], randomly augmented."""
  k_warp, k_bright, k_contrast = jax.random.split(key, 3)
  x = image.astype(jnp.float32) / 255.0 if image.dtype == jnp.uint8 else image.astype(jnp.float32)
  if cfg.geometric:
    x = _warp(x, _source_coordinates(k_warp, x.shape[:2], cfg))
  if cfg.brightness > 0:
    x = x * jax.random.uniform(k_bright, minval=1 - cfg.brightness, maxval=1 + cfg.brightness)
  if cfg.contrast > 0:
    mean = x.mean()
    x = (x - mean) * jax.random.uniform(k_contrast, minval=1 - cfg.contrast, maxval=1 + cfg.contrast) + mean
  return jnp.clip(x, 0.0, 1.0)


def augment_batch(key: jax.Array, images: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """Augments each image of a [B, H, W, C] batch with its own key."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(augment_image, in_axes=(0, 0, None))(keys, images, cfg)


def to_unit_float(images: jax.Array) -> jax.Array:
  """The evaluation path: uint8 -> float32 in [0, 1], no randomness."""
  return images.astype(jnp.float32) / 255.0
