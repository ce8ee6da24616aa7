"""Tests for the VGG models, `trunk_bn` and the VGG/ResNet config fields (models/vgg.py, models/__init__.py).

Full-size models are only traced (`jax.eval_shape`); anything computed uses small widths and 32-64 px
inputs. Numerical parity with torchvision-structured VGGs is in test_convert.py.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jaxcell.models import build_model
from jaxcell.models.vgg import FEATURES_LENGTH, adaptive_avg_pool

TORCH_REASON = "comparing with torch.nn.AdaptiveAvgPool2d needs PyTorch (the optional 'torch' extra)"


def key(seed: int = 0) -> jax.Array:
  return jax.random.key(seed, impl="rbg")  # Faster to compile than threefry on CPU.


def shapes(model, size: int = 224, channels: int = 3) -> dict[str, tuple]:
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  variables = jax.eval_shape(partial(model.init, train=False), key(), x)
  return {k: tuple(v.shape) for k, v in flatten_dict(dict(variables), sep="/").items()}


def count(flat: dict[str, tuple], prefix: str) -> int:
  return sum(int(np.prod(shape)) for k, shape in flat.items() if k.startswith(prefix))


def reference_adaptive_pool(x: np.ndarray, out: int) -> np.ndarray:
  """torch's adaptive average pool, written as its definition: bin i = [floor(i*n/out), ceil((i+1)*n/out))."""
  b, h, w, c = x.shape
  y = np.zeros((b, out, out, c))
  for i in range(out):
    for j in range(out):
      r0, r1 = (i * h) // out, -(-(i + 1) * h // out)
      c0, c1 = (j * w) // out, -(-(j + 1) * w // out)
      y[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return y


# --------------------------------------------------------------------------------------------
# Structure and initialisation


@pytest.mark.parametrize(
  "name, total, conv_indices, bn_indices",
  [
    ("vgg16", 138_357_544, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), ()),
    ("vgg16_bn", 138_365_992, (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40), (1, 4, 8, 11, 15, 18, 21)),
    ("vgg19_bn", 143_678_248, (0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36, 40, 43, 46, 49), (1, 4, 50)),
  ],
)
def test_vgg_names_and_parameter_counts_match_torchvision(name, total, conv_indices, bn_indices):
  flat = shapes(build_model({"name": name}, 1000))
  assert count(flat, "params/") == total  # torchvision's parameter counts.
  convs = {int(k.split("/")[1][len("features_") :]) for k in flat if k.endswith("/kernel") and "features_" in k}
  assert convs == set(conv_indices)
  for index in bn_indices:
    assert flat[f"params/features_{index}/scale"] == flat[f"batch_stats/features_{index}/var"]
  assert flat["params/classifier_0/kernel"] == (512 * 7 * 7, 4096)
  assert flat["params/classifier_3/kernel"] == (4096, 4096)
  assert flat["params/fc/kernel"] == (4096, 1000)


def test_vgg_init_follows_torchvision():
  model = build_model({"name": "vgg16", "width": 0.25}, 10)
  params = jax.jit(partial(model.init, train=False))(key(), jnp.zeros((1, 32, 32, 3)))["params"]
  for index in (0, 28):
    assert not np.any(params[f"features_{index}"]["bias"])
  kernel = np.asarray(params["features_2"]["kernel"])  # kaiming-normal(fan_out): std sqrt(2 / (9 * 16)).
  assert kernel.std() == pytest.approx(np.sqrt(2 / (9 * 16)), rel=0.05)
  dense = np.asarray(params["classifier_0"]["kernel"])
  assert dense.shape == (128 * 49, 1024) and dense.std() == pytest.approx(0.01, rel=0.02)
  assert not np.any(params["classifier_3"]["bias"])
  assert np.abs(params["fc"]["bias"]).max() > 0  # The head keeps PyTorch's default init.


def test_dropout_only_in_training():
  model = build_model({"name": "vgg16", "width": 1 / 16}, 4)
  x = jax.random.normal(key(1), (2, 32, 32, 3))
  variables = model.init(key(), x, train=False)
  apply = jax.jit(model.apply, static_argnames="train")
  np.testing.assert_array_equal(apply(variables, x, train=False), apply(variables, x, train=False))
  a = apply(variables, x, train=True, rngs={"dropout": key(2)})
  b = apply(variables, x, train=True, rngs={"dropout": key(3)})
  assert not np.allclose(a, b)
  with pytest.raises(Exception, match="dropout"):
    model.apply(variables, x, train=True)


def test_vgg_rejects_inputs_too_small_for_its_pools():
  with pytest.raises(ValueError, match="at least 32x32"):
    shapes(build_model({"name": "vgg16"}, 2), size=16)


# --------------------------------------------------------------------------------------------
# Adaptive average pool


@pytest.mark.parametrize("size", [1, 3, 7, 10, 13, 14, 20, 28])
def test_adaptive_pool_matches_its_definition(size):
  x = np.random.default_rng(size).normal(size=(2, size, size + 3, 4)).astype(np.float32)
  np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), 7), reference_adaptive_pool(x, 7), atol=1e-6)


