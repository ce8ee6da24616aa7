"""jaxcell's models: torchvision-exact ResNets and BioNIC's CNNs, built from a config.

    model = build_model(config.model, num_classes)
    variables = model.init(key, x, train=False)            # {'params', 'batch_stats'}
    logits = model.apply(variables, x, train=False)         # float32 [B, num_classes]
    logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])

`x` is float32 NHWC, already normalised, with any channel count. Per-stage activations come back
with `mutable=['intermediates']` (see resnet.py / cnn.py for the names).

Model config fields (an ml_collections ConfigDict or any mapping):
  name       'resnet18' | 'resnet34' | 'resnet50' | 'cnn_all' | 'cnn_flat'      (required)
  width      channel multiplier; 1.0 = torchvision / BioNIC                     (default 1.0)
  head       'linear' | 'bionic_mlp'                                             (default 'linear')
  head_hidden  hidden width(s) of 'bionic_mlp': an int or a tuple of ints; None = BioNIC's
             choice for the model: 256 for ResNets (ResNet_all), (64, 32) for ResNets with
             stages=2 (ResNet_lower), (256, 128) for the CNNs                   (default None)
  conv_impl  'xla' | 'im2col'  (see conv.py)                                     (default 'xla')
  dtype      'float32' | 'bfloat16': computation dtype; params stay float32     (default 'float32')
  stages     residual stages kept by a ResNet, 1-4; 2 = BioNIC's ResNet_lower    (default 4)
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxcell.models.cnn import BIONIC_CNN_HEAD_HIDDEN, cnn_all, cnn_flat
from jaxcell.models.conv import CONV_IMPLS
from jaxcell.models.heads import HEADS, hidden_widths, make_head
from jaxcell.models.resnet import ResNet18, ResNet34, ResNet50

__all__ = ["MODEL_NAMES", "build_model", "make_head"]

_BUILDERS = {
  "resnet18": ResNet18,
  "resnet34": ResNet34,
  "resnet50": ResNet50,
  "cnn_all": cnn_all,
  "cnn_flat": cnn_flat,
}
MODEL_NAMES = tuple(_BUILDERS)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_DEFAULTS = {"width": 1.0, "head": "linear", "head_hidden": None, "conv_impl": "xla", "dtype": "float32", "stages": 4}


def _choice(field: str, value: Any, choices: tuple[str, ...]) -> Any:
  if value not in choices:
    raise ValueError(f"model.{field}={value!r} is not valid; choose one of {choices}.")
  return value


def bionic_head_hidden(name: str, stages: int) -> tuple[int, ...]:
  """BioNIC's hidden widths of the 'bionic_mlp' head for a model."""
  if name.startswith("cnn"):
    return BIONIC_CNN_HEAD_HIDDEN
  return (64, 32) if stages == 2 else (256,)


def build_model(model_config: ConfigDict | Mapping[str, Any], num_classes: int) -> nn.Module:
  """Builds the Flax module described by `model_config` (fields in the module docstring)."""
  given = dict(model_config.items())
  unknown = sorted(set(given) - set(_DEFAULTS) - {"name"})
  if unknown:
    raise ValueError(f"Unknown model config field(s) {unknown}; valid fields: {['name', *_DEFAULTS]}.")
  if "name" not in given:
    raise ValueError(f"model.name is required; choose one of {MODEL_NAMES}.")
  cfg = {**_DEFAULTS, **given}
  name = _choice("name", cfg["name"], MODEL_NAMES)
  if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  width = cfg["width"]
  if not isinstance(width, (int, float)) or width <= 0:
    raise ValueError(f"model.width must be a positive number (1.0 = full size), got {width!r}.")
  stages = cfg["stages"]
  if name.startswith("cnn") and stages != 4:
    raise ValueError(f"model.stages applies to ResNets only; leave it at 4 for {name!r}.")
  if stages not in (1, 2, 3, 4):
    raise ValueError(f"model.stages={stages!r} is not valid; choose 1, 2, 3 or 4.")
  hidden = cfg["head_hidden"]
  hidden = bionic_head_hidden(name, stages) if hidden is None else hidden_widths(hidden)

  options = dict(
    width=float(width),
    head=_choice("head", cfg["head"], HEADS),
    head_hidden=hidden,
    conv_impl=_choice("conv_impl", cfg["conv_impl"], CONV_IMPLS),
    dtype=DTYPES[_choice("dtype", cfg["dtype"], tuple(DTYPES))],
  )
  if not name.startswith("cnn"):
    options["stages"] = stages
  return _BUILDERS[name](num_classes=int(num_classes), **options)
