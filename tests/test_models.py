"""Tests for jaxcell.models: conv/pool semantics, shapes, names, parameter counts, impl parity.

Full-size models are only traced (`jax.eval_shape`); anything computed uses tiny widths and
32-px inputs (187 px for cnn_all, its minimum). Keys use the 'rbg' PRNG because jitted init with
the default threefry PRNG takes ~4x longer to compile on CPU.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from ml_collections import ConfigDict

from jaxcell.models import MODEL_NAMES, build_model
from jaxcell.models import conv as conv_lib
from jaxcell.models.cnn import min_input_size
from jaxcell.models.conv import Conv2d, Linear, avg_pool, global_avg_pool, kaiming_normal_fan_out, max_pool


# Same numbers, but a ResNet-18 gradient compiles ~5x faster on CPU (4-7 s -> 1-3 s).
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def quick_jit(fn):
  """jax.jit compiled with QUICK_COMPILE: tests run each function once, so compile time rules."""

  def run(*args):
    return jax.jit(fn).lower(*args).compile(compiler_options=QUICK_COMPILE)(*args)

  return run


def key(seed: int = 0) -> jax.Array:
  return jax.random.key(seed, impl="rbg")


def model_config(model_name: str, **overrides) -> ConfigDict:
  fields = dict(name=model_name, width=1.0, head="linear", head_hidden=None, conv_impl="xla", dtype="float32", stages=4)
  return ConfigDict({**fields, **overrides})


def smallest_test_size(name: str) -> int:
  return min_input_size(5) if name == "cnn_all" else 32


def init(model, x):
  return quick_jit(partial(model.init, train=False))(key(), x)


def abstract_variables(model, x):
  return jax.eval_shape(partial(model.init, train=False), key(), x)


def num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# --------------------------------------------------------------------------------------------
# Conv2d and pooling


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


# --------------------------------------------------------------------------------------------
# Shapes, dtypes, BatchNorm state


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("head", ["linear", "bionic_mlp"])
def test_output_shapes_and_dtypes(name, head):
  side = smallest_test_size(name)
  model = build_model(model_config(name, width=0.125, head=head), 7)
  for channels in (1, 3):
    x = jax.ShapeDtypeStruct((2, side, side, channels), jnp.float32)
    variables = abstract_variables(model, x)
    # Plain VGG16 with a linear head has no BatchNorm at all; every other model does.
    expected = {"params"} if (name == "vgg16" and head == "linear") else {"params", "batch_stats"}
    assert set(variables) == expected
    logits = jax.eval_shape(partial(model.apply, train=False), variables, x)
    assert (logits.shape, logits.dtype) == ((2, 7), jnp.float32)
    train = partial(model.apply, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    logits, updates = jax.eval_shape(train, variables, x)
    assert (logits.shape, logits.dtype) == ((2, 7), jnp.float32)
    assert jax.tree.structure(updates.get("batch_stats", {})) == jax.tree.structure(variables.get("batch_stats", {}))


def test_bfloat16_models_keep_float32_params_and_logits():
  for name in ("resnet18", "cnn_flat"):
    model = build_model(model_config(name, width=0.125, head="bionic_mlp", dtype="bfloat16"), 4)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = abstract_variables(model, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    logits, _ = jax.eval_shape(partial(model.apply, train=True, mutable=["batch_stats"]), variables, x)
    assert logits.dtype == jnp.float32


def run_tiny_resnet18(conv_impl: str, variables, x, labels):
  """Eval- and train-mode outputs, batch_stats updates and loss gradients, in one compile."""
  model = build_model(model_config("resnet18", width=0.125, head="bionic_mlp", conv_impl=conv_impl), 3)

  def loss(params):
    logits, updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    nll = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])
    return nll, (logits, updates["batch_stats"])

  @quick_jit
  def run(variables):
    eval_logits, eval_state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    grads, (train_logits, train_stats) = jax.grad(loss, has_aux=True)(variables["params"])
    return dict(
      eval_logits=eval_logits,
      eval_stats=eval_state["batch_stats"],
      train_logits=train_logits,
      train_stats=train_stats,
      grads=grads,
    )

  return run(variables)


@pytest.fixture(scope="module")
def tiny_resnet18():
  """Variables of a width-0.125 ResNet-18 and its outputs with both conv impls."""
  model = build_model(model_config("resnet18", width=0.125, head="bionic_mlp"), 3)
  x = jax.random.normal(key(5), (4, 32, 32, 3))
  labels = jnp.array([0, 1, 2, 0])
  variables = init(model, x)
  outputs = {impl: run_tiny_resnet18(impl, variables, x, labels) for impl in ("xla", "im2col")}
  return jax.device_get((variables, outputs))  # numpy: comparisons then dispatch no jax ops


def test_batch_stats_update_in_train_mode_only(tiny_resnet18):
  variables, outputs = tiny_resnet18
  out = outputs["xla"]
  assert np.all(np.isfinite(out["train_logits"])) and np.all(np.isfinite(out["eval_logits"]))
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"], out["train_stats"])
  assert all(jax.tree.leaves(changed))  # every mean/var moved, the head's BN included
  jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], out["eval_stats"])


def test_bottleneck_runs_and_updates_stats():
  model = build_model(model_config("resnet50", width=0.125, stages=1), 3)
  x = jax.random.normal(key(6), (2, 32, 32, 1))
  variables = init(model, x)
  logits, updates = quick_jit(partial(model.apply, train=True, mutable=["batch_stats"]))(variables, x)
  assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
  old = variables["batch_stats"]["layer1_0"]["downsample_1"]["mean"]
  assert not np.allclose(old, updates["batch_stats"]["layer1_0"]["downsample_1"]["mean"])


def test_intermediates_are_sown_per_stage():
  lower = build_model(model_config("resnet18", width=0.125, stages=2), 3)
  x = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
  _, state = jax.eval_shape(
    partial(lower.apply, train=False, mutable=["intermediates"]), abstract_variables(lower, x), x
  )
  shapes = {name: value[0].shape for name, value in state["intermediates"].items()}
  assert shapes == {"stem": (4, 8, 8, 8), "layer1": (4, 8, 8, 8), "layer2": (4, 4, 4, 16), "pooled": (4, 16)}


# --------------------------------------------------------------------------------------------
# torchvision names and shapes


def torchvision_resnet_shapes(stage_sizes, bottleneck: bool, num_classes: int = 1000):
  """{state_dict key: shape} of torchvision's resnet, num_batches_tracked left out."""
  shapes = {"conv1.weight": (64, 3, 7, 7)}

  def add_bn(prefix, channels):
    for entry in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{prefix}.{entry}"] = (channels,)

  add_bn("bn1", 64)
  expansion = 4 if bottleneck else 1
  in_planes = 64
  for stage, blocks in enumerate(stage_sizes):
    planes = 64 * 2**stage
    for index in range(blocks):
      prefix = f"layer{stage + 1}.{index}"
      if bottleneck:
        convs = [(planes, in_planes, 1), (planes, planes, 3), (4 * planes, planes, 1)]
      else:
        convs = [(planes, in_planes, 3), (planes, planes, 3)]
      for number, (out_c, in_c, k) in enumerate(convs, start=1):
        shapes[f"{prefix}.conv{number}.weight"] = (out_c, in_c, k, k)
        add_bn(f"{prefix}.bn{number}", out_c)
      if index == 0 and (stage > 0 or in_planes != planes * expansion):
        shapes[f"{prefix}.downsample.0.weight"] = (planes * expansion, in_planes, 1, 1)
        add_bn(f"{prefix}.downsample.1", planes * expansion)
      in_planes = planes * expansion
  shapes["fc.weight"] = (num_classes, in_planes)
  shapes["fc.bias"] = (num_classes,)
  return shapes


