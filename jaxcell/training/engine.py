"""The lane engine: all lanes of a study trained by one compiled program.

Lanes are stacked along a leading axis: trainable parameters, BatchNorm statistics, optimiser state,
PRNG keys and `LaneData` (padded training indices, sampling weights, learning rate, budget). The
dataset and the frozen parameters are shared and unbatched, so a frozen trunk runs as one ordinary
batched convolution over every lane's images. How the lane axis is executed is a `Strategy`:

- 'vmap'      jax.vmap over lanes, im2col convolutions (batched matmuls: fast on CPU);
- 'vmap_xla'  jax.vmap over lanes, lax.conv (grouped convolutions: cuDNN on GPU);
- 'mapN'      lax.map over lanes, N lanes vmapped at a time (bounded memory);
- 'loop'      one lane after another with the single-lane program (the baseline).

Compiled strategies run under `jax.shard_map` over the mesh's 'lanes' axis: each device trains its
share of lanes with no communication. Lanes are padded to a multiple of that axis.

A chunk's step count is an argument of its compiled program (up to `train.steps_per_chunk`), so one compile
serves chunks of every length. Lanes may have different step budgets: once some lane would end before another,
chunks run 'masked' (each step's new state kept only while the lane is within budget); until then, and to the
end when budgets are equal, they run without that check, which costs about 10 % of a vmapped step. `Runners`
compiles each form on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcell import progress
from jaxcell.training import lanes as lanes_lib
from jaxcell.training import mesh as mesh_lib
from jaxcell.training import trainer

log = logging.getLogger(__name__)

STRATEGY_KINDS = ("vmap", "vmap_xla", "map", "loop")

# A runner advances stacked lane states by one chunk of up to its compiled length:
# (states, frozen, key_data, data, lanes, steps) -> (states, metrics), `steps` an int32 scalar shared by every lane.
Runner = Callable[..., tuple[trainer.TrainState, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Strategy:
  kind: str  # One of STRATEGY_KINDS.
  map_batch: int = 1  # Lanes vmapped together inside lax.map ('map' only).

  @property
  def conv_impl(self) -> str:
    """The convolution the strategy trains with ('loop' runs the config's own)."""
    return {"vmap": "im2col", "vmap_xla": "xla", "map": "im2col"}.get(self.kind, "")

  @property
  def name(self) -> str:
    return f"map{self.map_batch}" if self.kind == "map" else self.kind

  @classmethod
  def parse(cls, text: str) -> "Strategy":
    """'vmap', 'vmap_xla', 'loop' or 'mapN' (lax.map, N lanes at a time)."""
    if text.startswith("map") and text[3:].isdigit() and int(text[3:]) >= 1:
      return cls("map", int(text[3:]))
    if text not in STRATEGY_KINDS or text == "map":
      raise ValueError(f"engine.strategy={text!r}; use 'auto', 'vmap', 'vmap_xla', 'loop' or 'mapN' (e.g. 'map4').")
    return cls(text)


def stack(trees: list[Any]) -> Any:
  """Stacks same-structured pytrees along a new leading lane axis (host numpy)."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree: Any) -> list[Any]:
  n = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def stack_lane_data(lanes: list[trainer.LaneData]) -> trainer.LaneData:
  """Pads every lane's index set to the longest (zero sampling weight on padding) and stacks them."""
  longest = max(int(lane.train_idx.shape[0]) for lane in lanes)

  def padded(lane: trainer.LaneData) -> trainer.LaneData:
    extra = longest - int(lane.train_idx.shape[0])
    return lane.replace(
      train_idx=np.pad(np.asarray(lane.train_idx), (0, extra)), weights=np.pad(np.asarray(lane.weights), (0, extra))
    )

  return stack([padded(lane) for lane in lanes])


def key_data(keys: list[jax.Array]) -> np.ndarray:
  """Typed PRNG keys -> raw uint32 key data [L, ...], which can be sharded like any array."""
  return np.stack([np.asarray(jax.random.key_data(k)) for k in keys])


def _solo_chunk(recipe: trainer.Recipe, num_steps: int, masked: bool, state, frozen, raw_key, data, lane, steps):
  key = jax.random.wrap_key_data(raw_key, impl=lanes_lib.TRAIN_PRNG)
  return trainer.train_chunk(recipe, state, frozen, key, data, lane, num_steps=num_steps, masked=masked, steps=steps)


def _local_lanes_chunk(
  recipe, strategy: Strategy, num_steps: int, masked: bool, states, frozen, raw_keys, data, lanes, steps
):
  """All lanes on this device × `steps` (at most `num_steps`) steps, executed the strategy's way."""
  solo = functools.partial(_solo_chunk, recipe, num_steps, masked)
  if strategy.kind in ("vmap", "vmap_xla"):
    return jax.vmap(solo, in_axes=(0, None, 0, None, 0, None))(states, frozen, raw_keys, data, lanes, steps)
  body = lambda args: solo(args[0], frozen, args[1], data, args[2], steps)
  return jax.lax.map(body, (states, raw_keys, lanes), batch_size=strategy.map_batch)


# XLA:CPU's default copy insertion copies every loop-carried parameter at the top of each scanned step before
# the optimiser overwrites it in place: the whole model per step (45 MB for ResNet-18). Region analysis proves
# those copies unnecessary. Measured side by side, one ResNet-18 lane at 64 px, full fine-tune: 12.2 -> 13.2
# steps/s; vmap over 4 lanes: 10.7 -> 11.1; bit-identical states. (GPU programs keep XLA's defaults.)
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compile_chunk(fn: Callable) -> Runner:
  """`jax.jit` of a chunk function whose first argument, the lane states, is donated."""
  options = CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  return jax.jit(fn, donate_argnums=(0,), compiler_options=options)


def make_runner(recipe: trainer.Recipe, strategy: Strategy, num_steps: int, mesh: Mesh, masked: bool = True) -> Runner:
  """A chunk runner for stacked lanes; compiled strategies are jit(shard_map(...)). Every runner consumes (donates)
  the states it is given: use the ones it returns. It runs `steps` steps (its last argument), at most `num_steps`:
  one compile serves every chunk length.

  `masked=False` runs every step unchecked: only for chunks in which no lane reaches its budget (`Runners`).

  With a 'data' mesh axis larger than 1, each lane's batch is split over it instead: jit of a vmap whose
  lane axis is sharded over 'lanes' (`spmd_axis_name`) and whose batch is constrained to 'data'; XLA
  (GSPMD) inserts the gradient and BatchNorm reductions, so the numbers are those of the whole batch.
  """
  if strategy.kind == "loop":
    return _loop_runner(recipe, num_steps, masked)
  if mesh.shape[mesh_lib.DATA] > 1:
    split = dataclasses.replace(recipe, batch_sharding=NamedSharding(mesh, P(mesh_lib.DATA)))
    return _data_parallel_runner(split, strategy, num_steps, masked)
  lanes, shared = P(mesh_lib.LANES), P()
  sharded = jax.shard_map(
    functools.partial(_local_lanes_chunk, recipe, strategy, num_steps, masked),
    mesh=mesh,
    in_specs=(lanes, shared, lanes, shared, lanes, shared),
    out_specs=(lanes, lanes),
    check_vma=False,
  )
  return compile_chunk(sharded)


def _data_parallel_runner(recipe: trainer.Recipe, strategy: Strategy, num_steps: int, masked: bool) -> Runner:
  if strategy.kind not in ("vmap", "vmap_xla"):
    raise ValueError(f"engine.data_parallel > 1 needs a vmap strategy, not {strategy.name!r}.")
  solo = functools.partial(_solo_chunk, recipe, num_steps, masked)
  lanes = jax.vmap(solo, in_axes=(0, None, 0, None, 0, None), spmd_axis_name=mesh_lib.LANES)
  return compile_chunk(lanes)


# Lane i of stacked lanes, and stacking lanes back: one compiled call each instead of one dispatch per leaf
# per lane (a ResNet-18 state has ~300 leaves; per chunk of 20 lanes that took 5-7 s on CPU). New lane states
# are written in place into the donated stack of the old ones: for 20 ResNet-18 lanes with Adam (2.7 GB),
# 0.22 s on CPU against 0.85-1.9 s for a fresh jnp.stack.
_take_lane = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree))
_stack_lanes = jax.jit(lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees))


