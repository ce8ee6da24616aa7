"""The lane engine: every lane of a study trained by one compiled program.

Lanes are stacked along a leading axis: trainable parameters, BatchNorm statistics, optimiser state,
PRNG keys and `LaneData` (padded training indices, sampling weights, learning rate, budget). The
dataset and the frozen parameters are shared, unbatched, so a frozen trunk runs as one ordinary
batched convolution over all lanes' images. How the lane axis is executed is a `Strategy`:

- 'vmap'      jax.vmap over lanes with the im2col convolution (batched matmuls; fast on CPU);
- 'vmap_xla'  jax.vmap over lanes with lax.conv (grouped convolutions; cuDNN on GPU);
- 'map'       lax.map over lanes, `map_batch` lanes vmapped at a time (bounded memory);
- 'loop'      one lane after another with the single-lane program (the baseline).

Lanes are spread over the devices of a ('lanes', 'data') mesh with `jax.shard_map`; each device runs
its share of lanes with no communication.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcell.training import trainer

STRATEGY_KINDS = ("vmap", "vmap_xla", "map", "loop")


@dataclasses.dataclass(frozen=True)
class Strategy:
  kind: str  # One of STRATEGY_KINDS.
  map_batch: int = 1  # Lanes vmapped together inside lax.map ('map' only).

  @property
  def conv_impl(self) -> str:
    return "xla" if self.kind == "vmap_xla" else "im2col" if self.kind in ("vmap", "map") else "any"

  @property
  def label(self) -> str:
    return f"map{self.map_batch}" if self.kind == "map" else self.kind

  @classmethod
  def parse(cls, text: str) -> "Strategy":
    """'vmap', 'vmap_xla', 'loop', 'map' or 'map4' (lax.map, 4 lanes at a time)."""
    if text.startswith("map") and text[3:].isdigit():
      return cls("map", int(text[3:]))
    if text not in STRATEGY_KINDS:
      raise ValueError(f"engine.strategy={text!r}; use 'auto', one of {STRATEGY_KINDS}, or 'mapN' (e.g. 'map4').")
    return cls(text)


def stack(trees: list[Any]) -> Any:
  """Stacks same-structured pytrees along a new leading lane axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any) -> list[Any]:
  n = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def stack_lane_data(lanes: list[trainer.LaneData]) -> trainer.LaneData:
  """Pads every lane's index set to the longest (zero sampling weight on padding) and stacks them."""
  longest = max(int(l.train_idx.shape[0]) for l in lanes)

  def padded(l: trainer.LaneData) -> trainer.LaneData:
    extra = longest - int(l.train_idx.shape[0])
    return l.replace(train_idx=jnp.pad(l.train_idx, (0, extra)), weights=jnp.pad(l.weights, (0, extra)))

  return stack([padded(l) for l in lanes])


def make_mesh(num_data: int = 1, devices: list | None = None) -> Mesh:
  """A ('lanes', 'data') mesh over all devices: lanes spread out, `num_data` devices split each batch."""
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) % num_data:
    raise ValueError(f"{len(devices)} devices cannot be split into data groups of {num_data}.")
  grid = np.array(devices).reshape(len(devices) // num_data, num_data)
  return Mesh(grid, ("lanes", "data"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def padded_lane_count(num_lanes: int, mesh: Mesh) -> int:
  """Lanes are padded to a multiple of the 'lanes' mesh axis (padding lanes are discarded)."""
  per = mesh.shape["lanes"]
  return -(-num_lanes // per) * per


def pad_lanes(tree: Any, count: int) -> Any:
  """Repeats the last lane up to `count` lanes; the copies train and are thrown away."""

  def pad(x):
    extra = count - x.shape[0]
    return x if extra == 0 else jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])

  return jax.tree.map(pad, tree)


def _lanes_chunk(recipe: trainer.Recipe, strategy: Strategy, num_steps: int, states, frozen, keys, data, lanes):
  """All local lanes × `num_steps` steps, executed as the strategy says."""
  solo = functools.partial(trainer.train_chunk, recipe, num_steps=num_steps)
  if strategy.kind in ("vmap", "vmap_xla"):
    return jax.vmap(solo, in_axes=(0, None, 0, None, 0))(states, frozen, keys, data, lanes)
  if strategy.kind == "map":
    body = lambda args: solo(args[0], frozen, args[1], data, args[2])
    return jax.lax.map(body, (states, keys, lanes), batch_size=strategy.map_batch)
  raise ValueError(f"Strategy {strategy.kind!r} is not a compiled multi-lane strategy.")


def compile_lanes_chunk(recipe: trainer.Recipe, strategy: Strategy, num_steps: int, mesh: Mesh) -> Callable:
  """jit(shard_map(...)) of a multi-lane chunk: lanes sharded over the mesh, state donated."""
  lane_spec, shared = P("lanes"), P()
  fn = jax.shard_map(
    functools.partial(_lanes_chunk, recipe, strategy, num_steps),
    mesh=mesh,
    in_specs=(lane_spec, shared, lane_spec, shared, lane_spec),
    out_specs=(lane_spec, lane_spec),
    check_vma=False,
  )
  return jax.jit(fn, donate_argnums=(0,))


def lane_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("lanes"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_lanes(tree: Any, mesh: Mesh) -> Any:
  """Places lane-stacked arrays on the mesh, lane axis split over 'lanes' (multi-host safe)."""
  sharding = lane_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx, x=np.asarray(x): x[idx]), tree
  )


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  sharding = replicated(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx, x=np.asarray(x): x[idx]), tree
  )