def torch_key_to_flax(key: str, shape: tuple[int, ...]):
  """'layer2.0.downsample.0.weight' -> ('params', 'layer2_0', 'downsample_0', 'kernel')."""
  *modules, entry = key.split(".")
  path = []
  for module in modules:
    if module.isdigit():
      path[-1] += f"_{module}"
    else:
      path.append(module)
  if entry.startswith("running_"):
    return ("batch_stats", *path, entry.removeprefix("running_"))
  if entry == "weight":
    entry = "scale" if len(shape) == 1 else "kernel"
  return ("params", *path, entry)


def torch_shape_to_flax(shape):
  if len(shape) == 4:  # OIHW -> HWIO
    return (shape[2], shape[3], shape[1], shape[0])
  return tuple(reversed(shape))  # Linear [out, in] -> [in, out]


@pytest.mark.parametrize(
  "name,stage_sizes,bottleneck,total,entries",
  [
    ("resnet18", (2, 2, 2, 2), False, 11_689_512, 122 - 20),  # torch: 122 keys, 20 BNs
    ("resnet50", (3, 4, 6, 3), True, 25_557_032, 320 - 53),  # torch: 320 keys, 53 BNs
  ],
)
def test_resnet_matches_torchvision_names_and_shapes(name, stage_sizes, bottleneck, total, entries):
  torch_shapes = torchvision_resnet_shapes(stage_sizes, bottleneck)
  assert len(torch_shapes) == entries
  assert sum(int(np.prod(s)) for k, s in torch_shapes.items() if "running" not in k) == total
  expected = {torch_key_to_flax(k, s): torch_shape_to_flax(s) for k, s in torch_shapes.items()}

  model = build_model(model_config(name), 1000)
  variables = abstract_variables(model, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  actual = {path: leaf.shape for path, leaf in flatten_dict(variables).items()}
  assert actual == expected
  assert num_params(variables["params"]) == total


# --------------------------------------------------------------------------------------------
# Parameter counts against the BioNIC reference table (n = number of classes)


@pytest.mark.parametrize(
  "name,extra,side,trainable_part,count",
  [
    ("resnet18", {}, 224, "fc", lambda n: 131_840 + 257 * n),  # ResNet_all head
    ("resnet18", {"stages": 2}, 224, "fc", lambda n: 10_528 + 33 * n),  # ResNet_lower head
    ("cnn_all", {}, 224, "all", lambda n: 9_095_808 + 129 * n),
    ("cnn_flat", {}, 224, "all", lambda n: 13_889_760 + 129 * n),
  ],
)
@pytest.mark.parametrize("num_classes", [2, 9])
def test_parameter_counts_match_bionic(name, extra, side, trainable_part, count, num_classes):
  model = build_model(model_config(name, head="bionic_mlp", **extra), num_classes)
  variables = abstract_variables(model, jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))
  params = variables["params"]
  trainable = params["fc"] if trainable_part == "fc" else params
  assert num_params(trainable) == count(num_classes)


