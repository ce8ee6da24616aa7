"""Converts torchvision ResNet and VGG state dicts to jaxcell's Flax variables.

    variables = to_flax(read_state_dict("resnet50-11ad3fa6.pth"), "resnet50")
    logits = build_model({"name": "resnet50"}, 1000).apply(variables, x, train=False)

jaxcell's ResNets (models/resnet.py) and VGGs (models/vgg.py) name their modules after torchvision's, so a
key converts mechanically: each numeric part joins the name before it (`layer2.0.downsample.1` ->
`layer2_0/downsample_1`, `features.10` -> `features_10`), the head (`fc`, VGG's `classifier.6`) becomes
`fc`, and

    conv weight [O, I, kh, kw]                -> params/.../kernel [kh, kw, I, O]
    Linear weight [out, in]                   -> params/.../kernel [in, out]
    BatchNorm weight / bias                   -> params/.../scale / params/.../bias
    BatchNorm running_mean / running_var      -> batch_stats/.../mean / batch_stats/.../var
    conv / Linear bias                        -> params/.../bias
    num_batches_tracked                       -> dropped (Flax keeps no step count)

The layout part of that table is shared with efficientnet.py (torch_layout.py); this file holds the names.

The head is a linear one; its number of classes (1000 for ImageNet) and the model's input channels are
read from `fc`/`classifier.6` and the first conv. Every converted key and shape is checked against the
Flax model's own variables (jax.eval_shape of its init at width 1.0), so a checkpoint of another
architecture raises ConversionError naming the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from jaxcell.convert import torch_layout
from jaxcell.convert.weights_file import ConversionError, unflatten_variables
from jaxcell.models import build_model

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "vgg16_bn", "vgg19_bn")
IMAGENET_CLASSES = 1000
# The torch module that holds each architecture family's head, and the first conv (input channels).
_HEAD = {"resnet": "fc", "vgg": "classifier_6"}
_STEM = {"resnet": "params/conv1/kernel", "vgg": "params/features_0/kernel"}


def _family(architecture: str) -> str:
  if architecture not in ARCHITECTURES:
    raise ValueError(f"Unknown torchvision architecture {architecture!r}; choose one of {ARCHITECTURES}.")
  return "vgg" if architecture.startswith("vgg") else "resnet"


def flax_key(torch_key: str, ndim: int, head: str = "fc") -> str | None:
  """Flax path ('params/layer1_0/bn1/scale') of one torch key, or None for keys that are dropped.

  `head` is the joined torch name of the head module ('fc' for ResNets, 'classifier_6' for VGGs).
  """
  names, leaf = torch_layout.module_names(torch_key)  # `layer1.0` -> `layer1_0`, `features.10` -> `features_10`
  if names and names[0] == head:
    names[0] = "fc"
  return torch_layout.flax_path(names, leaf, ndim)


@functools.cache
def expected_shapes(architecture: str, num_classes: int = IMAGENET_CLASSES, in_channels: int = 3) -> dict[str, tuple]:
  """Flat Flax path -> shape of `architecture`'s variables with a linear head at width 1.0 (nothing allocated)."""
  _family(architecture)
  return torch_layout.variable_shapes(build_model({"name": architecture, "head": "linear"}, num_classes), in_channels)


def to_flax(state_dict: Mapping[str, np.ndarray], architecture: str) -> dict:
  """A torchvision state dict -> {'params': ..., 'batch_stats': ...} of float32 numpy arrays.

  'batch_stats' is {} for vgg16, which has no BatchNorm. Raises ConversionError naming missing, unexpected
  and mis-shaped keys (Flax paths, then the torch keys behind the unexpected and mis-shaped ones).
  """
  family = _family(architecture)
  what = f"{architecture} checkpoint"
  flat, origin = torch_layout.flatten_state_dict(
    state_dict, functools.partial(flax_key, head=_HEAD[family]), what, np.float32
  )
  head, stem = flat.get("params/fc/kernel"), flat.get(_STEM[family])
  num_classes = head.shape[1] if head is not None and head.ndim == 2 else IMAGENET_CLASSES
  in_channels = stem.shape[2] if stem is not None and stem.ndim == 4 else 3
  torch_layout.check_converted(expected_shapes(architecture, int(num_classes), int(in_channels)), flat, origin, what)
  variables = unflatten_variables(flat)
  return {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}


__all__ = ["ARCHITECTURES", "ConversionError", "expected_shapes", "flax_key", "to_flax"]