def _put_lanes(old, trees):
  """`old` with lane i replaced by trees[i] (dynamic-update-slices, in place when `old` is donated)."""

  def put(stacked, *lanes):
    for i, lane in enumerate(lanes):
      stacked = jax.lax.dynamic_update_index_in_dim(stacked, lane, i, 0)
    return stacked

  return jax.tree.map(put, old, *trees)


_restack_lanes = jax.jit(_put_lanes, donate_argnums=(0,))


def _loop_runner(recipe: trainer.Recipe, num_steps: int, masked: bool) -> Runner:
  """The baseline: the single-lane program, compiled once, called lane after lane."""
  solo = compile_chunk(functools.partial(_solo_chunk, recipe, num_steps, masked))

  def run(states, frozen, raw_keys, data, lanes, steps):
    count = int(raw_keys.shape[0])
    per_lane = [_take_lane((states, raw_keys, lanes), np.int32(i)) for i in range(count)]
    outputs = [solo(s, frozen, k, data, l, steps) for s, k, l in per_lane]
    return _restack_lanes(states, [o[0] for o in outputs]), _stack_lanes([o[1] for o in outputs])

  return run


@dataclasses.dataclass
class LaneBatch:
  """Everything the runner needs for a group of lanes, placed on the mesh (lanes padded)."""

  states: trainer.TrainState
  frozen: Any
  raw_keys: jax.Array
  data: trainer.DeviceData
  lanes: trainer.LaneData
  num_lanes: int  # Real lanes; the rest is padding.
  mesh: Mesh | None = None  # Where the arrays are placed (None: host arrays, as in tests).

  @property
  def padded_lanes(self) -> int:
    """Lanes in the stacked arrays, padding included."""
    return int(self.states.step.shape[0])

  def step_count(self, steps: int):
    """A chunk's step count, the runners' last argument, on every device of the mesh."""
    return np.int32(steps) if self.mesh is None else mesh_lib.put_replicated(np.int32(steps), self.mesh)

  def args(self, steps: int) -> tuple:
    """A runner's arguments for a chunk of `steps` steps."""
    return (self.states, self.frozen, self.raw_keys, self.data, self.lanes, self.step_count(steps))

  def place_states(self, states) -> None:
    """Places `states` (host arrays, one row per real lane) as the lanes' states, padded as `place` pads them."""
    self.states = mesh_lib.put_lanes(
      mesh_lib.pad_lanes(states, mesh_lib.padded_lane_count(self.num_lanes, self.mesh)), self.mesh
    )

  @classmethod
  def place(cls, states, frozen, raw_keys, data, lanes, mesh: Mesh) -> "LaneBatch":
    num_lanes = int(np.asarray(raw_keys).shape[0])
    count = mesh_lib.padded_lane_count(num_lanes, mesh)
    padded = mesh_lib.pad_lanes((states, raw_keys, lanes), count)
    states, raw_keys, lanes = mesh_lib.put_lanes(padded, mesh)
    return cls(
      states,
      mesh_lib.put_replicated(frozen, mesh),
      raw_keys,
      mesh_lib.put_replicated(data, mesh),
      lanes,
      num_lanes,
      mesh,
    )


