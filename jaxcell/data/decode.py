"""Decoding one image file into uint8 greyscale, RGB or N channels of one square size, whatever it was on disk.

8- or 16-bit, greyscale, RGB, palette, with alpha, PNG/JPEG/BMP/TIFF; multi-channel TIFF and OME-TIFF (the channel
axis from the file's metadata: OME/ImageJ channels, samples per pixel, or the pages of a plain multi-page TIFF).
Conversions are explicit:

- greyscale -> RGB replicates the channel; RGB -> greyscale is ITU-R 601 luminance (PIL 'L');
- alpha (RGBA, LA; in a TIFF only where its ExtraSamples tag says alpha) is composited over black; palette images
  are expanded to RGB;
- uint16 is divided by 257 ('full_range') or stretched min..max per image ('per_image');
  any other non-uint8 type (float, int32) is stretched min..max per image;
- any other channel count must equal data.channels (else the file is skipped with that reason); channels that are
  separate files are grouped by data/channel_files.py;
- the resize is PIL's antialiased bilinear, not aspect preserving (torchvision's Resize, as BioNIC); or, with
  resize='center_crop', the central square of the original (zero-padded where the image is smaller, as
  torchvision's CenterCrop).

Anything that is not a usable image raises UnreadableImageError with the reason shown to the user.
"""

from __future__ import annotations

import os

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff")
_TIFF_ALPHA = (1, 2)  # ExtraSamples values: associated (premultiplied) and unassociated alpha.


class UnreadableImageError(Exception):
  """An image file that cannot be used; the message is the reason shown to the user."""


RESIZE_MODES = ("resize", "center_crop")


def decode_image(path: str, image_size: int, channels: int, sixteen_bit: str, resize: str = "resize") -> np.ndarray:
  """Reads one image file as uint8 [image_size, image_size, channels].

  Raises UnreadableImageError with an actionable reason for anything that is not a usable image.
  """
  array, alpha = read_array(path)
  return from_array(array, image_size, channels, sixteen_bit, resize, alpha=alpha)


def read_array(path: str) -> tuple[np.ndarray, bool]:
  """(the file's pixels as [H, W] or [H, W, C] in their own type, whether the last channel is alpha)."""
  try:
    size = os.path.getsize(path)
  except OSError as e:  # A broken link, a file removed meanwhile, no permission.
    raise UnreadableImageError(f"cannot read the file ({e.strerror or e})") from e
  if size == 0:
    raise UnreadableImageError("zero-byte file")
  if path.lower().endswith((".tif", ".tiff")):
    array, alpha = _read_tiff(path)
  else:
    array = _read_with_pillow(path)
    alpha = array.ndim == 3 and array.shape[-1] in (2, 4)  # Pillow's LA and RGBA.
  if not array.dtype.isnative:
    array = array.astype(array.dtype.newbyteorder("="))  # Big-endian 16-bit ('I;16B').
  return array, alpha


def from_array(
  array: np.ndarray, image_size: int, channels: int, sixteen_bit: str, resize: str = "resize", alpha: bool | None = None
) -> np.ndarray:
  """An image already in memory ([H, W] or [H, W, C], any integer or float type) as uint8
  [image_size, image_size, channels], with the same conversions as a file (the module docstring).

  `alpha`: whether the last of 2 or 4 channels is alpha (None: assumed for 2 or 4 channels when `channels` is 1
  or 3, as in PNG's LA and RGBA)."""
  if array.ndim not in (2, 3) or min(array.shape[:2]) < 1 or (array.ndim == 3 and array.shape[-1] < 1):
    raise UnreadableImageError(f"an image of shape {array.shape}; expected [H, W] or [H, W, channels]")
  if alpha is None:
    alpha = channels in (1, 3) and array.ndim == 3 and array.shape[-1] in (2, 4)
  if alpha:
    array = _composited_over_black(array)
  image = _to_channels(_to_uint8(array, sixteen_bit), channels)
  return center_crop(image, image_size) if resize == "center_crop" else _resized(image, image_size)


# tifffile's axis letters: C = channel (OME, ImageJ), S = samples per pixel (RGB, or extra samples), I = pages of a
# plain multi-page TIFF, Q = unknown. Z (depth) and T (time) are never taken for channels.
_CHANNEL_AXES = "CSIQ"


def _read_tiff(path: str) -> tuple[np.ndarray, bool]:
  """A TIFF or OME-TIFF as [H, W] or [H, W, C]: the channel axis from the file's metadata (series axes)."""
  try:
    with tifffile.TiffFile(path) as tif:
      if len(tif.series) != 1:
        raise UnreadableImageError(
          f"TIFF with {len(tif.series)} image series (pages of different sizes or types); save one 2-D "
          "(multi-channel) image per file"
        )
      series = tif.series[0]
      axes, array = series.axes, series.asarray()
      extra = tuple(getattr(tif.pages[0], "extrasamples", ()) or ())
  except UnreadableImageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableImageError(f"cannot read TIFF ({type(e).__name__}: {e})") from e
  shape = array.shape
  kept = [i for i, axis in enumerate(axes) if axis in "YX" or shape[i] > 1]  # Singleton T, Z, C, ... go.
  array, axes = array.reshape([shape[i] for i in kept]), "".join(axes[i] for i in kept)
  others = [axis for axis in axes if axis not in "YX"]
  if "Y" not in axes or "X" not in axes or len(others) > 1 or (others and others[0] not in _CHANNEL_AXES):
    described = ", ".join(f"{a}={n}" for a, n in zip(series.axes, shape))
    raise UnreadableImageError(
      f"TIFF with axes {described}: one 2-D image with a channel axis is supported, not a Z-stack, time series or "
      "several non-spatial axes; save one plane (with its channels) per file"
    )
  if others:
    array = np.moveaxis(array, axes.index(others[0]), -1)
  if axes.index("Y") > axes.index("X"):
    array = np.swapaxes(array, 0, 1)
  alpha = others == ["S"] and array.shape[-1] in (2, 4) and bool(extra) and extra[-1] in _TIFF_ALPHA
  return array, alpha


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
  """Greyscale <-> RGB as the module docstring says; any other channel count must equal `channels`."""
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  found = 1 if array.ndim == 2 else array.shape[-1]
  if channels == 3 and found == 1:
    return np.repeat(array[..., None], 3, axis=-1)
  if channels == 1 and found == 3:
    return np.asarray(Image.fromarray(array, "RGB").convert("L"))  # ITU-R 601 luminance.
  if found != channels:
    raise UnreadableImageError(
      f"{found} channels, but data.channels is {channels}: set data.channels={found} to train on "
      f"{found}-channel images, or leave this file out"
    )
  return array


