"""Analytic FLOPs of a ResNet-18 training step (torch-free), for achieved GFLOP/s and MFU in the benchmark."""

from __future__ import annotations

HEADS = ("linear", "bionic_mlp")
STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
BLOCKS_PER_STAGE = 2  # ResNet-18.


def scaled_channels(channels: int, width: float) -> int:
  """Channel count under a width multiplier, the same rule as jaxcell.models: max(1, round(c * width))."""
  return max(1, round(channels * width))


def resnet18_layer_macs(
  image_size: int,
  width: float = 1.0,
  *,
  num_classes: int = 1000,
  head: str = "linear",
  head_hidden: int = 256,
  in_channels: int = 3,
) -> list[tuple[str, int, bool]]:
  """(module name, multiply-accumulates per image, is in the trunk) for every conv/linear, in forward order."""
  if head not in HEADS:
    raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
  if image_size < 1:
    raise ValueError(f"image_size must be >= 1, got {image_size}.")

  def out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1

  def conv(name: str, size: int, c_in: int, c_out: int, kernel: int, stride: int, pad: int) -> int:
    size = out_size(size, kernel, stride, pad)
    layers.append((name, size * size * c_out * c_in * kernel * kernel, True))
    return size

  layers: list[tuple[str, int, bool]] = []
  planes = [scaled_channels(c, width) for c in STAGE_CHANNELS]
  size = conv("conv1", image_size, in_channels, planes[0], 7, 2, 3)
  size = out_size(size, 3, 2, 1)  # max-pool
  c_in = planes[0]
  for stage, (c_out, stage_stride) in enumerate(zip(planes, STAGE_STRIDES), start=1):
    for block in range(BLOCKS_PER_STAGE):
      stride = stage_stride if block == 0 else 1
      prefix = f"layer{stage}.{block}"
      block_in = size
      size = conv(f"{prefix}.conv1", block_in, c_in, c_out, 3, stride, 1)
      conv(f"{prefix}.conv2", size, c_out, c_out, 3, 1, 1)
      if stride != 1 or c_in != c_out:
        conv(f"{prefix}.downsample.0", block_in, c_in, c_out, 1, stride, 0)
      c_in = c_out
  if head == "linear":
    layers.append(("fc", c_in * num_classes, False))
  else:
    layers += [("fc.0", c_in * head_hidden, False), ("fc.3", head_hidden * num_classes, False)]
  return layers


def flops_per_image_resnet18(
  image_size: int,
  width: float = 1.0,
  frozen_trunk: bool = False,
  *,
  forward_only: bool = False,
  num_classes: int = 1000,
  head: str = "linear",
  head_hidden: int = 256,
  in_channels: int = 3,
) -> float:
  """Useful FLOPs (2 x MACs) of one image through a ResNet-18 training step (or forward only).

  Only convolutions and linear layers count (BN, ReLU, pooling and the optimiser are a few % and
  memory-bound). For a layer with M multiply-accumulates:

      forward                       2M   every layer
      weight gradient               2M   trainable layers only
      input gradient                2M   trainable layers with some trainable layer before them

  so a trainable layer costs the usual 3x forward, except where autograd has no reason to propagate the
  gradient further back: the stem `conv1` in full fine-tuning (the images need no gradient) and the first
  head layer with a frozen trunk. A frozen trunk therefore costs its forward pass only.
  """
  layers = resnet18_layer_macs(
    image_size, width, num_classes=num_classes, head=head, head_hidden=head_hidden, in_channels=in_channels
  )
  macs = 0
  gradient_flows_back = False
  for _, layer_macs, in_trunk in layers:
    macs += layer_macs
    trainable = not (frozen_trunk and in_trunk)
    if not forward_only and trainable:
      macs += layer_macs * (2 if gradient_flows_back else 1)
      gradient_flows_back = True
  return 2.0 * macs
