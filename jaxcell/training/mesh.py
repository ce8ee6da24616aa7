"""Devices, the ('lanes', 'data') mesh, and placing lane-stacked arrays on it (multi-host ready).

Lanes are independent models, so the 'lanes' axis needs no communication at all; the 'data' axis
splits one model's batch (large-batch pre-training) and is 1 for ordinary studies. No pmap: arrays
carry a `NamedSharding` and the compiled step is `jax.jit` of a `jax.shard_map`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

LANES, DATA = "lanes", "data"


def maybe_initialize_distributed(enabled: bool | None = None) -> None:
  """Joins a multi-host job (Cloud TPU pods, SLURM) when enabled by config or JAXCELL_DISTRIBUTED=1.

  `jax.distributed.initialize()` discovers the coordinator from the environment on TPU VMs and SLURM.
  """
  if enabled is None:
    enabled = os.environ.get("JAXCELL_DISTRIBUTED", "") == "1"
  if enabled and jax.process_count() == 1:
    jax.distributed.initialize()
    log.info("Process %d of %d; %d devices in all", jax.process_index(), jax.process_count(), jax.device_count())


def make_mesh(data_parallel: int = 1, devices: list | None = None) -> Mesh:
  """A ('lanes', 'data') mesh over all devices; `data_parallel` devices share each model's batch."""
  devices = list(jax.devices() if devices is None else devices)
  if data_parallel < 1 or len(devices) % data_parallel:
    raise ValueError(
      f"engine.data_parallel={data_parallel} must divide the {len(devices)} devices; use a divisor such as 1."
    )
  grid = np.array(devices).reshape(len(devices) // data_parallel, data_parallel)
  return Mesh(grid, (LANES, DATA), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def padded_lane_count(num_lanes: int, mesh: Mesh) -> int:
  """Lanes are padded up to a multiple of the 'lanes' axis so every device gets the same share."""
  per = mesh.shape[LANES]
  return -(-num_lanes // per) * per


def pad_lanes(tree: Any, count: int) -> Any:
  """Repeats the last lane up to `count` lanes (host arrays); the copies train and are discarded."""

  def pad(x):
    x = np.asarray(x)
    extra = count - x.shape[0]
    return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])

  return jax.tree.map(pad, tree)


def _global_array(x: Any, sharding: NamedSharding) -> jax.Array:
  # Every process holds the full (small) host array; each device takes its slice. Works multi-host.
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_lanes(tree: Any, mesh: Mesh) -> Any:
  """Places host arrays with a leading lane axis on the mesh, split over 'lanes'."""
  sharding = NamedSharding(mesh, P(LANES))
  return jax.tree.map(lambda x: _global_array(x, sharding), tree)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Places shared host arrays (dataset, frozen parameters) on every device of the mesh."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: _global_array(x, sharding), tree)


def to_host(tree: Any) -> Any:
  """Gathers (possibly sharded, multi-host) arrays to host numpy arrays."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)