@dataclasses.dataclass
class Runners:
  """A strategy's chunk runner in its two forms, each compiled on first use (and timed as the 'compile' stage).

  Both take the chunk's step count as an argument, so one compile serves chunks of every length: lanes whose
  remaining steps are equal (every fold of a BioNIC study: epochs x (train size // batch)) train to the end,
  last shorter chunk included, with the 'unmasked' form alone (no per-step budget check). Only when some lane
  would end before another does the 'masked' form run (each step's new state kept only while the lane is within
  budget). Before a masked form is needed anyway, the unmasked one is used only when it serves at least
  `min_unmasked_chunks` chunks, so a short run does not pay a second compile for a small gain. With
  `compile_ahead`, the masked form a run will need is compiled in a background thread while the unmasked chunks
  train (`compile_ahead_of`; on an accelerator the host compiles while the device trains).
  """

  make: Callable[[bool], Runner]  # masked -> runner
  num_steps: int  # The most steps of one chunk (its compiled buffer length).
  min_unmasked_chunks: int = 2
  compile_ahead: bool = False
  compiled: dict[bool, Runner] = dataclasses.field(default_factory=dict)
  used: dict[str, int] = dataclasses.field(default_factory=lambda: {"unmasked": 0, "masked": 0})
  ahead: dict[str, Any] = dataclasses.field(default_factory=dict)  # The background compile: thread, result, seconds.

  def get(self, masked: bool, args: tuple | None = None) -> Runner:
    """The runner of one form; compiled here, timed as the study's 'compile' stage, when `args` (the chunk's
    arguments, step count included) are given and the form compiles ahead of its call (all but 'loop')."""
    if masked and "thread" in self.ahead:
      self.ahead.pop("thread").join()
      if "runner" in self.ahead:
        self.compiled[True] = self.ahead.pop("runner")
      else:  # It failed: compile on first use, as without compile_ahead, so the error surfaces there.
        log.warning("Compiling the masked chunk ahead failed (%s); compiling it now.", self.ahead.get("error"))
    if masked not in self.compiled:
      runner = self.make(masked)
      if args is not None and hasattr(runner, "lower"):
        with progress.timed(f"compile {'masked' if masked else 'unmasked'} chunk", time_as="compile"):
          runner = runner.lower(*args).compile()
      self.compiled[masked] = runner
    self.used["masked" if masked else "unmasked"] += 1
    return self.compiled[masked]

  def compile_ahead_of(self, steps_left: np.ndarray, args: tuple) -> None:
    """Starts compiling the masked form for `args` (the chunk's arguments, for their shapes and shardings) when
    the chunks ahead will need it: some lane will end before another."""
    if not self.compile_ahead or True in self.compiled or "thread" in self.ahead or "seconds" in self.ahead:
      return
    if int(np.max(steps_left)) == int(np.min(steps_left)):
      return
    runner = self.make(True)
    if not hasattr(runner, "lower"):  # The 'loop' strategy compiles per lane inside Python.
      return
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), args)

    def work():
      start = time.perf_counter()
      try:
        self.ahead["runner"] = runner.lower(*shapes).compile()
      except Exception as error:  # pylint: disable=broad-except
        self.ahead["error"] = f"{type(error).__name__}: {error}"
      self.ahead["seconds"] = round(time.perf_counter() - start, 2)

    self.ahead["thread"] = threading.Thread(target=work, name="jaxcell-compile-ahead", daemon=True)
    self.ahead["thread"].start()

  def for_chunk(self, steps_left: np.ndarray, args: tuple | None = None) -> tuple[Runner, int]:
    """(runner, steps) of the next chunk, given every lane's remaining steps (padding lanes included) and the
    chunk's arguments: unmasked for as many steps as every lane has left, else masked up to the longest."""
    low, high = int(np.min(steps_left)), int(np.max(steps_left))
    unmasked = low > 0 and (low == high or low >= self.min_unmasked_chunks * self.num_steps or self.used["unmasked"])
    if unmasked:
      return self.get(False, args), min(self.num_steps, low)
    return self.get(True, args), min(self.num_steps, high)


