"""Depthwise 2-D convolution with `torch.nn.Conv2d(C, C, k, groups=C)` semantics (EfficientNet's blocks).

Kernel: flax/lax HWIO depthwise layout [kh, kw, 1, C] (torch's [C, 1, kh, kw] transposed by (2, 3, 1, 0)),
optional `bias`.
- impl='xla': one lax.conv with feature_group_count=C.
- impl='im2col': the sum over kernel taps of a shifted strided slice times that tap's per-channel
  weights. Purely elementwise, so under jax.vmap over models it stays a batched multiply-add instead
  of a grouped convolution with C*models groups; its kernel gradient is summed in cache-sized blocks.
Padding: an int, an (h, w) pair (symmetric, like torch), ((top, bottom), (left, right)), or 'same':
TensorFlow's SAME (output ceil(n / stride), the odd pixel padded at the end), which is what the
`Conv2d*SamePadding` layers of lukemelas-style EfficientNets compute.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcell.models.conv import (
  CONV_IMPLS,
  Initializer,
  IntPair,
  _pair,
  _shifted_views,
  torch_default_bias_init,
  torch_default_kernel_init,
)

PadPairs = tuple[tuple[int, int], tuple[int, int]]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow 'SAME' padding of one spatial dimension: (before, after), the larger half after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def padding_pairs(padding: Any, size: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int]) -> PadPairs:
  """Normalises a padding spec (see above) to ((top, bottom), (left, right)) for an input of `size` (h, w)."""
  if isinstance(padding, str):
    if padding.lower() != "same":
      raise ValueError(
        f"padding must be 'same', an int, an (h, w) pair or ((top, bottom), (left, right)); got {padding!r}."
      )
    return tuple(same_padding(n, k, s) for n, k, s in zip(size, kernel, strides))  # type: ignore[return-value]
  if isinstance(padding, Sequence) and len(padding) == 2 and all(isinstance(p, Sequence) for p in padding):
    (top, bottom), (left, right) = (_pair(p, "padding (before, after)") for p in padding)
    return (top, bottom), (left, right)
  ph, pw = _pair(padding, "padding")
  return (ph, ph), (pw, pw)


def depthwise_conv_xla(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: PadPairs) -> jax.Array:
  """NHWC depthwise convolution by XLA: kernel [kh, kw, 1, C], one group per channel."""
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=list(padding),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=x.shape[-1],
  )


def depthwise_conv_im2col(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: PadPairs) -> jax.Array:
  """The same depthwise convolution as `depthwise_conv_xla`, as a sum of shifted strided slices x weights."""
  kh, kw = kernel.shape[:2]
  x = _pad_hw(x, padding)
  if x.shape[1] < kh or x.shape[2] < kw:
    raise ValueError(f"Input {x.shape[1:3]} (after padding) is smaller than the {kh}x{kw} depthwise kernel.")
  return _depthwise_sum(x, kernel, strides)


def _pad_hw(x: jax.Array, padding: PadPairs) -> jax.Array:
  (top, bottom), (left, right) = padding
  return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))) if top or bottom or left or right else x


def _depthwise_taps_sum(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """Sum over taps of the tap's view of the (already padded) input x its per-channel weights."""
  kh, kw, _, channels = kernel.shape
  taps = zip(_shifted_views(x, kh, kw, strides, (0, 0)), kernel.reshape(kh * kw, channels))
  return functools.reduce(jnp.add, (view * weights for view, weights in taps))


# The kernel gradient sums tap x output gradient over every pixel of the batch, one tap at a time, and XLA:CPU
# materialises each product: over the whole batch every tap streams input and gradient from memory. Summed
# over blocks of images that fit in a core's L2 cache (2 MB on the Sapphire Rapids hosts), the taps re-read
# them from the cache. EfficientNet-Lite0's depthwise kernel gradients at 128 px, batch 16 (this host, ms,
# blocks of 1/2/4/8/16 images): 64 px x 32 channels 22/13/19/29/40, 16 px x 240 (5x5) 20/15/21/36/55,
# 4 px x 1152 (3x3) 3.7/3.3/2.3/2.1/3.1. A block of one image costs more than it saves (the loop's overhead).
DEPTHWISE_GRAD_BLOCK_BYTES = 2 << 20


def _grad_block(n: int, bytes_per_image: int) -> int:
  """Images per block: the largest divisor of the batch within DEPTHWISE_GRAD_BLOCK_BYTES, at least 2."""
  fits = [d for d in range(2, n + 1) if n % d == 0 and d * bytes_per_image <= DEPTHWISE_GRAD_BLOCK_BYTES]
  return max(fits) if fits else min((d for d in range(2, n + 1) if n % d == 0), default=n)


