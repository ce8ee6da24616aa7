"""The PyTorch reference for jaxcell's benchmark: BioNIC's way of training many models, one after another.

BioNIC trained every (dataset, model, fold, repeat) as a separate PyTorch run. This module reproduces that
loop as fairly to PyTorch as we can make it, so the lane engine's speed-up is measured against a strong
baseline rather than a strawman:

- the whole dataset is normalised once into an in-memory float tensor (no DataLoader, no PIL, no workers);
- augmentation is a few cheap tensor ops on the batch (flips and `torch.rot90`), not per-image PIL warps;
- the model is a plain `torch.nn` ResNet-18 with torchvision's exact structure and module names;
- on a GPU it runs there (cuDNN autotuning on, channels-last), with bfloat16 autocast when jaxcell runs bf16.

`jaxcell.bench.flops` counts the useful work of one training image analytically, so achieved GFLOP/s
of both sides can be compared with the matmul peak from `jaxcell.bench.peak`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from jaxcell.bench.flops import BLOCKS_PER_STAGE, HEADS, STAGE_CHANNELS, STAGE_STRIDES, scaled_channels

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError as error:  # torch is an optional extra; say how to get it rather than a bare traceback.
  raise ImportError("the PyTorch reference needs the optional extra: pip install -e '.[torch]'") from error

# Measured on the 2-core dev CPU (torch 2.13, ResNet-18, batch 8, 2 threads, idle machine), images/s
# channels_last vs contiguous NCHW: frozen trunk 241-271 vs 184 (64 px) and 104 vs 82 (128 px); full
# fine-tune 31-51 vs 42-53 (64 px, within run-to-run noise) and 28-30 vs 19-24 (128 px).
MEMORY_FORMAT = torch.channels_last
# The benchmark's --dtype values: 'bfloat16' runs the forward pass under bfloat16 autocast.
DTYPES = ("float32", "bfloat16")


# ----------------------------------------------------------------------------------------------- model


class BasicBlock(nn.Module):
  """torchvision's ResNet-18/34 block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, ReLU."""

  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or in_planes != planes:
      self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + shortcut)


def make_head(head: str, features: int, num_classes: int, head_hidden: int = 256) -> nn.Module:
  """'linear', or BioNIC's ResNet_all head 'bionic_mlp' (Linear-ReLU-BatchNorm-Linear; its indices 0, 2, 3 are the
  state_dict names jaxcell maps)."""
  if head == "linear":
    return nn.Linear(features, num_classes)
  return nn.Sequential(
    nn.Linear(features, head_hidden), nn.ReLU(), nn.BatchNorm1d(head_hidden), nn.Linear(head_hidden, num_classes)
  )


class ResNet18(nn.Module):
  """torchvision's ResNet-18 (same module names, so state_dict keys match) with a width multiplier."""

  def __init__(
    self, num_classes: int, width: float = 1.0, head: str = "linear", head_hidden: int = 256, in_channels: int = 3
  ):
    super().__init__()
    planes = [scaled_channels(c, width) for c in STAGE_CHANNELS]
    self.conv1 = nn.Conv2d(in_channels, planes[0], 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(planes[0])
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    in_planes = planes[0]
    for index, (out_planes, stride) in enumerate(zip(planes, STAGE_STRIDES), start=1):
      blocks = [BasicBlock(in_planes, out_planes, stride)]
      blocks += [BasicBlock(out_planes, out_planes, 1) for _ in range(BLOCKS_PER_STAGE - 1)]
      setattr(self, f"layer{index}", nn.Sequential(*blocks))
      in_planes = out_planes
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = make_head(head, in_planes, num_classes, head_hidden)
    self._init_like_torchvision()

  def _init_like_torchvision(self) -> None:
    # Linear layers keep PyTorch's default init, as torchvision's and BioNIC's did.
    for module in self.modules():
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet18(
  num_classes: int, width: float = 1.0, head: str = "linear", head_hidden: int = 256, in_channels: int = 3
) -> ResNet18:
  """A randomly initialised torchvision-structured ResNet-18; `head` is 'linear' or 'bionic_mlp'."""
  if head not in HEADS:
    raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
  if num_classes < 1 or in_channels < 1 or head_hidden < 1 or not width > 0:
    raise ValueError(
      f"num_classes, in_channels and head_hidden must be >= 1 and width > 0, got "
      f"num_classes={num_classes}, in_channels={in_channels}, head_hidden={head_hidden}, "
      f"width={width}."
    )
  return ResNet18(num_classes, width, head, head_hidden, in_channels)


# ------------------------------------------------------------------------------------------ training


def _check_dataset(images: np.ndarray, labels: np.ndarray) -> None:
  if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4):
    raise ValueError(
      f"images must be a uint8 numpy array [N, H, W, C], got "
      f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}."
    )
  if images.shape[1] != images.shape[2]:
    raise ValueError(
      f"images must be square for the rot90 augmentation, got {images.shape[1:3]}; resize or crop them first."
    )
  if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
    raise ValueError(f"labels must be non-negative ints of shape ({len(images)},), got {labels.dtype} {labels.shape}.")


