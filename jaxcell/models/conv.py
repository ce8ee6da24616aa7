"""Layers with PyTorch semantics: convolution, linear, BatchNorm, pooling, initialisers.

jaxcell owns its convolution so the engine can pick how it is computed. Both implementations of
`Conv2d` hold the same parameters (`kernel` HWIO, optional `bias`), so converted torchvision
weights load into either:

- ``impl='xla'``: one `lax.conv_general_dilated` (NHWC/HWIO). Best for a single model.
- ``impl='im2col'``: pad, gather the kh*kw shifted strided views into one patch tensor and do a
  single matmul. Under `jax.vmap` over many models' kernels, `lax.conv` becomes a grouped
  convolution that ran at ~2 GFLOP/s on our CPU, while this stays a batched matmul at
  35-57 GFLOP/s (see ARCHITECTURE.md). `lax.conv_general_dilated_patches` was slow; not used.

Padding is explicit, symmetric and integer, exactly like `torch.nn.Conv2d(padding=p)`; `'SAME'`
pads asymmetrically for even inputs at stride 2 and gives different numbers.

Initialisers: torchvision's ResNet convs use kaiming-normal(fan_out) (`Conv2d`'s default); layers
BioNIC added (its CNNs, the heads) use PyTorch's default U(+-1/sqrt(fan_in)) for weight and bias.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]
IntPair = int | Sequence[int]

CONV_IMPLS = ("xla", "im2col")

# torchvision ResNets: kaiming_normal_(mode='fan_out', nonlinearity='relu') -> N(0, 2 / fan_out),
# fan_out = out_channels * kh * kw. ('normal' here is the untruncated normal, as in torch.)
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's default Conv/Linear weight init, kaiming_uniform_(a=sqrt(5)), is U(+-1/sqrt(fan_in)):
# a uniform variance_scaling with scale 1/3 has exactly that bound, sqrt(3 * scale / fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init for Conv/Linear: U(+-1/sqrt(fan_in)) of the layer's fan-in."""
  bound = 1.0 / fan_in**0.5

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def scaled_channels(channels: int, width: float) -> int:
  """Channel count under a width multiplier: max(1, round(channels * width))."""
  return max(1, round(channels * width))


def _pair(value: IntPair, what: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair):
    raise ValueError(f"{what} must be a non-negative int or a pair of ints, got {value!r}.")
  return pair


def conv_xla(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[int, int]) -> jax.Array:
  """NHWC x HWIO convolution by XLA, with torch-style symmetric padding."""
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=[(padding[0],) * 2, (padding[1],) * 2],
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


# A strided conv over this few input channels x stride^2 (a stem: 3 colours, stride 2) is computed on
# space-to-depth blocks; see `_space_to_depth_conv`.
SPACE_TO_DEPTH_MAX_CHANNELS = 16


def conv_im2col(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[int, int]) -> jax.Array:
  """The same convolution as `conv_xla`, as shifted strided slices + one matmul."""
  kh, kw, cin, cout = kernel.shape
  (sh, sw), (ph, pw) = strides, padding
  if (sh > 1 or sw > 1) and (kh > sh or kw > sw) and cin * sh * sw <= SPACE_TO_DEPTH_MAX_CHANNELS:
    return _space_to_depth_conv(x, kernel, strides, padding)
  if (sh, sw) == (1, 1) and kh * kw > 1 and ph < kh and pw < kw:
    return _stride1_conv(x, kernel, padding)
  return _patches(x, kh, kw, strides, padding) @ kernel.reshape(kh * kw * cin, cout)


def _shifted_views(x: jax.Array, kh: int, kw: int, strides: tuple[int, int], padding: tuple[int, int]):
  """The kh*kw strided slices of the zero-padded input; slice (i, j) holds input pixel (i + sh*y, j + sw*x)
  for every output pixel (y, x). Row-major in (i, j), so concatenated along channels they match
  kernel.reshape(kh * kw * cin, cout)."""
  (sh, sw), (ph, pw) = strides, padding
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  out_h = (x.shape[1] - kh) // sh + 1
  out_w = (x.shape[2] - kw) // sw + 1
  return [
    x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :] for i in range(kh) for j in range(kw)
  ]


def _patches(x: jax.Array, kh: int, kw: int, strides: tuple[int, int], padding: tuple[int, int]) -> jax.Array:
  """im2col: [batch, out_h, out_w, kh * kw * channels]."""
  views = _shifted_views(x, kh, kw, strides, padding)
  return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


