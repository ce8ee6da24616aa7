"""N-channel images shown as one colour picture: each channel tinted with its colour, the tints added.

Fluorescence channels have no natural colour; the default tints follow common microscopy use (the first channel,
often a DNA stain, blue; then green, red, magenta, cyan, yellow, orange, grey), cycled beyond eight channels.
`output.channel_colors` sets them ('blue,green,red,...', any matplotlib colour names or #rrggbb). Greyscale and RGB
images are shown as they are.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colors as mpl_colors

DEFAULT_COLORS = ("#0000ff", "#00ff00", "#ff0000", "#ff00ff", "#00ffff", "#ffff00", "#ff8000", "#bfbfbf")


def parse_colors(text: str | None) -> tuple[tuple[float, float, float], ...]:
  """The RGB tints of a comma-separated colour list ('' or None: the defaults); ValueError names a bad colour."""
  names = [name.strip() for name in (text or "").split(",") if name.strip()] or list(DEFAULT_COLORS)
  tints = []
  for name in names:
    try:
      tints.append(mpl_colors.to_rgb(name))
    except ValueError:
      raise ValueError(
        f"output.channel_colors: {name!r} is not a colour; give matplotlib colour names or #rrggbb, comma-separated."
      ) from None
  return tuple(tints)


def composite(image: np.ndarray, colors: str | None = None) -> np.ndarray:
  """uint8 [H, W] or [H, W, 3] as given; uint8 [H, W, N] (other N) as an RGB composite uint8 [H, W, 3]."""
  image = np.asarray(image)
  if image.ndim == 2 or image.shape[-1] in (1, 3):
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
  tints = parse_colors(colors)
  tints = np.array([tints[c % len(tints)] for c in range(image.shape[-1])], np.float32)  # [N, 3]
  rgb = (image.astype(np.float32) / 255.0) @ tints
  return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