def train(
  runners: Runners, batch: LaneBatch, on_chunk: Callable[[LaneBatch, dict], np.ndarray | None] | None = None
) -> LaneBatch:
  """Runs chunks until every lane has used its budget or been stopped; `on_chunk` sees progress (logging,
  checkpoints) and may return a bool mask over the real lanes of those to stop (diverged).

  A stopped lane's slot in the compiled program runs on while others train (its results are discarded): the
  chunks, and so every other lane's numbers, stay exactly those of a run without it."""
  budgets = mesh_lib.to_host(batch.lanes.total_steps)
  stopped = np.zeros(budgets.shape, bool)
  stopped[batch.num_lanes :] = True  # Padding lanes never hold training up.
  while np.any(((steps_left := budgets - mesh_lib.to_host(batch.states.step)) > 0) & ~stopped):
    args = batch.args(0)  # For the shapes of a compile.
    runner, steps = runners.for_chunk(steps_left, args)
    if np.any(~stopped):  # Shapes only, taken before the states are donated to this chunk.
      runners.compile_ahead_of(steps_left[~stopped], args)
    batch.states, metrics = runner(*batch.args(steps))
    if on_chunk is not None:
      stop = on_chunk(batch, metrics)
      if stop is not None:
        stopped[: batch.num_lanes] |= np.asarray(stop, bool)
  return batch


def lane_steps_done(batch: LaneBatch) -> int:
  """Steps taken by the real lanes, each counted up to its own budget."""
  steps = mesh_lib.to_host(batch.states.step)[: batch.num_lanes]
  return int(np.minimum(steps, mesh_lib.to_host(batch.lanes.total_steps)[: batch.num_lanes]).sum())