# The input gradient of a stride-1 conv is computed as a transposed convolution when the batch has at least
# this many output pixels per output channel; below it (deep layers of small images), transposing the kernel
# costs more than the convolution saves. Measured on CPU: +10 % for a vmapped ResNet-18 step at 64 px.
TRANSPOSED_GRAD_MIN_PIXELS_PER_CHANNEL = 4


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _stride1_conv(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
  """A stride-1 im2col convolution with the gradient of `_stride1_conv_grad`."""
  return _stride1_conv_fwd(x, kernel, padding)[0]


def _stride1_conv_fwd(x, kernel, padding):
  kh, kw, cin, cout = kernel.shape
  patches = _patches(x, kh, kw, (1, 1), padding)
  return patches @ kernel.reshape(kh * kw * cin, cout), (patches, kernel)


def _stride1_conv_grad(padding, residuals, g):
  """Kernel gradient: patches^T @ g. Input gradient, for many pixels per channel: the transposed convolution,
  which at stride 1 is a convolution of g, padded by k-1-p, with the flipped kernel (here: taps in reverse
  order). Autodiff instead multiplies g by the kernel into a [pixels, kh*kw*cin] patch gradient, a matmul
  with only cout to sum over, and adds it back with kh*kw pads (col2im), which is what remains for few pixels.
  """
  patches, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  lead = tuple(range(g.ndim - 1))
  d_kernel = jax.lax.dot_general(patches, g, ((lead, lead), ((), ()))).reshape(kernel.shape)
  if g.size >= TRANSPOSED_GRAD_MIN_PIXELS_PER_CHANNEL * cout * cout:
    views = _shifted_views(g, kh, kw, (1, 1), (kh - 1 - padding[0], kw - 1 - padding[1]))
    d_x = jnp.concatenate(views[::-1], axis=-1) @ kernel.transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)
  else:
    d_x = _col2im(g @ kernel.reshape(kh * kw * cin, cout).T, kh, kw, padding)
  return d_x, d_kernel


_stride1_conv.defvjp(_stride1_conv_fwd, _stride1_conv_grad)


def _col2im(d_patches: jax.Array, kh: int, kw: int, padding: tuple[int, int]) -> jax.Array:
  """The transpose of stride-1 `_patches`: each tap's channel block padded back to its position and summed."""
  (ph, pw), cin = padding, d_patches.shape[-1] // (kh * kw)
  out_h, out_w = d_patches.shape[1], d_patches.shape[2]
  rows, cols = out_h + kh - 1, out_w + kw - 1
  zero = jnp.zeros((), d_patches.dtype)
  total = None
  for tap in range(kh * kw):
    i, j = divmod(tap, kw)
    block = d_patches[..., tap * cin : (tap + 1) * cin]
    block = jax.lax.pad(block, zero, ((0, 0, 0), (i, rows - out_h - i, 0), (j, cols - out_w - j, 0), (0, 0, 0)))
    total = block if total is None else total + block
  return total[:, ph : rows - ph, pw : cols - pw, :]


