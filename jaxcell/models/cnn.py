"""BioNIC's small from-scratch CNN baselines: `CNN_all` (class `CNN`) and `CNN_flat` (`CNNMini`).

Each conv block is Conv2d(k=7, s=1, p=1) -> ReLU -> BatchNorm2d -> pool, where the pool is
MaxPool2d(3, 2) except after the last block, AvgPool2d(3, 2). The pooled map is flattened in
PyTorch's (C, H, W) order, so converted torch heads apply unchanged, and fed to BioNIC's head
Linear(., 256) -> ReLU -> BN1d -> Linear(256, 128) -> ReLU -> BN1d -> Linear(128, n).

    cnn_all : channels 32, 64, 128, 256, 512 (x width); 224 px -> 512x2x2 = 2048 features
    cnn_flat: channels 10, 20 (x width);                  224 px -> 20x52x52 = 54080 features

Names mirror BioNIC's `conv_base = nn.Sequential(...)` and `fc = nn.Sequential(...)`; in the
trunk a block k (from 0) occupies Sequential indices 4k (conv), 4k+1 (ReLU), 4k+2 (BN), 4k+3
(pool):

    conv_base.<4k>.weight [O,I,7,7] / .bias  <->  params/conv_base_<4k>/kernel [7,7,I,O] / bias
    conv_base.<4k+2>.weight / .bias          <->  params/conv_base_<4k+2>/scale / bias
    conv_base.<4k+2>.running_mean / var      <->  batch_stats/conv_base_<4k+2>/mean / var
    fc.<i>.*                                 <->  params/fc/<i>/...  (see heads.py; fc.0.weight
                                                  is transposed, rows already in C,H,W order)

The first Linear's input size depends on the image size (BioNIC's `neurons` argument); Flax
infers it. Intermediates sown: 'block1'.. after each block's pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcell.models.conv import Conv2d, avg_pool, batch_norm, max_pool, scaled_channels, torch_default_kernel_init
from jaxcell.models.heads import make_head

CNN_ALL_CHANNELS = (32, 64, 128, 256, 512)
CNN_FLAT_CHANNELS = (10, 20)
BIONIC_CNN_HEAD_HIDDEN = (256, 128)

# (kernel, stride, padding) of the layers that shrink the image, per conv block.
_CONV, _POOL = (7, 1, 1), (3, 2, 0)


def spatial_size(size: int, num_blocks: int) -> int:
  """Side of the final feature map for an input side `size` (torch floor arithmetic)."""
  for _ in range(num_blocks):
    for kernel, stride, padding in (_CONV, _POOL):
      size = (size + 2 * padding - kernel) // stride + 1
  return size


def min_input_size(num_blocks: int) -> int:
  """Smallest input side that leaves a final feature map of at least 1x1."""
  size = 1
  for _ in range(num_blocks):  # Invert each layer, last first: n_in = (n_out-1)*s + k - 2p.
    for kernel, stride, padding in (_POOL, _CONV):
      size = max(1, (size - 1) * stride + kernel - 2 * padding)
  return size


class BioNICCNN(nn.Module):
  """BioNIC's CNN family on NHWC float32 inputs of any channel count; returns float32 logits.

  Attributes:
    channels: output channels of each conv block, before the width multiplier.
    num_classes: outputs of the head.
    width: channel multiplier (1.0 = BioNIC).
    head, head_hidden: see heads.make_head; BioNIC: 'bionic_mlp', (256, 128).
    conv_impl: 'xla' or 'im2col'.
    dtype: computation dtype; parameters stay float32.
    trunk_bn: 'batch' (BatchNorm follows `train`) or 'running' (conv blocks always use running statistics).
    name_for_errors: model name used in error messages.
  """

  channels: Sequence[int]
  num_classes: int
  width: float = 1.0
  head: str = "bionic_mlp"
  head_hidden: int | Sequence[int] = BIONIC_CNN_HEAD_HIDDEN
  conv_impl: str = "xla"
  dtype: Any = jnp.float32
  trunk_bn: str = "batch"
  name_for_errors: str = "cnn"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    self._check_input_size(x.shape[1:3])
    for k, channels in enumerate(self.channels):
      x = Conv2d(
        scaled_channels(channels, self.width),
        7,
        1,
        1,
        impl=self.conv_impl,
        dtype=self.dtype,
        kernel_init=torch_default_kernel_init,
        name=f"conv_base_{4 * k}",
      )(x)
      x = nn.relu(x)
      x = batch_norm(train and self.trunk_bn == "batch", self.dtype, name=f"conv_base_{4 * k + 2}")(x)
      last = k == len(self.channels) - 1
      x = avg_pool(x, 3, 2) if last else max_pool(x, 3, 2, impl=self.conv_impl)
      self.sow("intermediates", f"block{k + 1}", x)

    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch's (C, H, W) flatten
    self.sow("intermediates", "pooled", x)
    head = make_head(self.head, self.num_classes, self.head_hidden, self.dtype, name="fc")
    return head(x, train).astype(jnp.float32)

  def _check_input_size(self, hw: tuple[int, int]) -> None:
    num_blocks = len(self.channels)
    if min(spatial_size(side, num_blocks) for side in hw) < 1:
      minimum = min_input_size(num_blocks)
      raise ValueError(
        f"{self.name_for_errors} needs inputs of at least {minimum}x{minimum} pixels "
        f"(its {num_blocks} conv/pool blocks shrink smaller images to nothing); got "
        f"{hw[0]}x{hw[1]}. Resize the images up or choose a ResNet."
      )


def cnn_all(num_classes: int, **kwargs: Any) -> BioNICCNN:
  """BioNIC `CNNModel` ('CNN_all'): five conv blocks."""
  return BioNICCNN(CNN_ALL_CHANNELS, num_classes, name_for_errors="cnn_all", **kwargs)


def cnn_flat(num_classes: int, **kwargs: Any) -> BioNICCNN:
  """BioNIC `CNNMiniModel` ('CNN_flat'): two conv blocks."""
  return BioNICCNN(CNN_FLAT_CHANNELS, num_classes, name_for_errors="cnn_flat", **kwargs)
