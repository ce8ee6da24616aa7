"""Command line: convert an ImageNet PyTorch checkpoint into a jaxcell weights file.

    python -m jaxcell.convert --arch resnet18 --input resnet18-f37072fd.pth --output weights/resnet18.npz

Reads .pth/.pt/.bin (torch, or a restricted unpickler without it), .safetensors or .npz state dicts,
converts them for the named architecture, checks every key and shape, and writes
`weights_file.save_weights(output, variables, metadata)` with the architecture, the source, the number of
classes, ImageNet normalisation and the 224-px input size. Studies then use it as `transfer.weights`.
Errors print `jaxcell.convert: <message>` (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from jaxcell.convert import torchvision
from jaxcell.convert.readers import EXTENSIONS, read_state_dict
from jaxcell.convert.weights_file import ConversionError, flatten_variables, save_weights
from jaxcell.data.normalization import IMAGENET_MEAN, IMAGENET_STD

Converter = Callable[[dict, str], dict]
INPUT_SIZE = 224


def _efficientnet(state_dict: dict, architecture: str) -> dict:
  """EfficientNet-Lite conversion lives in its own module; imported only when asked for."""
  try:
    module = importlib.import_module("jaxcell.convert.efficientnet")
  except ImportError as e:
    raise ConversionError(f"{architecture} conversion needs jaxcell.convert.efficientnet, which failed to import: {e}")
  return module.to_flax(state_dict, architecture)


# Architecture -> converter(state_dict, architecture) -> {'params': ..., 'batch_stats': ...}.
CONVERTERS: dict[str, Converter] = {
  **{name: torchvision.to_flax for name in torchvision.ARCHITECTURES},
  "efficientnet_lite0": _efficientnet,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m jaxcell.convert",
    description="Convert an ImageNet PyTorch checkpoint (state dict) into a jaxcell weights .npz.",
  )
  parser.add_argument("--arch", required=True, help=f"architecture: {', '.join(CONVERTERS)}")
  parser.add_argument("--input", required=True, help=f"checkpoint file ({', '.join(EXTENSIONS)})")
  parser.add_argument("--output", required=True, help="weights file to write (.npz)")
  parser.add_argument("--source", default=None, help="where the weights came from (default: the input file name)")
  return parser.parse_args(argv)


def convert(arch: str, input_path: str, output_path: str, source: str | None = None) -> tuple[dict, int]:
  """Converts and writes one checkpoint; returns (the metadata written, the number of parameters)."""
  if arch not in CONVERTERS:
    raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(CONVERTERS)}.")
  if not output_path.lower().endswith(".npz"):
    raise ValueError(f"--output must name a .npz file, got {output_path!r}.")
  state_dict = read_state_dict(input_path)
  variables = CONVERTERS[arch](state_dict, arch)
  metadata = {
    "architecture": arch,
    "source": source or os.path.basename(input_path),
    "num_classes": int(np.shape(variables["params"]["fc"]["kernel"])[-1]),  # 1000 for ImageNet checkpoints.
    "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    "input_size": INPUT_SIZE,
  }
  save_weights(output_path, variables, metadata)
  return metadata, sum(int(np.size(a)) for a in flatten_variables(variables["params"]).values())


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    metadata, count = convert(args.arch, args.input, args.output, args.source)
  except (ConversionError, ValueError, OSError, ImportError) as e:  # ConversionError is a ValueError.
    print(f"jaxcell.convert: {e}", file=sys.stderr)
    return 2
  print(
    f"jaxcell.convert: wrote {args.output}: {metadata['architecture']}, {count:,} parameters, "
    f"{metadata['num_classes']} classes, from {metadata['source']}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