def _input_grad(g: jax.Array, kernel: jax.Array, strides: tuple[int, int], padded_hw: tuple[int, int]) -> jax.Array:
  """Gradient of `_depthwise_taps_sum` for its (padded) input, as one stride-1 correlation per output phase.

  Autodiff's version pads each tap's gradient back into place and sums the kh*kw padded arrays; XLA:CPU fuses
  that for 3x3 kernels but not for 5x5 ones (5-8x slower). Input pixel (sh*u + a, sw*v + b) receives only the taps
  i = a + sh*p, j = b + sw*q, from output pixel (u - p, v - q): for each phase (a, b) the zero-padded gradient
  correlated with that phase's taps flipped, a stride-1 tap sum like the forward pass; the phases are then
  interleaved.
  """
  (sh, sw), (hp, wp) = strides, padded_hw
  n, out_h, out_w, channels = g.shape
  rows, cols = -(-hp // sh), -(-wp // sw)  # pixels per phase, rounded up (the excess is sliced off)
  phase_rows = []
  for a in range(sh):
    phase_row = []
    for b in range(sw):
      taps = kernel[a::sh, b::sw]  # [taps_h, taps_w, 1, C]: the taps that reach input phase (a, b)
      taps_h, taps_w = taps.shape[:2]
      if not taps_h or not taps_w:  # a stride larger than the kernel: these pixels are never read
        phase_row.append(jnp.zeros((n, rows, cols, channels), g.dtype))
        continue
      padded = jnp.pad(g, ((0, 0), (taps_h - 1, rows - out_h), (taps_w - 1, cols - out_w), (0, 0)))
      phase_row.append(_depthwise_taps_sum(padded, taps[::-1, ::-1], (1, 1)))
    phase_rows.append(jnp.stack(phase_row, axis=3))  # [n, rows, cols, sw, C]
  interleaved = jnp.stack(phase_rows, axis=2).reshape(n, rows * sh, cols * sw, channels)  # [n, rows, sh, cols, sw, C]
  return interleaved[:, :hp, :wp]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_sum(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """`_depthwise_taps_sum` with the kernel gradient of `_depthwise_sum_grad`."""
  return _depthwise_taps_sum(x, kernel, strides)


def _depthwise_sum_fwd(x, kernel, strides):
  return _depthwise_taps_sum(x, kernel, strides), (x, kernel)


def _depthwise_sum_grad(strides, residuals, g):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  d_x = _input_grad(g, kernel, strides, x.shape[1:3])

  def block_grad(x, g):
    return jnp.stack([jnp.sum(view * g, axis=(0, 1, 2)) for view in _shifted_views(x, kh, kw, strides, (0, 0))])

  n = x.shape[0]
  block = _grad_block(n, (x[0].size + g[0].size) * x.dtype.itemsize)
  if block == n:
    d_kernel = block_grad(x, g)
  else:
    blocks = (x.reshape(n // block, block, *x.shape[1:]), g.reshape(n // block, block, *g.shape[1:]))
    d_kernel, _ = jax.lax.scan(
      lambda acc, xg: (acc + block_grad(*xg), None), jnp.zeros((kh * kw, x.shape[-1]), g.dtype), blocks
    )
  return d_x, d_kernel.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_sum.defvjp(_depthwise_sum_fwd, _depthwise_sum_grad)


class DepthwiseConv2d(nn.Module):
  """Depthwise 2-D convolution, `torch.nn.Conv2d(C, C, k, groups=C)` semantics, on NHWC inputs.

  Attributes:
    kernel_size, strides: int or (h, w) pair.
    padding: int, (h, w) pair, ((top, bottom), (left, right)) or 'same' (TensorFlow SAME, from the input size).
    use_bias: add a bias (initialised like PyTorch, U(+-1/sqrt(fan_in)), fan_in = kh * kw).
    impl: 'xla' or 'im2col' (same numbers and parameters; see the module docstring).
    dtype: computation dtype; parameters are always stored in float32.
    kernel_init: kernel initialiser (default: PyTorch's default, U(+-1/sqrt(kh * kw))).
  """

  kernel_size: IntPair
  strides: IntPair = 1
  padding: Any = 0
  use_bias: bool = True
  impl: str = "xla"
  dtype: Any = jnp.float32
  kernel_init: Initializer = torch_default_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl not in CONV_IMPLS:
      raise ValueError(f"Unknown conv impl {self.impl!r}; choose one of {CONV_IMPLS}.")
    kernel_hw = _pair(self.kernel_size, "kernel_size")
    strides = _pair(self.strides, "strides")
    padding = padding_pairs(self.padding, x.shape[1:3], kernel_hw, strides)
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (*kernel_hw, 1, channels), jnp.float32)
    conv = depthwise_conv_xla if self.impl == "xla" else depthwise_conv_im2col
    y = conv(x.astype(self.dtype), kernel.astype(self.dtype), strides, padding)
    if self.use_bias:
      bias = self.param("bias", torch_default_bias_init(kernel_hw[0] * kernel_hw[1]), (channels,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y
