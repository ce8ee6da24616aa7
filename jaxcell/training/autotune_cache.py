"""Autotune's decisions on disk: the same set-up on the same machine runs the same strategy, without timing the
candidates again (engine.autotune_cache; '' = off).

Timings of candidates within ~20 % of each other flip with noise from run to run, so without a record identical
runs could train with different strategies and take different times. The key is everything a timing depends on:
the model, training and augmentation config groups, the arm's input shape, the lanes (real and padded), the mesh,
the chunk lengths, the backend, device kind and count, the host's CPU (model, cores, vector ISA) and the jax and
jaxlib versions. The entry
keeps the trials that decided, which engine.json records as the evidence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import jaxlib

from jaxcell.training.autotune import host_cpu

log = logging.getLogger(__name__)

_VERSION = 2  # 2: the host is autotune.host_cpu() (model, cores, vector ISA).


def decision_key(config, image_shape, num_lanes: int, padded_lanes: int, mesh_shape: dict) -> str:
  """A digest of everything the decision depends on (see the module docstring)."""
  state = {
    "version": _VERSION,
    "model": config.model.to_dict(),
    "train": {k: v for k, v in config.train.to_dict().items() if k not in ("num_epochs", "num_steps")},
    "augment": config.augment.to_dict(),
    "autotune_steps": int(config.engine.autotune_steps),
    "image_shape": list(image_shape),
    "lanes": [int(num_lanes), int(padded_lanes)],
    "mesh": {str(k): int(v) for k, v in mesh_shape.items()},
    "backend": jax.default_backend(),
    "devices": [jax.device_count(), jax.devices()[0].device_kind],
    "cpu": host_cpu(),
    "versions": [jax.__version__, jaxlib.__version__],
  }
  return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _path(cache_dir: str, key: str) -> str:
  return os.path.join(os.path.expanduser(cache_dir), f"autotune-{key}.json")


def load(cache_dir: str, key: str) -> dict | None:
  """{'strategy': name, 'trials': [...]} decided earlier for this key, or None (no cache, no entry, unreadable)."""
  if not cache_dir:
    return None
  try:
    with open(_path(cache_dir, key), encoding="utf-8") as f:
      entry = json.load(f)
    if isinstance(entry, dict) and isinstance(entry.get("strategy"), str):
      return entry
  except (OSError, ValueError):
    pass
  return None


def save(cache_dir: str, key: str, strategy: str, trials: list[dict]) -> None:
  """Records a decision (atomically; a cache that cannot be written only costs the next run a new autotune)."""
  if not cache_dir:
    return
  path = _path(cache_dir, key)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
      json.dump({"strategy": strategy, "trials": trials}, f, indent=2, default=str)
    os.replace(temporary, path)
  except OSError as e:
    log.warning("Could not record the autotune decision in %s (%s); the next run times the candidates again.", path, e)
