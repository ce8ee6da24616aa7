"""Tests for jaxcell.models.conv: convolution and pooling semantics, im2col paths and their gradients.

Expected values come from a direct float64 loop (torch.nn.Conv2d semantics) or from XLA's own
`lax.conv` / `reduce_window` and their autodiff gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jit_helpers import key, quick_jit

from jaxcell.models import conv as conv_lib
from jaxcell.models.conv import Conv2d, Linear, avg_pool, global_avg_pool, kaiming_normal_fan_out, max_pool


def reference_conv(x, kernel, stride, padding):
  """Direct loop implementation of torch.nn.Conv2d (NHWC/HWIO), in float64."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (padding,) * 2, (padding,) * 2, (0, 0)))
  kh, kw = kernel.shape[:2]
  out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
  for y in range(out_h):
    for z in range(out_w):
      window = x[:, y * stride : y * stride + kh, z * stride : z * stride + kw, :]
      out[:, y, z] = np.einsum("bhwi,hwio->bo", window, kernel)
  return out


CONV_CASES = [  # (kernel, stride, padding, input side)
  (7, 2, 3, 19),  # ResNet stem, odd input
  (7, 1, 1, 16),  # BioNIC CNN conv
  (3, 1, 1, 9),
  (3, 2, 1, 10),
  (1, 1, 0, 8),
  (1, 2, 0, 9),  # strided 1x1 downsample, odd input
]


@pytest.mark.parametrize("impl", ["xla", "im2col"])
@pytest.mark.parametrize("kernel_size,stride,padding,side", CONV_CASES)
def test_conv_matches_direct_torch_semantics(impl, kernel_size, stride, padding, side):
  x = jax.random.normal(key(1), (2, side, side + 1, 3))
  conv = Conv2d(4, kernel_size, stride, padding, use_bias=True, impl=impl)
  variables = conv.init(key(2), x)
  expected = reference_conv(x, np.asarray(variables["params"]["kernel"]), stride, padding)
  expected += np.asarray(variables["params"]["bias"])
  np.testing.assert_allclose(quick_jit(conv.apply)(variables, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride,padding,side", [(7, 2, 3, 17), (3, 1, 1, 8), (1, 2, 0, 9)])
def test_conv_impls_agree_under_vmap_over_kernels(kernel_size, stride, padding, side):
  lanes = 3
  xs = jax.random.normal(key(3), (lanes, 2, side, side, 5))
  convs = {impl: Conv2d(6, kernel_size, stride, padding, use_bias=False, impl=impl) for impl in ("xla", "im2col")}
  stacked = jax.vmap(lambda k: convs["xla"].init(k, xs[0]))(jax.random.split(key(4), lanes))
  outputs = {impl: quick_jit(jax.vmap(conv.apply))(stacked, xs) for impl, conv in convs.items()}
  np.testing.assert_allclose(outputs["im2col"], outputs["xla"], rtol=1e-5, atol=1e-5)
  # Lanes really used their own kernels.
  assert not np.allclose(outputs["xla"][0], outputs["xla"][1])


@pytest.mark.parametrize("kernel_size,stride,padding", [(7, 2, 3), (3, 2, 1), (5, 3, 2), (4, 2, 0)])
@pytest.mark.parametrize("side", [15, 16, 17, 18])
@pytest.mark.parametrize("channels", [1, 3])
def test_space_to_depth_stem_equals_lax_conv(kernel_size, stride, padding, side, channels):
  """Few input channels and a stride: im2col runs on space-to-depth blocks; the numbers must not change."""
  x = jax.random.normal(key(5), (2, side, side + 1, channels))
  kernel = jax.random.normal(key(6), (kernel_size, kernel_size, channels, 4))
  expected = conv_lib.conv_xla(x, kernel, (stride, stride), (padding, padding))
  # The blocked path itself (any stride), and conv_im2col, which takes it for 3 channels at stride 2.
  for conv in (conv_lib._space_to_depth_conv, conv_lib.conv_im2col):
    got = quick_jit(lambda x, k: conv(x, k, (stride, stride), (padding, padding)))(x, kernel)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_grad", ["transposed_conv", "col2im"])
@pytest.mark.parametrize("kernel_size,padding,side", [(3, 1, 7), (3, 0, 8), (5, 2, 6), (2, 1, 5), (3, 2, 4)])
def test_stride1_conv_gradients_equal_lax_conv_gradients_under_vmap(
  monkeypatch, input_grad, kernel_size, padding, side
):
  """Stride-1 im2col convs have their own VJP (a transposed conv, or col2im for few pixels per channel)."""
  threshold = 0 if input_grad == "transposed_conv" else 10**9
  monkeypatch.setattr(conv_lib, "TRANSPOSED_GRAD_MIN_PIXELS_PER_CHANNEL", threshold)
  lanes, cin, cout = 2, 3, 5
  xs = jax.random.normal(key(7), (lanes, 2, side, side + 1, cin))
  kernels = jax.random.normal(key(8), (lanes, kernel_size, kernel_size, cin, cout))
  out_shape = conv_lib.conv_xla(xs[0], kernels[0], (1, 1), (padding, padding)).shape
  weights = jax.random.normal(key(9), (lanes, *out_shape))

  def grads(conv):
    loss = lambda x, k, w: jnp.sum(conv(x, k, (1, 1), (padding, padding)) * w)
    return quick_jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(xs, kernels, weights)

  got, expected = grads(conv_lib.conv_im2col), grads(conv_lib.conv_xla)
  for g, e in zip(got, expected):
    assert g.shape == e.shape
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_stride1_conv_gradient_rule_picks_transposed_conv_for_many_pixels(monkeypatch):
  """The default threshold sends a large image through the transposed conv and a tiny one through col2im."""
  calls, col2im = [], conv_lib._col2im
  monkeypatch.setattr(conv_lib, "_col2im", lambda *args: calls.append(args[0].shape) or col2im(*args))
  kernel = jnp.ones((3, 3, 2, 8))
  for side in (2, 16):  # 4 and 256 pixels for 8 output channels; the threshold is 4 per channel = 32.
    jax.grad(lambda x: jnp.sum(conv_lib.conv_im2col(x, kernel, (1, 1), (1, 1))))(jnp.ones((1, side, side, 2)))
  assert calls == [(1, 2, 2, 18)]  # Only the 2x2 image's patch gradient.


def test_conv_params_are_float32_and_compute_in_dtype():
  x = jnp.ones((1, 8, 8, 3))
  conv = Conv2d(4, 3, padding=1, impl="im2col", dtype=jnp.bfloat16)
  variables = conv.init(key(), x)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert conv.apply(variables, x).dtype == jnp.bfloat16


def test_inits_match_pytorch():
  kernel = kaiming_normal_fan_out(key(), (3, 3, 64, 128))
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2.0 / (3 * 3 * 128)), rtol=0.02)
  params = Linear(300).init(key(), jnp.ones((1, 400)))["params"]  # fan_in 400: bound 0.05
  for leaf in (params["kernel"], params["bias"]):
    assert 0.045 < np.max(np.abs(leaf)) <= 0.05