def _resized(array: np.ndarray, image_size: int) -> np.ndarray:
  """PIL's antialiased bilinear resize; channel by channel (the same filter) beyond greyscale and RGB."""
  if array.ndim == 3 and array.shape[-1] not in (1, 3):
    return np.stack([_resized(array[..., c], image_size)[..., 0] for c in range(array.shape[-1])], axis=-1)
  resized = np.asarray(Image.fromarray(array).resize((image_size, image_size), Image.BILINEAR))
  return resized[..., None] if resized.ndim == 2 else resized


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central size x size square of an [H, W] or [H, W, C] image as [size, size, C], zero-padded (centred)
  along a side shorter than size, with torchvision's CenterCrop rounding (top = round((H - size) / 2), padding
  (size - H) // 2 before)."""
  image = image[..., None] if image.ndim == 2 else image
  out = np.zeros((size, size, image.shape[-1]), image.dtype)
  (h, w), spans = image.shape[:2], []
  for side in (h, w):  # (source start, target start, length)
    spans.append((int(round((side - size) / 2.0)), 0, size) if side >= size else (0, (size - side) // 2, side))
  (sy, ty, ly), (sx, tx, lx) = spans
  out[ty : ty + ly, tx : tx + lx] = image[sy : sy + ly, sx : sx + lx]
  return out


def failure_reason(error: Exception) -> str:
  """What to tell the user about a file whose decoding raised `error`."""
  if isinstance(error, UnreadableImageError):
    return str(error)
  # Decoders fail in many library-specific ways; any failure makes this one file unusable.
  return f"cannot decode image ({type(error).__name__}: {error})"


def decode_or_reason(
  path: str, image_size: int, channels: int, sixteen_bit: str, resize: str = "resize"
) -> tuple[np.ndarray | None, str]:
  """(image, '') or (None, why it cannot be used): never raises for a bad file."""
  try:
    return decode_image(path, image_size, channels, sixteen_bit, resize), ""
  except Exception as e:  # pylint: disable=broad-except
    return None, failure_reason(e)


_PIL_MODES = {"1": (1, 1), "L": (1, 8), "P": (3, 8), "LA": (2, 8), "PA": (4, 8), "RGB": (3, 8), "RGBA": (4, 8),
              "CMYK": (4, 8), "YCbCr": (3, 8), "I": (1, 32), "F": (1, 32)}  # fmt: skip


def describe(path: str) -> dict | None:
  """What a file holds before decoding — {'height', 'width', 'channels', 'bits'} from its header — or None."""
  try:
    if path.lower().endswith((".tif", ".tiff")):
      with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        sizes = dict(zip(series.axes, series.shape))
        channels = int(np.prod([n for axis, n in sizes.items() if axis in _CHANNEL_AXES]))
        return {"height": int(sizes.get("Y", 0)), "width": int(sizes.get("X", 0)), "channels": channels,
                "bits": int(series.dtype.itemsize * 8)}  # fmt: skip
    with Image.open(path) as image:
      channels, bits = _PIL_MODES.get(image.mode, (1, 16 if image.mode.startswith("I;16") else 8))
      return {"height": image.height, "width": image.width, "channels": channels, "bits": bits}
  except Exception:  # pylint: disable=broad-except
    return None


def format_summary(descriptions: list[dict | None]) -> dict:
  """The range of sizes, and the channel counts and bit depths, of a set of files (for study.json)."""
  known = [d for d in descriptions if d]
  if not known:
    return {}
  sides = [s for d in known for s in (d["height"], d["width"])]
  return {
    "min_side": min(sides),
    "max_side": max(sides),
    "channels": sorted({d["channels"] for d in known}),
    "bits": sorted({d["bits"] for d in known}),
  }


def format_warning(description: dict | None, training: dict) -> str:
  """Why a new image is unlike the training images ('' when it is alike, or when either is unknown)."""
  if not description or not training:
    return ""
  problems = []
  if description["channels"] not in training["channels"]:
    problems.append(f"{description['channels']} channels (training images: {training['channels']})")
  if description["bits"] not in training["bits"]:
    problems.append(f"{description['bits']}-bit (training images: {training['bits']})")
  low, high = training["min_side"], training["max_side"]
  if (
    min(description["height"], description["width"]) < low / 2
    or max(description["height"], description["width"]) > 2 * high
  ):
    problems.append(f"{description['height']}x{description['width']} px (training images: {low} to {high} px a side)")
  return "unlike the training images: " + "; ".join(problems) if problems else ""