def _normalised_dataset(images_uint8_nhwc: np.ndarray) -> torch.Tensor:
  """The dataset once, as float NCHW scaled to [0, 1] and standardised per channel (as BioNIC's Normalize)."""
  x = torch.from_numpy(images_uint8_nhwc).permute(0, 3, 1, 2).float().div_(255.0)
  mean = x.mean(dim=(0, 2, 3), keepdim=True)
  std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
  return ((x - mean) / std).contiguous()


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
  """Per-image random horizontal/vertical flips (p=0.5 each) and rotation by k*90 degrees, k in 0..3.

  The draws come from a CPU generator (the same stream on every device) and move to `x`'s device."""
  n = x.shape[0]
  flip_h = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1).to(x.device)
  flip_v = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1).to(x.device)
  x = torch.where(flip_h, x.flip(3), x)
  x = torch.where(flip_v, x.flip(2), x)
  quarter_turns = torch.randint(0, 4, (n,), generator=generator)
  for k in (1, 2, 3):
    chosen = quarter_turns == k
    if chosen.any():
      chosen = chosen.to(x.device)
      x[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
  return x


def build_efficientnet_lite0(num_classes: int, head: str = "linear", head_hidden: int = 256) -> nn.Module:
  """EfficientNet-Lite0 of the `efficientnet_lite_pytorch` package (the structure jaxcell's converter maps), random
  init, with `head` 'linear' or 'bionic_mlp' as its `_fc`."""
  try:
    from efficientnet_lite_pytorch import EfficientNet
  except ImportError as error:
    raise ImportError("EfficientNet-Lite0's PyTorch reference needs: pip install efficientnet-lite-pytorch") from error
  model = EfficientNet.from_name("efficientnet-lite0")
  model._fc = make_head(head, model._fc.in_features, num_classes, head_hidden)  # pylint: disable=protected-access
  return model


# The models of the reference, and the prefix of their head's parameter names.
MODELS = {"resnet18": "fc", "efficientnet_lite0": "_fc"}


def _fresh_model(
  index: int,
  seed: int,
  num_classes: int,
  width: float,
  head: str,
  head_hidden: int,
  in_channels: int,
  frozen_trunk: bool,
  trunk_bn: str = "batch",
  device: torch.device | str = "cpu",
  model_name: str = "resnet18",
) -> nn.Module:
  """Model `index` of a run: initialised from seed + index without touching the global torch RNG."""
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed + index)
    if model_name == "efficientnet_lite0":
      model = build_efficientnet_lite0(num_classes, head, head_hidden)
    else:
      model = build_resnet18(num_classes, width, head, head_hidden, in_channels)
  head_prefix = MODELS[model_name]
  if frozen_trunk:
    for name, param in model.named_parameters():
      param.requires_grad = name.startswith(head_prefix + ".")
  # train() even when frozen: BioNIC's frozen BN layers normalise with batch statistics.
  model = model.to(device=device, memory_format=MEMORY_FORMAT).train()
  if trunk_bn == "running":  # A fixed trunk: its BatchNorms use (and keep) their running statistics.
    for name, module in model.named_modules():
      if name and not name.startswith(head_prefix):
        module.eval()
  return model