def test_max_pool_pads_with_minus_infinity_and_floors():
  x = -1.0 - jnp.arange(25.0).reshape(1, 5, 5, 1)  # all negative: zero padding would win
  out = max_pool(x, 3, 2, padding=1)
  assert out.shape == (1, 3, 3, 1)
  np.testing.assert_array_equal(out[0, :, :, 0], [[-1, -2, -4], [-6, -7, -9], [-16, -17, -19]])


@pytest.mark.parametrize(
  "window, stride, padding, side", [(3, 2, 1, 9), (3, 2, 1, 8), (2, 2, 0, 7), (3, 2, 0, 9), (3, 1, 1, 5)]
)
def test_max_pool_sliced_gradient_equals_reduce_window_gradient_under_vmap(window, stride, padding, side):
  """im2col's max-pool gradient (pads of strided slices) = reduce_window's, ties included (first max wins)."""
  rng = np.random.default_rng(side)
  # Rounded ReLU outputs: plenty of exact ties, at zero and at positive values.
  x = jnp.asarray(np.maximum(np.round(rng.normal(size=(3, 2, side, side, 4)), 1), 0), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(1, 1, 1, 1, 4)), jnp.float32)

  def grad(impl):
    loss = lambda x: jnp.sum(jax.vmap(lambda x: max_pool(x, window, stride, padding, impl=impl))(x) ** 2 * weights)
    return jax.grad(loss)(x)

  pooled = [max_pool(x[0], window, stride, padding, impl=impl) for impl in ("xla", "im2col")]
  np.testing.assert_array_equal(pooled[0], pooled[1])
  assert float(jnp.sum(x == 0)) > 10, "the check needs ties"
  np.testing.assert_allclose(grad("im2col"), grad("xla"), rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match="pooling impl"):
    max_pool(x[0], 3, 2, impl="bad")


def test_avg_pool_and_global_pool():
  x = jnp.arange(36.0).reshape(1, 6, 6, 1)
  out = avg_pool(x, 3, 2)  # torch floor mode: (6 - 3) // 2 + 1 = 2
  assert out.shape == (1, 2, 2, 1)
  np.testing.assert_allclose(out[0, :, :, 0], [[7, 9], [19, 21]])
  np.testing.assert_allclose(
    avg_pool(jnp.ones((1, 2, 2, 1)), 3, 1, padding=1)[0, 0, 0, 0], 4 / 9
  )  # count_include_pad=True: padded zeros are averaged in
  np.testing.assert_allclose(global_avg_pool(x), [[17.5]])
