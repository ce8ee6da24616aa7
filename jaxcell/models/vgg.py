"""torchvision-exact VGG-16, VGG-16-BN and VGG-19-BN in Flax linen, plus BioNIC's truncated `Vgg_lower`.

Module names follow the indices of torchvision's `features` and `classifier` Sequentials, so converted
ImageNet weights load by a mechanical mapping:

    torch state_dict key                     Flax path
    features.0.weight [O,I,3,3]              params/features_0/kernel [3,3,I,O]   (OIHW -> HWIO)
    features.1.weight / .bias (BN variants)  params/features_1/scale / .../bias
    features.1.running_mean / running_var    batch_stats/features_1/mean / .../var
    classifier.0.weight [4096, 25088]        params/classifier_0/kernel [25088, 4096]   (transposed)
    classifier.3.*                           params/classifier_3/...
    classifier.6.*                           params/fc/...  (the replaceable head, see heads.py)

Between the trunk and the classifier sits torch's AdaptiveAvgPool2d((7, 7)), reproduced exactly for any
input size (inputs smaller than 7 replicate pixels), and the flatten is in torch's (C, H, W) order, so
`classifier.0.weight` converts by a plain transpose.

`features_kept=k` keeps torchvision's `features[:k]` only, then the adaptive pool, flatten and the head
`fc` directly: BioNIC's `VggModelLowerLayers` (Vgg_lower) is vgg16 with k=14 and a bionic_mlp head of
hidden widths (4096, 256). `trunk_bn` is as in resnet.py ('running' freezes the statistics of the BN
variants' `features` BatchNorms); the head and classifier dropout always follow `train`.

Intermediates sown (collection 'intermediates'): 'block1'..'block5' after each max-pool reached, and
'pooled' (the input of `fc`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcell.models.conv import CONV_IMPLS, batch_norm, conv_im2col, conv_xla, kaiming_normal_fan_out
from jaxcell.models.conv import max_pool, scaled_channels
from jaxcell.models.heads import make_head
from jaxcell.models.resnet import trunk_train

# torchvision's configurations: channel counts of the 3x3 convs, "M" for a 2x2 max-pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M") + (512,) * 4 + ("M",)
POOL_SIZE = 7  # AdaptiveAvgPool2d((7, 7))
CLASSIFIER_WIDTH = 4096

# torchvision VGG init with pretrained=False: Linear weight N(0, 0.01), bias 0.
classifier_init = nn.initializers.normal(0.01)


def features_length(layers: Sequence[int | str], with_bn: bool) -> int:
  """len(torchvision `features`): conv (+ BN) + ReLU per conv, one module per max-pool."""
  return sum(1 if v == "M" else 2 + with_bn for v in layers)


def adaptive_bins(size: int, out: int) -> np.ndarray:
  """[out, size] averaging matrix of torch's adaptive pooling: bin i covers floor(i*size/out)..ceil((i+1)*size/out)."""
  weights = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, output_size: int = POOL_SIZE) -> jax.Array:
  """`torch.nn.AdaptiveAvgPool2d(output_size)` on NHWC inputs of any size (smaller inputs replicate)."""
  h, w = x.shape[1:3]
  if h == w == output_size:
    return x
  if h % output_size == 0 and w % output_size == 0:  # Equal, disjoint bins: a plain reshape-mean.
    b, c = x.shape[0], x.shape[3]
    x = x.reshape(b, output_size, h // output_size, output_size, w // output_size, c)
    return jnp.mean(x, axis=(2, 4), dtype=jnp.float32).astype(x.dtype)
  # Overlapping or replicated bins: separable averaging matrices (static, built from the shapes).
  rows = jnp.asarray(adaptive_bins(h, output_size))
  cols = jnp.asarray(adaptive_bins(w, output_size))
  y = jnp.einsum("ih,jw,bhwc->bijc", rows, cols, x.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)


def flatten_chw(x: jax.Array) -> jax.Array:
  """NHWC -> [B, C*H*W] in torch's (C, H, W) order."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class VGGConv(nn.Module):
  """torchvision VGG's Conv2d(3x3, padding 1, bias): kaiming-normal(fan_out) kernel and a zero bias.

  Holds the same parameters as conv.Conv2d (`kernel` HWIO, `bias`); it exists only because Conv2d's bias
  init is PyTorch's default, while torchvision initialises VGG conv biases to 0.
  """

  features: int
  impl: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl not in CONV_IMPLS:
      raise ValueError(f"Unknown conv impl {self.impl!r}; choose one of {CONV_IMPLS}.")
    kernel = self.param("kernel", kaiming_normal_fan_out, (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    conv = conv_xla if self.impl == "xla" else conv_im2col
    return conv(x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), (1, 1)) + bias.astype(self.dtype)


class VGG(nn.Module):
  """torchvision VGG on NHWC float32 inputs of any size and channel count; returns float32 logits.

  Attributes:
    layers: conv channel counts and "M" max-pools (VGG16_LAYERS, VGG19_LAYERS).
    with_bn: BatchNorm after every conv (the *_bn variants).
    num_classes: outputs of the head.
    features_kept: None = the whole VGG; k = torchvision `features[:k]` then pool, flatten and `fc`.
    width: channel multiplier (1.0 = torchvision); scales the 4096-wide classifier too.
    head, head_hidden: see heads.make_head ('linear' = torchvision's classifier.6).
    trunk_bn: 'batch' (feature BatchNorms follow `train`) or 'running' (always running statistics).
    conv_impl: 'xla' or 'im2col' (see conv.py).
    dtype: computation dtype; parameters stay float32.
  """

  layers: Sequence[int | str]
  with_bn: bool
  num_classes: int
  features_kept: int | None = None
  width: float = 1.0
  head: str = "linear"
  head_hidden: int | Sequence[int] = 256
  trunk_bn: str = "batch"
  conv_impl: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    total = features_length(self.layers, self.with_bn)
    kept = total if self.features_kept is None else self.features_kept
    if not isinstance(kept, int) or not 1 <= kept <= total:
      raise ValueError(
        f"features_kept must be None (whole VGG) or an int in 1..{total} (torchvision features[:k]); "
        f"got {self.features_kept!r}."
      )
    bn_train = trunk_train(self.trunk_bn, train)

    index, block = 0, 0  # index: position in torchvision's `features` Sequential.
    for v in self.layers:
      if index >= kept:
        break
      if v == "M":
        if min(x.shape[1:3]) < 2:
          raise ValueError(
            f"VGG input too small: max-pool {block + 1} gets {x.shape[1]}x{x.shape[2]} pixels. Feed inputs of "
            f"at least 32x32 pixels (2**5 for the five pools), or keep fewer features (vgg_features)."
          )
        x = max_pool(x, 2, 2, impl=self.conv_impl)
        block += 1
        self.sow("intermediates", f"block{block}", x)
        index += 1
        continue
      x = VGGConv(scaled_channels(v, self.width), self.conv_impl, self.dtype, name=f"features_{index}")(x)
      index += 1
      if self.with_bn and index < kept:
        x = batch_norm(bn_train, self.dtype, name=f"features_{index}")(x)
        index += 1
      if index < kept:  # ReLU is a module of its own in torch's Sequential.
        x = nn.relu(x)
        index += 1

    x = flatten_chw(adaptive_avg_pool(x, POOL_SIZE))
    if self.features_kept is None:
      x = self._classifier(x, train)
    self.sow("intermediates", "pooled", x)
    head = make_head(self.head, self.num_classes, self.head_hidden, self.dtype, name="fc")
    return head(x, train).astype(jnp.float32)

  def _classifier(self, x: jax.Array, train: bool) -> jax.Array:
    """torchvision classifier[0:6]: Linear-ReLU-Dropout(0.5), twice (classifier.6 is the head `fc`)."""
    width = scaled_channels(CLASSIFIER_WIDTH, self.width)
    dense = partial(
      nn.Dense, kernel_init=classifier_init, bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=jnp.float32
    )
    for name in ("classifier_0", "classifier_3"):
      x = nn.relu(dense(width, name=name)(x))
      x = nn.Dropout(0.5, deterministic=not train)(x)
    return x


VGG16 = partial(VGG, layers=VGG16_LAYERS, with_bn=False)
VGG16BN = partial(VGG, layers=VGG16_LAYERS, with_bn=True)
VGG19BN = partial(VGG, layers=VGG19_LAYERS, with_bn=True)
# len(features) per model: the largest valid `features_kept` (vgg16: 31, vgg16_bn: 44, vgg19_bn: 53).
FEATURES_LENGTH = {
  "vgg16": features_length(VGG16_LAYERS, False),
  "vgg16_bn": features_length(VGG16_LAYERS, True),
  "vgg19_bn": features_length(VGG19_LAYERS, True),
}
