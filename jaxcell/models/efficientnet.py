"""EfficientNet-Lite0 in Flax linen, exact to the `efficientnet_lite_pytorch` package (lukemelas-style).

Lite differs from EfficientNet-B0 by: ReLU6 instead of swish, no squeeze-excite, and stem/head channel
counts not scaled by the width coefficient (irrelevant for Lite0, whose coefficients are 1.0). BatchNorm
uses eps 1e-3 and torch momentum 0.01 (Flax momentum 0.99). Every convolution pads like TensorFlow's
'SAME' (output ceil(n / stride), the odd pixel padded at the end), as the package's
`Conv2dStaticSamePadding` does; the package computes that padding once for 224 px, which is the same as
computing it from the input for any size divisible by 32 (the Flax model always computes it from the input).

Stages (repeats, kernel, stride, expand ratio, output channels); blocks are numbered 0..15 across stages:

    stage1  1 x  k3 s1 e1  16      stage5  3 x  k5 s1 e6 112
    stage2  2 x  k3 s2 e6  24      stage6  4 x  k5 s2 e6 192
    stage3  2 x  k5 s2 e6  40      stage7  1 x  k3 s1 e6 320
    stage4  3 x  k3 s2 e6  80      stem 32 channels (3x3 s2), head 1280 channels (1x1)

Only the repeated blocks of a stage (not its first block) have the residual connection, as in the
package (its first blocks change channels or stride). In training, drop connect (stochastic depth) on
block i's residual branch has rate 0.2 * i / 16, and dropout 0.2 precedes `fc`; both use the 'dropout'
rng. With `trunk_bn='running'` the trunk is a fixed function in training too (running BatchNorm
statistics and no drop connect), so its features can be cached; the dropout and head follow `train`.

Module names map mechanically from the torch keys (strip the leading '_', `_blocks.N` -> `blocks_N`):

    torch state_dict key                        Flax path
    _conv_stem.weight [O,I,3,3]                 params/conv_stem/kernel [3,3,I,O]     (OIHW -> HWIO)
    _bn0.weight / _bn0.bias                     params/bn0/scale / params/bn0/bias
    _bn0.running_mean / running_var             batch_stats/bn0/mean / batch_stats/bn0/var
    _blocks.N._expand_conv.weight               params/blocks_N/expand_conv/kernel    (not in block 0)
    _blocks.N._bn0.*                            .../blocks_N/bn0/...                   (not in block 0)
    _blocks.N._depthwise_conv.weight [C,1,k,k]  params/blocks_N/depthwise_conv/kernel [k,k,1,C]
    _blocks.N._bn1.*, _blocks.N._project_conv.weight, _blocks.N._bn2.*  likewise
    _conv_head.weight / _bn1.*                  params/conv_head/kernel / .../bn1/...
    _fc.weight [n, D] / _fc.bias                params/fc/kernel [D, n] (transposed) / params/fc/bias
    *.num_batches_tracked                       (dropped)

Intermediates sown (collection 'intermediates'): 'stem' (after conv_stem + bn0 + ReLU6), 'stage1'..
'stage7' (after the last block of each stage), 'head' (after conv_head + bn1 + ReLU6) and 'pooled'
(the globally pooled features fed, through dropout, to `fc`). With trunk_bn='running' the trunk is fixed:
running BN statistics, no drop connect and no dropout before `fc`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcell.models.conv import Conv2d, global_avg_pool, scaled_channels, torch_default_kernel_init
from jaxcell.models.depthwise import DepthwiseConv2d, padding_pairs
from jaxcell.models.heads import make_head

# (repeats, kernel, stride, expand_ratio, out_channels) per stage, from the package's efficientnet_lite().
LITE0_STAGES = (
  (1, 3, 1, 1, 16),
  (2, 3, 2, 6, 24),
  (2, 5, 2, 6, 40),
  (3, 3, 2, 6, 80),
  (3, 5, 1, 6, 112),
  (4, 5, 2, 6, 192),
  (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
TRUNK_BN = ("batch", "running")

# The package's BatchNorm2d(momentum=1 - 0.99, eps=1e-3); Flax's momentum is torch's 1 - momentum.
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


def lite_batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """The package's BatchNorm: batch statistics (and running-stat updates) when `train`."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def lite_conv(features: int, impl: str, dtype: Any, name: str) -> Conv2d:
  """The package's 1x1 convs: no bias, PyTorch's default init (it never re-initialises)."""
  return Conv2d(features, 1, use_bias=False, impl=impl, dtype=dtype, kernel_init=torch_default_kernel_init, name=name)