def _space_to_depth_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[int, int]):
  """A stride-s conv as a stride-1 conv over s x s pixel blocks (the TPU ResNet stem trick), same numbers.

  The kernel is zero-padded to a multiple of s and regrouped, so a 7x7 stride-2 stem over 3 channels takes
  16 slices of 12 channels instead of 49 slices of 3. Each slice is a separate XLA fusion that recomputes
  its producer (the augmented, normalised batch), so fewer, wider slices made a vmapped 128 px stem's
  forward and backward 1.5x faster on CPU, despite 30 % more multiply-adds on the padding.
  """
  kh, kw, cin, cout = kernel.shape
  (sh, sw), (ph, pw) = strides, padding
  out_h = (x.shape[1] + 2 * ph - kh) // sh + 1
  out_w = (x.shape[2] + 2 * pw - kw) // sw + 1
  bh, bw = -(-kh // sh), -(-kw // sw)  # Kernel size in blocks.
  kernel = jnp.pad(kernel, ((0, bh * sh - kh), (0, bw * sw - kw), (0, 0), (0, 0)))
  kernel = kernel.reshape(bh, sh, bw, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(bh, bw, sh * sw * cin, cout)
  # Exactly the rows and columns the output reads: (out + blocks - 1) blocks, cropping (negative pad) if fewer.
  rows, cols = sh * (out_h + bh - 1), sw * (out_w + bw - 1)
  zero = jnp.zeros((), x.dtype)
  x = jax.lax.pad(x, zero, ((0, 0, 0), (ph, rows - x.shape[1] - ph, 0), (pw, cols - x.shape[2] - pw, 0), (0, 0, 0)))
  b = x.shape[0]
  x = x.reshape(b, out_h + bh - 1, sh, out_w + bw - 1, sw, cin).transpose(0, 1, 3, 2, 4, 5)
  return conv_im2col(x.reshape(b, out_h + bh - 1, out_w + bw - 1, sh * sw * cin), kernel, (1, 1), (0, 0))


class Conv2d(nn.Module):
  """2-D convolution with `torch.nn.Conv2d` semantics on NHWC inputs.

  Attributes:
    features: output channels.
    kernel_size, strides, padding: int or (h, w) pair; padding is symmetric zero padding.
    use_bias: add a bias (initialised like PyTorch, U(+-1/sqrt(fan_in))).
    impl: 'xla' or 'im2col' (same numbers and parameters; see module docstring).
    dtype: computation dtype; parameters are always stored in float32.
    kernel_init: kernel initialiser (default: torchvision's ResNet init).
  """

  features: int
  kernel_size: IntPair
  strides: IntPair = 1
  padding: IntPair = 0
  use_bias: bool = True
  impl: str = "xla"
  dtype: Any = jnp.float32
  kernel_init: Initializer = kaiming_normal_fan_out

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl not in CONV_IMPLS:
      raise ValueError(f"Unknown conv impl {self.impl!r}; choose one of {CONV_IMPLS}.")
    kh, kw = _pair(self.kernel_size, "kernel_size")
    strides = _pair(self.strides, "strides")
    padding = _pair(self.padding, "padding")
    in_features = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kh, kw, in_features, self.features), jnp.float32)
    conv = conv_xla if self.impl == "xla" else conv_im2col
    y = conv(x.astype(self.dtype), kernel.astype(self.dtype), strides, padding)
    if self.use_bias:
      bias = self.param("bias", torch_default_bias_init(kh * kw * in_features), (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class Linear(nn.Module):
  """`torch.nn.Linear` as a Flax layer: params `kernel` [in, out] (= torch weight.T) and `bias`.

  Uses PyTorch's default init, which `nn.Dense` cannot express (its bias init needs fan-in).
  `train` is accepted and ignored so a Linear can serve as a classification head.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # Same signature as the other heads.
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_default_kernel_init, (fan_in, self.features), jnp.float32)
    bias = self.param("bias", torch_default_bias_init(fan_in), (self.features,), jnp.float32)
    return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


def batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (torch momentum 0.1 == Flax momentum 0.9, eps 1e-5)."""
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, name=name
  )


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0, impl: str = "xla") -> jax.Array:
  """`torch.nn.MaxPool2d(window, stride, padding)` (floor mode); padding counts as -inf.

  The forward is one reduce_window either way. With impl='im2col' the gradient is `_max_pool_grad`, built
  from strided slices and pads: under `jax.vmap` over models, reduce_window's own gradient (select_and_scatter)
  is lowered on CPU through index arrays and a scatter, 3.3x slower (8 % of a vmapped ResNet-18 step at 128 px).
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"Unknown pooling impl {impl!r}; choose one of {CONV_IMPLS}.")
  if impl == "im2col":
    return _max_pool_sliced_grad(x, window, stride, padding)
  return _max_pool_forward(x, window, stride, padding)


def _max_pool_forward(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
  # flax pads reduce_window with its init value, -inf for max, so padding never wins.
  return nn.max_pool(x, (window, window), (stride, stride), ((padding, padding),) * 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_sliced_grad(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
  return _max_pool_forward(x, window, stride, padding)


def _window_views(x: jax.Array, window: int, stride: int, padding: int):
  """The window*window strided slices of the -inf-padded input, one per window offset (row-major)."""
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
  out_h, out_w = (xp.shape[1] - window) // stride + 1, (xp.shape[2] - window) // stride + 1
  span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
  return [xp[:, i : i + span_h : stride, j : j + span_w : stride, :] for i in range(window) for j in range(window)]


def _max_pool_fwd(x, window, stride, padding):
  """The max and the offset of each window's first maximal entry (strict '>': torch's choice on ties).

  The offset is kept, not re-derived by comparing values in the backward pass: XLA may compute the input in
  two fusions with last-bit differences, and an equality test would then drop a window's gradient.
  """
  views = _window_views(x, window, stride, padding)
  best, offset = views[0], jnp.zeros(views[0].shape, jnp.int8)
  for k, view in enumerate(views[1:], start=1):
    better = view > best
    best, offset = jnp.where(better, view, best), jnp.where(better, jnp.int8(k), offset)
  return best, (x.shape, offset)


def _max_pool_grad(window, stride, padding, residuals, g):
  """Each window's gradient goes back to its maximal entry through the transpose of that offset's strided
  slice (an interior pad); XLA fuses the window*window pads and adds into one pass."""
  shape, offset = residuals
  rows, cols = shape[1] + 2 * padding, shape[2] + 2 * padding
  span_h, span_w = stride * (g.shape[1] - 1) + 1, stride * (g.shape[2] - 1) + 1
  total = None
  for k in range(window * window):
    i, j = divmod(k, window)
    interior = ((0, 0, 0), (i, rows - i - span_h, stride - 1), (j, cols - j - span_w, stride - 1), (0, 0, 0))
    share = jax.lax.pad(jnp.where(offset == k, g, jnp.zeros((), g.dtype)), jnp.zeros((), g.dtype), interior)
    total = share if total is None else total + share
  return (total[:, padding : padding + shape[1], padding : padding + shape[2], :],)


_max_pool_sliced_grad.defvjp(_max_pool_fwd, _max_pool_grad)


def avg_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """`torch.nn.AvgPool2d(window, stride, padding)`; zeros in the padding count (torch default)."""
  return nn.avg_pool(x, (window, window), (stride, stride), ((padding, padding),) * 2, count_include_pad=True)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over H and W (NHWC -> NC), accumulated in float32 even for bfloat16 inputs."""
  return jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(x.dtype)