def train_models_sequentially(
  images_uint8_nhwc: np.ndarray,
  labels: np.ndarray,
  *,
  num_models: int,
  steps: int,
  batch_size: int,
  width: float = 1.0,
  frozen_trunk: bool,
  lr: float = 1e-3,
  seed: int = 0,
  threads: int | None = None,
  augment: bool = True,
  head: str = "linear",
  head_hidden: int = 256,
  return_models: bool = False,
  trunk_bn: str = "batch",
  device: str | None = None,
  dtype: str = "float32",
  model: str = "resnet18",
) -> dict[str, Any]:
  """Trains `num_models` fresh ResNet-18s (or `model='efficientnet_lite0'`) one after another, `steps` Adam steps each, and times it.

  Each step samples `batch_size` images class-balanced with replacement (weights N / N_class), augments
  them, and takes one cross-entropy Adam step over the trainable parameters (only `fc` when
  `frozen_trunk`; with `trunk_bn='running'` the frozen trunk's BatchNorms stay in eval mode, the idiomatic
  PyTorch feature extractor: the trunk still runs forward every step).

  `device` None means CUDA when torch sees a GPU, else the CPU; `dtype='bfloat16'` runs the forward pass under
  bfloat16 autocast (PyTorch's mixed precision: float32 weights and optimiser), as jaxcell's bf16 models do.
  On a GPU each step ends with a synchronisation, so its time is the kernels' and not just their launch.

  'seconds' covers the training steps only, minus the very first step of the first model
  (one-off allocator and kernel warm-up), which is reported as 'warmup_seconds'; building the models and
  their optimisers is reported as 'setup_seconds'. Rates are over the timed steps ('timed_lane_steps').
  `return_models=True` adds 'models' (the trained modules) and 'initial_states' (their state_dicts before
  training), for tests.
  """
  labels = np.asarray(labels)
  _check_dataset(images_uint8_nhwc, labels)
  if num_models < 1 or steps < 1 or num_models * steps < 2:
    raise ValueError(
      f"need num_models >= 1, steps >= 1 and at least 2 steps in all (the first is warm-up), "
      f"got num_models={num_models}, steps={steps}."
    )
  if batch_size < 2:
    raise ValueError(f"batch_size must be >= 2 (BatchNorm in train mode needs 2 images), got {batch_size}.")
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
  if model not in MODELS:
    raise ValueError(f"model must be one of {tuple(MODELS)}, got {model!r}.")
  model_name = model  # `model` names each trained module below.
  device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
  on_gpu = device.type == "cuda"

  previous_threads, previous_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
  if threads is not None:
    torch.set_num_threads(threads)
  torch.backends.cudnn.benchmark = True  # Idiomatic for fixed shapes: cuDNN picks its fastest kernels once.
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  try:
    data = _normalised_dataset(images_uint8_nhwc).to(device)
    targets = torch.from_numpy(labels.astype(np.int64))
    device_targets = targets.to(device)
    class_counts = torch.bincount(targets).double()
    sample_weights = len(targets) / class_counts[targets]
    num_classes = len(class_counts)

    result: dict[str, Any] = {"models": [], "initial_states": []} if return_models else {}
    step_seconds = warmup_seconds = setup_seconds = 0.0
    for index in range(num_models):
      start = time.perf_counter()
      model = _fresh_model(
        index, seed, num_classes, width, head, head_hidden, data.shape[1], frozen_trunk, trunk_bn, device, model_name
      )
      optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
      generator = torch.Generator().manual_seed(seed + index)
      if return_models:
        result["initial_states"].append({k: v.clone() for k, v in model.state_dict().items()})
      setup_seconds += time.perf_counter() - start

      for step in range(steps):
        start = time.perf_counter()
        batch = torch.multinomial(sample_weights, batch_size, replacement=True, generator=generator).to(device)
        x = data[batch]
        if augment:
          x = _augment(x, generator)
        with autocast:
          loss = F.cross_entropy(model(x.contiguous(memory_format=MEMORY_FORMAT)), device_targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_gpu:
          torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if index == 0 and step == 0:
          warmup_seconds = elapsed
        else:
          step_seconds += elapsed
      if return_models:
        result["models"].append(model)
    timed_steps = num_models * steps - 1
    result.update(
      {
        "lane_steps": num_models * steps,
        "timed_lane_steps": timed_steps,
        "seconds": step_seconds,
        "warmup_seconds": warmup_seconds,
        "setup_seconds": setup_seconds,
        "lane_steps_per_s": timed_steps / step_seconds,
        "images_per_s": timed_steps * batch_size / step_seconds,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # The vector ISA its CPU kernels use.
        "dtype": dtype,
      }
    )
    return result
  finally:
    torch.set_num_threads(previous_threads)
    torch.backends.cudnn.benchmark = previous_benchmark


# --------------------------------------------------------------------------------------------- FLOPs
