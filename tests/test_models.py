"""Tests for jaxcell.models: shapes, names, parameter counts, impl parity (layers: test_conv.py).

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
from jaxcell.models.cnn import min_input_size
from jit_helpers import key, quick_jit


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