def test_adaptive_pool_matches_torch():
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  pool = torch.nn.AdaptiveAvgPool2d((7, 7))
  rng = np.random.default_rng(0)
  for h, w in [(1, 1), (2, 5), (6, 6), (7, 7), (9, 11), (14, 14), (15, 22), (56, 56)]:
    x = rng.normal(size=(2, 3, h, w)).astype(np.float32)
    expected = pool(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    got = adaptive_avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), 7)
    np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=f"{h}x{w}")


# --------------------------------------------------------------------------------------------
# vgg_features (BioNIC's Vgg_lower) and the head widths


@pytest.mark.parametrize("num_classes", [3, 10])
def test_vgg_lower_head_matches_bionic_parameter_count(num_classes):
  model = build_model({"name": "vgg16", "vgg_features": 14, "head": "bionic_mlp"}, num_classes)
  flat = shapes(model)
  assert count(flat, "params/fc/") == 52_441_856 + 257 * num_classes  # BioNIC's VggModelLowerLayers head.
  assert flat["params/fc/0/kernel"] == (12544, 4096) and flat["params/fc/3/kernel"] == (4096, 256)
  assert not any(k.startswith("params/classifier") for k in flat)
  assert max(int(k.split("/")[1].split("_")[1]) for k in flat if "features_" in k) == 12  # conv3_2


def test_vgg_features_keeps_torchvision_prefix():
  model = build_model({"name": "vgg16", "vgg_features": 14, "width": 1 / 16}, 3)
  x = jax.random.normal(key(1), (1, 32, 32, 3))
  variables = model.init(key(), x, train=False)
  _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
  stages = state["intermediates"]
  assert sorted(stages) == ["block1", "block2", "pooled"]  # Two max-pools in features[:14].
  assert stages["block2"][0].shape == (1, 8, 8, 8) and stages["pooled"][0].shape == (1, 16 * 49)


@pytest.mark.parametrize(
  "fields, hidden",
  [
    ({"name": "vgg16"}, (256,)),
    ({"name": "vgg16_bn"}, (32,)),
    ({"name": "vgg19_bn"}, (32,)),
    ({"name": "vgg19_bn", "vgg_features": 20}, (4096, 256)),
    ({"name": "resnet18", "stages": 2}, (64, 32)),
  ],
)
def test_bionic_head_widths(fields, hidden):
  model = build_model({**fields, "head": "bionic_mlp"}, 5)
  assert tuple(model.head_hidden) == hidden


def test_config_rejects_misplaced_fields():
  with pytest.raises(ValueError, match="vgg_features applies to VGGs only.*'resnet18'"):
    build_model({"name": "resnet18", "vgg_features": 14}, 2)
  with pytest.raises(ValueError, match="vgg_features applies to VGGs only"):
    build_model({"name": "cnn_all", "vgg_features": 14}, 2)
  with pytest.raises(ValueError, match=f"int in 1..{FEATURES_LENGTH['vgg16']}"):
    build_model({"name": "vgg16", "vgg_features": 32}, 2)
  with pytest.raises(ValueError, match="int in 1..44"):
    build_model({"name": "vgg16_bn", "vgg_features": 2.5}, 2)
  with pytest.raises(ValueError, match="stages applies to ResNets only"):
    build_model({"name": "vgg16", "stages": 2}, 2)
  with pytest.raises(ValueError, match="trunk_bn='frozen' is not valid"):
    build_model({"name": "resnet18", "trunk_bn": "frozen"}, 2)
  assert build_model({"name": "resnet152"}, 2).stage_sizes == (3, 8, 36, 3)


# --------------------------------------------------------------------------------------------
# trunk_bn


def stats_after_training_step(fields: dict, trunk_bn: str):
  model = build_model({**fields, "head": "bionic_mlp", "trunk_bn": trunk_bn}, 3)
  x = jax.random.normal(key(1), (4, 32, 32, 3)) * 2.0 + 0.5  # Not the init statistics (0, 1).
  variables = model.init(key(), x, train=False)
  step = jax.jit(partial(model.apply, train=True, mutable=["batch_stats"]))
  _, updates = step(variables, x, rngs={"dropout": key(2)})
  before = flatten_dict(variables["batch_stats"], sep="/")
  after = flatten_dict(updates["batch_stats"], sep="/")
  changed = {k for k in before if not np.allclose(before[k], after[k])}
  return set(before), changed


@pytest.mark.parametrize(
  "fields", [{"name": "resnet18", "width": 0.125}, {"name": "vgg16_bn", "width": 1 / 16, "vgg_features": 10}]
)
def test_trunk_bn_running_freezes_trunk_statistics_only(fields):
  keys, changed = stats_after_training_step(fields, "running")
  head = {k for k in keys if k.startswith("fc/")}
  assert head and changed == head  # The head's BatchNorm still learns its statistics.
  keys, changed = stats_after_training_step(fields, "batch")
  assert changed == keys  # BioNIC: every BatchNorm, frozen trunk included, updates its statistics.