def test_cnn_head_flattens_in_torch_chw_order():
  model = build_model(model_config("cnn_flat", width=0.25, head="bionic_mlp"), 3)
  x = jax.random.normal(key(7), (2, 24, 24, 3))
  variables = init(model, x)
  _, state = quick_jit(partial(model.apply, train=False, capture_intermediates=True, mutable=["intermediates"]))(
    variables, x
  )
  features = state["intermediates"]["block2"][0]  # NHWC, sown after the last pool
  first = variables["params"]["fc"]["0"]
  chw_flat = jnp.transpose(features, (0, 3, 1, 2)).reshape(2, -1)
  expected = chw_flat @ first["kernel"] + first["bias"]
  np.testing.assert_allclose(state["intermediates"]["fc"]["0"]["__call__"][0], expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# im2col == xla for a whole network


def test_im2col_and_xla_resnet18_agree_on_logits_and_gradients(tiny_resnet18):
  _, outputs = tiny_resnet18
  for name in ("eval_logits", "train_logits", "train_stats"):
    jax.tree.map(
      partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4), outputs["im2col"][name], outputs["xla"][name]
    )

  # Train-mode BN over 4 images (1x1 maps in layer4) amplifies float32 rounding to ~1e-3 of a
  # tensor's scale (in float64 the two impls agree to 1e-13); a wrong slice or padding would
  # be off by O(1). So compare each gradient tensor at its own scale.
  def assert_close_at_scale(actual, desired):
    scale = np.max(np.abs(desired))
    np.testing.assert_allclose(actual / scale, desired / scale, rtol=0, atol=3e-3)

  jax.tree.map(assert_close_at_scale, outputs["im2col"]["grads"], outputs["xla"]["grads"])


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name,minimum", [("cnn_all", 187), ("cnn_flat", 19)])
def test_too_small_input_names_the_minimum_size(name, minimum):
  model = build_model(model_config(name, width=0.125), 2)
  abstract_variables(model, jax.ShapeDtypeStruct((1, minimum, minimum, 3), jnp.float32))
  with pytest.raises(ValueError, match=f"at least {minimum}x{minimum}"):
    abstract_variables(model, jax.ShapeDtypeStruct((1, minimum, minimum - 1, 3), jnp.float32))


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"name": "alexnet"}, "resnet18"),
    ({"head": "mlp"}, "bionic_mlp"),
    ({"conv_impl": "cudnn"}, "im2col"),
    ({"dtype": "float16"}, "bfloat16"),
    ({"width": 0}, "positive"),
    ({"stages": 5}, "choose 1, 2, 3 or 4"),
    ({"head_hidden": (256, 0)}, "positive"),
    ({"widht": 0.5}, "widht"),
  ],
)
def test_bad_config_raises_actionable_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    build_model(model_config("resnet18", **overrides), 2)


def test_stages_rejected_for_cnns():
  with pytest.raises(ValueError, match="ResNets only"):
    build_model(model_config("cnn_all", stages=2), 2)