class MBConvBlock(nn.Module):
  """Mobile inverted bottleneck without squeeze-excite: [1x1 expand] -> depthwise -> 1x1 project (+ skip).

  Attributes:
    features: output channels.
    kernel_size, strides: of the depthwise conv.
    expand_ratio: expanded channels = input channels * expand_ratio (1: no expand conv, no bn0).
    residual: add the input back (the package: repeated blocks only).
    drop_rate: drop-connect rate on the residual branch in training.
    conv_impl, dtype: see conv.py.
  """

  features: int
  kernel_size: int
  strides: int
  expand_ratio: int
  residual: bool
  drop_rate: float
  conv_impl: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, bn_train: bool, stochastic: bool) -> jax.Array:
    norm = partial(lite_batch_norm, bn_train, self.dtype)
    inputs = x
    if self.expand_ratio != 1:
      x = lite_conv(x.shape[-1] * self.expand_ratio, self.conv_impl, self.dtype, "expand_conv")(x)
      x = nn.relu6(norm("bn0")(x))
    x = DepthwiseConv2d(
      self.kernel_size,
      self.strides,
      "same",
      use_bias=False,
      impl=self.conv_impl,
      dtype=self.dtype,
      name="depthwise_conv",
    )(x)
    x = nn.relu6(norm("bn1")(x))
    x = lite_conv(self.features, self.conv_impl, self.dtype, "project_conv")(x)
    x = norm("bn2")(x)
    if not self.residual:
      return x
    if x.shape != inputs.shape:
      raise ValueError(f"Residual block {self.name} maps {inputs.shape} to {x.shape}; shapes must match.")
    if stochastic and self.drop_rate > 0:
      x = self._drop_connect(x)
    return x + inputs

  def _drop_connect(self, x: jax.Array) -> jax.Array:
    """Drops the whole branch per sample with probability drop_rate, scaling kept ones by 1/keep."""
    keep = 1.0 - self.drop_rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0], 1, 1, 1))
    return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite on NHWC float32 inputs of any channel count; returns float32 logits.

  Attributes:
    num_classes: outputs of the head.
    width: channel multiplier for every layer, stem and head included (1.0 = the real network; smaller
      values make tiny test models).
    head, head_hidden: see heads.make_head ('linear' = the package's `_fc`).
    conv_impl: 'xla' or 'im2col' (see conv.py), for regular and depthwise convs alike.
    dtype: computation dtype; parameters stay float32.
    trunk_bn: 'batch' (trunk BatchNorm follows `train`) or 'running' (running statistics, never updated;
      drop connect off too, so the trunk is fixed). The head always follows `train`.
    stage_specs: (repeats, kernel, stride, expand_ratio, out_channels) per stage; default Lite0.
    dropout_rate: dropout before `fc` in training (the package: 0.2).
    drop_connect_rate: drop-connect rate of the last block; block i gets rate * i / num_blocks (0.2).
  """

  num_classes: int
  width: float = 1.0
  head: str = "linear"
  head_hidden: int | Sequence[int] = 256
  conv_impl: str = "xla"
  dtype: Any = jnp.float32
  trunk_bn: str = "batch"
  stage_specs: Sequence[tuple[int, int, int, int, int]] = LITE0_STAGES
  dropout_rate: float = 0.2
  drop_connect_rate: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.trunk_bn not in TRUNK_BN:
      raise ValueError(f"trunk_bn must be one of {TRUNK_BN}, got {self.trunk_bn!r}.")
    if x.ndim != 4:
      raise ValueError(f"EfficientNet-Lite expects NHWC images [B, H, W, C], got shape {x.shape}.")
    trunk_train = train and self.trunk_bn == "batch"
    channels = partial(scaled_channels, width=self.width)

    # Stem: TF-SAME padding is asymmetric for even inputs, so pad first and convolve unpadded.
    (top, bottom), (left, right) = padding_pairs("same", x.shape[1:3], (3, 3), (2, 2))
    x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    x = Conv2d(
      channels(STEM_CHANNELS),
      3,
      2,
      0,
      use_bias=False,
      impl=self.conv_impl,
      dtype=self.dtype,
      kernel_init=torch_default_kernel_init,
      name="conv_stem",
    )(x)
    x = nn.relu6(lite_batch_norm(trunk_train, self.dtype, "bn0")(x))
    self.sow("intermediates", "stem", x)

    num_blocks = sum(stage[0] for stage in self.stage_specs)
    index = 0
    for stage, (repeats, kernel, stride, expand, out) in enumerate(self.stage_specs):
      for repeat in range(repeats):
        x = MBConvBlock(
          features=channels(out),
          kernel_size=kernel,
          strides=stride if repeat == 0 else 1,
          expand_ratio=expand,
          residual=repeat > 0,
          drop_rate=self.drop_connect_rate * index / num_blocks,
          conv_impl=self.conv_impl,
          dtype=self.dtype,
          name=f"blocks_{index}",
        )(x, trunk_train, trunk_train)
        index += 1
      self.sow("intermediates", f"stage{stage + 1}", x)

    x = lite_conv(channels(HEAD_CHANNELS), self.conv_impl, self.dtype, "conv_head")(x)
    x = nn.relu6(lite_batch_norm(trunk_train, self.dtype, "bn1")(x))
    self.sow("intermediates", "head", x)

    x = global_avg_pool(x)
    self.sow("intermediates", "pooled", x)
    # A fixed trunk (trunk_bn='running') is a feature extractor: its pooled features must not depend on the draw,
    # so the features cached by the frozen-feature path are exactly what the head sees here.
    x = nn.Dropout(self.dropout_rate, deterministic=not trunk_train)(x)
    head = make_head(self.head, self.num_classes, self.head_hidden, self.dtype, name="fc")
    return head(x, train).astype(jnp.float32)


EfficientNetLite0 = partial(EfficientNetLite, stage_specs=LITE0_STAGES)
