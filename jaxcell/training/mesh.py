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


# Where a job's processes meet when the platform does not say (TPU VMs and SLURM do): every process gets the same
# JAXCELL_COORDINATOR=host:port and JAXCELL_NUM_PROCESSES, and its own JAXCELL_PROCESS_ID.
COORDINATOR_ENV = ("JAXCELL_COORDINATOR", "JAXCELL_NUM_PROCESSES", "JAXCELL_PROCESS_ID")


def maybe_initialize_distributed(enabled: bool | None = None, timeout_seconds: int = 300) -> None:
  """Joins a multi-host job when enabled by config or JAXCELL_DISTRIBUTED=1.

  `jax.distributed.initialize()` discovers the coordinator on TPU VMs and SLURM; elsewhere (local processes, plain
  VMs) it comes from COORDINATOR_ENV. `timeout_seconds` bounds both the wait for every process at start-up and the
  silence after which a process counts as dead, so a job whose peer died stops with an error instead of hanging.
  """
  if enabled is None:
    enabled = os.environ.get("JAXCELL_DISTRIBUTED", "") == "1"
  # Not jax.process_count(): any such call starts the XLA backend, after which initialize() is refused.
  if not enabled or jax.distributed.is_initialized():
    return
  given = {name: os.environ.get(name) for name in COORDINATOR_ENV}
  kwargs = {}
  if any(given.values()):
    missing = [name for name, value in given.items() if not value]
    if missing:
      raise ValueError(f"Multi-process run: set all of {COORDINATOR_ENV} (missing {missing}) or none of them.")
    kwargs = dict(
      coordinator_address=given["JAXCELL_COORDINATOR"],
      num_processes=int(given["JAXCELL_NUM_PROCESSES"]),
      process_id=int(given["JAXCELL_PROCESS_ID"]),
    )
  try:
    jax.distributed.initialize(
      **kwargs, initialization_timeout=timeout_seconds, heartbeat_timeout_seconds=timeout_seconds
    )
  except Exception as e:  # pylint: disable=broad-except  (XLA's runtime errors name no stable type)
    first_line = (str(e).strip().splitlines() or [""])[0][:300]
    raise ValueError(
      f"Could not join the multi-process job ({type(e).__name__}: {first_line}); check that every process runs with "
      f"the same coordinator and process count, and that each started within {timeout_seconds} s "
      "(engine.distributed_timeout)."
    ) from e
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
