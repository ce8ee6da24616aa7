"""torchvision-exact ResNet-18/34/50/101/152 in Flax linen, plus BioNIC's truncated `ResNet_lower`.

Structure, padding and module names follow `torchvision.models.resnet` (v1.5: the stride of a
Bottleneck sits on its 3x3 conv), so converted ImageNet weights load by a mechanical mapping:

    torch state_dict key                     Flax path
    conv1.weight [O,I,7,7]                   params/conv1/kernel [7,7,I,O]   (OIHW -> HWIO)
    bn1.weight / bn1.bias                    params/bn1/scale / params/bn1/bias
    bn1.running_mean / running_var           batch_stats/bn1/mean / batch_stats/bn1/var
    layer2.0.conv1.weight                    params/layer2_0/conv1/kernel
    layer2.0.downsample.0.weight             params/layer2_0/downsample_0/kernel
    layer2.0.downsample.1.*                  .../layer2_0/downsample_1/...
    fc.*                                     params/fc/...  (see heads.py)
    *.num_batches_tracked                    (dropped)

`stages` < 4 keeps only the first residual stages and pools the last one kept: BioNIC's
`ResNet18ModelLowerLayers` (layer3/layer4 = Identity) is `stages=2`. Zero-init of the last BN
of each block is off, as in torchvision by default.

`trunk_bn` says what the trunk's BatchNorms do when `train=True`: 'batch' (BioNIC, even with a frozen
trunk: batch statistics, running statistics updated) or 'running' (running statistics, never updated: a
fixed feature extractor for a linear probe). The head `fc` always follows `train`.

Intermediates sown (collection 'intermediates'): 'stem' (after the max-pool), 'layer1'.. for each
kept stage, and 'pooled' (the globally pooled features fed to the head).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcell.models.conv import Conv2d, batch_norm, global_avg_pool, max_pool, scaled_channels
from jaxcell.models.heads import make_head


TRUNK_BN_MODES = ("batch", "running")


def trunk_train(trunk_bn: str, train: bool) -> bool:
  """The `train` flag for trunk BatchNorms: `train` for 'batch', always False for 'running'."""
  if trunk_bn not in TRUNK_BN_MODES:
    raise ValueError(f"trunk_bn={trunk_bn!r} is not valid; choose one of {TRUNK_BN_MODES}.")
  return train and trunk_bn == "batch"


def resnet_conv(impl: str, dtype: Any) -> partial[Conv2d]:
  """torchvision's ResNet convs: no bias, kaiming-normal(fan_out) init (Conv2d's default)."""
  return partial(Conv2d, use_bias=False, impl=impl, dtype=dtype)


class BasicBlock(nn.Module):
  """ResNet-18/34 block: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus shortcut, ReLU."""

  planes: int
  strides: int
  downsample: bool
  conv_impl: str
  dtype: Any
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = resnet_conv(self.conv_impl, self.dtype)
    norm = partial(batch_norm, train, self.dtype)
    y = conv(self.planes, 3, self.strides, 1, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = conv(self.planes, 3, 1, 1, name="conv2")(y)
    y = norm("bn2")(y)
    return nn.relu(y + _shortcut(self, x, train))


class Bottleneck(nn.Module):
  """ResNet-50/101/152 block (v1.5): 1x1 -> 3x3 (strided) -> 1x1 (x4 channels), plus shortcut, ReLU."""

  planes: int
  strides: int
  downsample: bool
  conv_impl: str
  dtype: Any
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = resnet_conv(self.conv_impl, self.dtype)
    norm = partial(batch_norm, train, self.dtype)
    y = conv(self.planes, 1, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = conv(self.planes, 3, self.strides, 1, name="conv2")(y)
    y = nn.relu(norm("bn2")(y))
    y = conv(self.planes * self.expansion, 1, name="conv3")(y)
    y = norm("bn3")(y)
    return nn.relu(y + _shortcut(self, x, train))


def _shortcut(block: BasicBlock | Bottleneck, x: jax.Array, train: bool) -> jax.Array:
  """Identity, or torchvision's `downsample` = Sequential(1x1 strided conv, BN)."""
  if not block.downsample:
    return x
  conv = resnet_conv(block.conv_impl, block.dtype)
  x = conv(block.planes * block.expansion, 1, block.strides, name="downsample_0")(x)
  return batch_norm(train, block.dtype, name="downsample_1")(x)


class ResNet(nn.Module):
  """torchvision ResNet on NHWC float32 inputs of any channel count; returns float32 logits.

  Attributes:
    block: BasicBlock or Bottleneck.
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    num_classes: outputs of the head.
    width: channel multiplier (1.0 = torchvision).
    stages: residual stages kept (1-4); the last kept one is globally pooled.
    head, head_hidden: see heads.make_head.
    trunk_bn: 'batch' (trunk BatchNorm follows `train`) or 'running' (always running statistics).
    conv_impl: 'xla' or 'im2col' (see conv.py).
    dtype: computation dtype; parameters stay float32.
  """

  block: type[BasicBlock] | type[Bottleneck]
  stage_sizes: Sequence[int]
  num_classes: int
  width: float = 1.0
  stages: int = 4
  head: str = "linear"
  head_hidden: int | Sequence[int] = 256
  conv_impl: str = "xla"
  dtype: Any = jnp.float32
  trunk_bn: str = "batch"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    # Blocks get the trunk's flag; they have no dropout, so `train` only drives their BatchNorms.
    bn_train = trunk_train(self.trunk_bn, train)
    if not 1 <= self.stages <= len(self.stage_sizes):
      raise ValueError(f"stages must be 1..{len(self.stage_sizes)}, got {self.stages}.")
    conv = resnet_conv(self.conv_impl, self.dtype)
    in_planes = scaled_channels(64, self.width)
    x = conv(in_planes, 7, 2, 3, name="conv1")(x)
    x = nn.relu(batch_norm(bn_train, self.dtype, name="bn1")(x))
    x = max_pool(x, 3, 2, 1, impl=self.conv_impl)
    self.sow("intermediates", "stem", x)

    for stage in range(self.stages):
      planes = scaled_channels(64 * 2**stage, self.width)
      for index in range(self.stage_sizes[stage]):
        strides = 2 if stage > 0 and index == 0 else 1
        downsample = strides != 1 or in_planes != planes * self.block.expansion
        x = self.block(planes, strides, downsample, self.conv_impl, self.dtype, name=f"layer{stage + 1}_{index}")(
          x, bn_train
        )
        in_planes = planes * self.block.expansion
      self.sow("intermediates", f"layer{stage + 1}", x)

    x = global_avg_pool(x)
    self.sow("intermediates", "pooled", x)
    head = make_head(self.head, self.num_classes, self.head_hidden, self.dtype, name="fc")
    return head(x, train).astype(jnp.float32)


ResNet18 = partial(ResNet, block=BasicBlock, stage_sizes=(2, 2, 2, 2))
ResNet34 = partial(ResNet, block=BasicBlock, stage_sizes=(3, 4, 6, 3))
ResNet50 = partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 6, 3))
ResNet101 = partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 23, 3))
ResNet152 = partial(ResNet, block=Bottleneck, stage_sizes=(3, 8, 36, 3))
