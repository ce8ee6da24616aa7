"""Everything the lane engine needs for an arm's lanes, built the one way a study and the benchmark share: the
compiled training recipe, initial variables, the shared frozen parameters, each lane's fresh state, index set and
step budget, the placed `LaneBatch`, and the strategy choice (config or autotune).

Kept apart from `full_model` (which runs a study's lanes with progress reports and checkpoints) so the benchmark
and the tests build lanes with jax, flax, optax and ml_collections alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcell import models
from jaxcell.training import augment as augment_lib
from jaxcell.training import autotune, autotune_cache, engine, optim, trainer
from jaxcell.training import lanes as lanes_lib
from jaxcell.training import mesh as mesh_lib
from jaxcell.training.interface import ArmSetup, PlanItem


def total_steps(config, train_size: int) -> int:
  """The step budget: train.num_steps, or num_epochs × (train size // batch size) as BioNIC counts epochs."""
  if config.train.num_steps:
    return int(config.train.num_steps)
  return max(1, int(config.train.num_epochs) * (train_size // int(config.train.batch_size)))


def make_recipe(config, num_classes: int, conv_impl: str | None = None) -> trainer.Recipe:
  """The compile-time training recipe; `conv_impl` overrides the config's (strategies pick their own)."""
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  if conv_impl:
    model_config.conv_impl = conv_impl
  return trainer.Recipe(
    model=models.build_model(model_config, num_classes),
    tx=optim.make_optimizer(config.train),
    schedule=optim.Schedule.from_config(config.train),
    augment=augment_lib.AugmentConfig.from_config(config.augment),
    batch_size=int(config.train.batch_size),
  )


def make_init(model, image_shape, pretrained=None):
  """A compiled key -> variables initialiser (compiled once, reused by every lane).

  With converted weights (`convert.pretrained.Pretrained`), every array but the head's comes from the file.
  """
  dummy = jnp.zeros((2, *image_shape), jnp.float32)
  init = jax.jit(lambda key: model.init({"params": key}, dummy, train=False))
  if pretrained is None:
    return init
  return lambda key: pretrained.overlay(init(key))


def shared_frozen(init, seed: int, frozen_regex: str):
  """The frozen parameters every lane shares, initialised from the study seed."""
  _, frozen = optim.split_frozen(init(jax.random.key(seed, impl=lanes_lib.INIT_PRNG))["params"], frozen_regex)
  return frozen


def initial_state(init, tx, frozen_regex: str, lane: lanes_lib.Lane) -> trainer.TrainState:
  """A lane's fresh state: its own initialisation of the trainable parameters, from its own key."""
  variables = init(lane.init_key())
  params, _ = optim.split_frozen(variables["params"], frozen_regex)
  return trainer.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
  )


def lane_data(
  lane: lanes_lib.Lane, train_idx: np.ndarray, labels: np.ndarray, class_balanced: bool, steps: int
) -> trainer.LaneData:
  weights = lanes_lib.sampling_weights(train_idx, labels, class_balanced)
  return trainer.make_lane_data(train_idx, weights, lane.learning_rate, lane.weight_decay, steps)


def initial_states(arm: ArmSetup, lanes: list[lanes_lib.Lane]) -> trainer.TrainState:
  """The lanes' fresh states, stacked along a leading lane axis (host numpy).

  Each lane is initialised and copied into the stack in turn, so memory holds the stack and one lane rather than
  every lane twice (5 ResNet-18 lanes: +0.86 GB at set-up instead of +1.37 GB). Lanes are initialised one by one, not
  under vmap, because the 'rbg' initialisation key gives other bits under vmap (lanes.INIT_PRNG)."""
  tx = optim.make_optimizer(arm.config.train)
  # Its init compiled as one program: run op by op, the first lane's optimiser state took 0.6 s, jitted 0.19 s
  # (ResNet-18, Adam).
  tx = tx._replace(init=jax.jit(tx.init))
  stacked = None
  for row, lane in enumerate(lanes):
    state = initial_state(arm.init, tx, arm.config.train.frozen, lane)
    if stacked is None:
      stacked = jax.tree.map(lambda x: np.empty((len(lanes), *np.shape(x)), x.dtype), state)
    for into, value in zip(jax.tree.leaves(stacked), jax.tree.leaves(state)):
      into[row] = np.asarray(value)
    del state
  return stacked


def place_lanes(
  arm: ArmSetup, states: trainer.TrainState, labels: np.ndarray, plan: list[PlanItem], mesh
) -> engine.LaneBatch:
  """The plan's lanes on the mesh: `states` (initial or restored), keys, index sets and the arm's images."""
  balanced = arm.config.train.class_balanced
  stacked = engine.stack_lane_data([lane_data(lane, idx, labels, balanced, steps) for lane, idx, steps in plan])
  raw_keys = engine.key_data([lane.train_key() for lane, _, _ in plan])
  return engine.LaneBatch.place(states, arm.frozen, raw_keys, arm.data, stacked, mesh)


def choose_strategy(
  config, num_classes: int, batch: engine.LaneBatch, mesh, rebuild_states=None
) -> tuple[engine.Strategy, list, str, autotune.Trial | None]:
  """engine.strategy, or (for 'auto') the fastest candidate autotune times on `batch` -- or decided before for the
  same set-up on this machine (engine.autotune_cache). Returns it, the trials (dicts) behind it, who chose it
  ('config', 'autotune' or 'autotune cache') and, when autotune ran, the winner's trial: its compiled unmasked
  runner (the study's chunks then need no compile of their own) and, if `kept`, the losses of the steps it trained.
  With `rebuild_states` autotune trains the batch's own states instead of a copy, and has them placed again unless
  the study can train on from the winner's steps (autotune.choose)."""
  if config.engine.strategy != "auto":
    return engine.Strategy.parse(config.engine.strategy), [], "config", None
  key = autotune_cache.decision_key(
    config, batch.data.images.shape[1:], batch.num_lanes, batch.padded_lanes, dict(mesh.shape)
  )
  cached = autotune_cache.load(config.engine.autotune_cache, key)
  if cached is not None:
    return engine.Strategy.parse(cached["strategy"]), list(cached.get("trials", [])), "autotune cache", None
  strategy, trials = _autotune(config, num_classes, batch, mesh, rebuild_states)
  winner = next((t for t in trials if t.runner is not None), None)
  records = [t.record() for t in trials]
  autotune_cache.save(config.engine.autotune_cache, key, strategy.name, records)
  return strategy, records, "autotune", winner


def _autotune(config, num_classes: int, batch: engine.LaneBatch, mesh, rebuild_states):
  # Timed unmasked, the form most chunks run in: the states trained are copies, rebuilt, or kept only when no lane
  # went past its budget.
  steps_left = mesh_lib.to_host(batch.lanes.total_steps) - mesh_lib.to_host(batch.states.step)
  return autotune.choose(
    lambda s, steps: engine.make_runner(make_recipe(config, num_classes, s.conv_impl), s, steps, mesh, masked=False),
    batch,
    autotune.candidates(batch.num_lanes),
    chunk_steps=int(config.train.steps_per_chunk),
    long_chunk=int(config.engine.autotune_steps),
    skip=autotune.known_losers(batch.states.params),
    total_steps=int(np.max(steps_left)),
    rebuild_states=rebuild_states,
    fewest_steps_left=int(np.min(steps_left[: batch.num_lanes])),
  )
