"""The data-parallel pretraining step: one model, a global batch split over the mesh's `data` axis.

The collection sits on every device once (uint8, replicated); each step samples the global batch by index, pins it
to `NamedSharding(mesh, P('data'))` so every device computes its share (BatchNorm statistics and the SimCLR
similarity matrix stay global: XLA inserts the collectives), augments it on device and updates the replicated
parameters. `steps_per_chunk` steps are fused by `lax.scan` into one jit-compiled call with the state donated.
Every random draw is keyed by (seed, step), so a run resumed from a checkpoint continues exactly where it stopped,
and 1 device or 8 give the same losses up to float rounding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcell.pretraining import objectives
from jaxcell.training import augment as augment_lib
from jaxcell.training import mesh as mesh_lib
from jaxcell.training import trainer


@flax.struct.dataclass
class PretrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Setup:
  """The static (compile-time) part of pretraining."""

  model: nn.Module
  tx: optax.GradientTransformation
  objective: str
  batch_size: int  # Global batch.
  augment: augment_lib.AugmentConfig
  temperature: float
  batch_sharding: NamedSharding


def make_optimizer(p) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay to 1 % of the peak over pretrain.num_steps."""
  warmup = min(int(p.warmup_steps), int(p.num_steps) - 1)
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, float(p.learning_rate), max(warmup, 0), int(p.num_steps), end_value=0.01 * float(p.learning_rate)
  )
  return optax.adamw(schedule, weight_decay=float(p.weight_decay))


def init_state(setup: Setup, key: jax.Array, image_shape: tuple[int, ...]) -> PretrainState:
  variables = setup.model.init({"params": key}, jnp.zeros((2, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  return PretrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=setup.tx.init(params),
  )


def _forward(setup: Setup, params, batch_stats, x: jax.Array, key: jax.Array):
  variables = {"params": params, "batch_stats": batch_stats}
  out, updates = setup.model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
  return out, updates.get("batch_stats", batch_stats)


def train_step(
  setup: Setup, state: PretrainState, key: jax.Array, data: trainer.DeviceData, train_idx: jax.Array
) -> tuple[PretrainState, dict[str, jax.Array]]:
  k_sample, k_channel, k_view1, k_view2, k_dropout = jax.random.split(jax.random.fold_in(key, state.step), 5)
  picks = jax.random.randint(k_sample, (setup.batch_size,), 0, train_idx.shape[0])
  idx = jax.lax.with_sharding_constraint(train_idx[picks], setup.batch_sharding)
  images = jax.lax.with_sharding_constraint(data.images[idx], setup.batch_sharding)
  labels = data.labels[idx]
  if setup.objective == objectives.CHANNEL_IDENTITY:
    images, labels = objectives.channel_identity_batch(k_channel, images)
  views = [augment_lib.augment_batch(k_view1, images, setup.augment)]
  if setup.objective == objectives.SELF_SUPERVISED:
    views.append(augment_lib.augment_batch(k_view2, images, setup.augment))
  x = trainer.normalize(jnp.concatenate(views) if len(views) > 1 else views[0], data)

  def loss_fn(params):
    out, batch_stats = _forward(setup, params, state.batch_stats, x, k_dropout)
    if setup.objective == objectives.SELF_SUPERVISED:
      loss, accuracy = objectives.nt_xent_loss(out, setup.temperature)
    else:
      loss, accuracy = objectives.classification_loss(out, labels)
    return loss, (accuracy, batch_stats)

  (loss, (accuracy, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  new = PretrainState(state.step + 1, optax.apply_updates(state.params, updates), batch_stats, opt_state)
  return new, {"loss": loss, "accuracy": accuracy}


def train_chunk(setup: Setup, num_steps: int, state, key_data, data, train_idx):
  """`num_steps` fused steps -> (state, metrics [num_steps] each); `key_data` is the run key's raw data (uint32)."""
  key = jax.random.wrap_key_data(key_data)
  return jax.lax.scan(lambda s, _: train_step(setup, s, key, data, train_idx), state, None, length=num_steps)


def compile_chunk(setup: Setup, num_steps: int, mesh) -> Any:
  """The chunk as one jit program: state and data replicated over the mesh, the batch split over 'data'."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(
    functools.partial(train_chunk, setup, num_steps),
    in_shardings=(replicated, replicated, replicated, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )


def data_mesh(devices: list | None = None):
  """Every device on the 'data' axis (one model: nothing to split over 'lanes')."""
  devices = list(jax.devices() if devices is None else devices)
  return mesh_lib.make_mesh(data_parallel=len(devices), devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(mesh_lib.DATA))
