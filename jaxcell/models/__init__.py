"""jaxcell's models: torchvision-exact ResNets and VGGs and BioNIC's CNNs, built from a config.

    model = build_model(config.model, num_classes)
    variables = model.init(key, x, train=False)            # {'params', 'batch_stats'}
    logits = model.apply(variables, x, train=False)         # float32 [B, num_classes]
    logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key})

(Only the whole VGGs use dropout, so only they need the 'dropout' rng; a plain vgg16 with a linear
head has no BatchNorm, so no 'batch_stats' either.)

`x` is float32 NHWC, already normalised, with any channel count. Per-stage activations come back
with `mutable=['intermediates']` (see resnet.py / vgg.py / cnn.py for the names).

Model config fields (an ml_collections ConfigDict or any mapping):
  name       'resnet18' | 'resnet34' | 'resnet50' | 'resnet101' | 'resnet152' | 'vgg16' | 'vgg16_bn' |
             'vgg19_bn' | 'efficientnet_lite0' | 'cnn_all' | 'cnn_flat'          (required)
  width      channel multiplier; 1.0 = torchvision / BioNIC                     (default 1.0)
  head       'linear' | 'bionic_mlp'                                             (default 'linear')
  head_hidden  hidden width(s) of 'bionic_mlp': an int or a tuple of ints; None = BioNIC's
             choice for the model: 256 for ResNets (ResNet_all), (64, 32) for ResNets with
             stages=2 (ResNet_lower), 256 for a whole vgg16 (Vgg_all), 32 for a whole vgg16_bn /
             vgg19_bn (Vgg19ThreeChannelModelAllLayers), (4096, 256) for a VGG with vgg_features
             set (Vgg_lower), (256, 128) for the CNNs, 256 for EfficientNet      (default None)
  conv_impl  'xla' | 'im2col'  (see conv.py)                                     (default 'xla')
  dtype      'float32' | 'bfloat16': computation dtype; params stay float32     (default 'float32')
  stages     residual stages kept by a ResNet, 1-4; 2 = BioNIC's ResNet_lower    (default 4)
  trunk_bn   trunk BatchNorm when training: 'batch' (follows `train`: batch statistics, running
             statistics updated; BioNIC) or 'running' (running statistics, never updated); the
             head always follows `train`                                         (default 'batch')
  vgg_features  VGGs only: torchvision `features[:k]` kept, then AdaptiveAvgPool(7, 7) and the
             head; None = the whole VGG; 14 on vgg16 = BioNIC's Vgg_lower          (default None)
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
from jaxcell.models.efficientnet import EfficientNetLite0
from jaxcell.models.heads import HEADS, hidden_widths, make_head
from jaxcell.models.resnet import TRUNK_BN_MODES, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152
from jaxcell.models.vgg import FEATURES_LENGTH, VGG16, VGG16BN, VGG19BN

__all__ = ["MODEL_NAMES", "build_model", "make_head"]

_BUILDERS = {
  "resnet18": ResNet18,
  "resnet34": ResNet34,
  "resnet50": ResNet50,
  "resnet101": ResNet101,
  "resnet152": ResNet152,
  "efficientnet_lite0": EfficientNetLite0,
  "vgg16": VGG16,
  "vgg16_bn": VGG16BN,
  "vgg19_bn": VGG19BN,
  "cnn_all": cnn_all,
  "cnn_flat": cnn_flat,
}
MODEL_NAMES = tuple(_BUILDERS)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_DEFAULTS = {
  "width": 1.0,
  "head": "linear",
  "head_hidden": None,
  "conv_impl": "xla",
  "dtype": "float32",
  "stages": 4,
  "trunk_bn": "batch",
  "vgg_features": None,
}


def _choice(field: str, value: Any, choices: tuple[str, ...]) -> Any:
  if value not in choices:
    raise ValueError(f"model.{field}={value!r} is not valid; choose one of {choices}.")
  return value


def bionic_head_hidden(name: str, stages: int, vgg_features: int | None = None) -> tuple[int, ...]:
  """BioNIC's hidden widths of the 'bionic_mlp' head for a model."""
  if name.startswith("cnn"):
    return BIONIC_CNN_HEAD_HIDDEN
  if name.startswith("vgg"):
    if vgg_features is not None:
      return (4096, 256)  # VggModelLowerLayers
    return (256,) if name == "vgg16" else (32,)  # VggModelAllLayers / Vgg19ThreeChannelModelAllLayers
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
  is_resnet, is_vgg = name.startswith("resnet"), name.startswith("vgg")
  if not is_resnet and stages != 4:
    raise ValueError(f"model.stages applies to ResNets only; leave it at 4 for {name!r}.")
  if stages not in (1, 2, 3, 4):
    raise ValueError(f"model.stages={stages!r} is not valid; choose 1, 2, 3 or 4.")
  vgg_features = cfg["vgg_features"]
  if vgg_features is not None:
    if not is_vgg:
      raise ValueError(
        f"model.vgg_features applies to VGGs only; leave it at None for {name!r} "
        "(a ResNet is truncated with model.stages)."
      )
    longest = FEATURES_LENGTH[name]
    is_int = isinstance(vgg_features, numbers.Integral) and not isinstance(vgg_features, bool)
    if not is_int or not 1 <= vgg_features <= longest:
      raise ValueError(
        f"model.vgg_features must be None (whole VGG) or an int in 1..{longest} for {name!r} (torchvision "
        f"features[:k]; 14 on vgg16 = BioNIC's Vgg_lower), got {vgg_features!r}."
      )
    vgg_features = int(vgg_features)
  hidden = cfg["head_hidden"]
  hidden = bionic_head_hidden(name, stages, vgg_features) if hidden is None else hidden_widths(hidden)

  options = dict(
    width=float(width),
    head=_choice("head", cfg["head"], HEADS),
    head_hidden=hidden,
    conv_impl=_choice("conv_impl", cfg["conv_impl"], CONV_IMPLS),
    dtype=DTYPES[_choice("dtype", cfg["dtype"], tuple(DTYPES))],
    trunk_bn=_choice("trunk_bn", cfg["trunk_bn"], TRUNK_BN_MODES),
  )
  if is_resnet:
    options["stages"] = stages
  if is_vgg:
    options["features_kept"] = vgg_features
  return _BUILDERS[name](num_classes=int(num_classes), **options)
