"""Optimisers, learning-rate schedules and frozen parameter groups.

Frozen parameters are split off the tree before differentiation (big_vision's "frozen groups by regex"):
gradients, optimiser state and the lane axis exist only for what is trained, and a frozen ImageNet trunk
stays bit-identical.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

Params = Any


def param_path(path: tuple[str, ...]) -> str:
  return "/".join(str(p) for p in path)


def split_frozen(params: Params, frozen_regex: str) -> tuple[Params, Params]:
  """Splits params into (trainable, frozen) nested dicts by a full-path regex ('' = nothing frozen).

  Paths look like 'layer1_0/conv1/kernel'. `re.search` is used, so '^layer' and 'conv' both work.
  """
  flat = traverse_util.flatten_dict(params)
  if not frozen_regex:
    return params, {}
  try:
    pattern = re.compile(frozen_regex)
  except re.error as e:
    raise ValueError(f"train.frozen={frozen_regex!r} is not a valid regular expression: {e}") from None
  frozen = {k: v for k, v in flat.items() if pattern.search(param_path(k))}
  trainable = {k: v for k, v in flat.items() if k not in frozen}
  if not trainable:
    raise ValueError(
      f"train.frozen={frozen_regex!r} freezes every parameter; nothing would be trained. "
      f"Example paths: {[param_path(k) for k in list(flat)[:3]]}"
    )
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Params, frozen: Params) -> Params:
  """Inverse of split_frozen."""
  flat = traverse_util.flatten_dict(trainable)
  flat.update(traverse_util.flatten_dict(frozen))
  return traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The shape of the learning-rate curve (static: part of the compiled program)."""

  kind: str = "constant"  # 'constant', 'cosine' or 'step'
  warmup_steps: int = 0
  step_boundaries: tuple[float, ...] = (0.5, 0.75)  # fractions of the lane's budget
  step_factor: float = 0.1

  @classmethod
  def from_config(cls, train_config) -> "Schedule":
    return cls(
      kind=train_config.schedule,
      warmup_steps=int(train_config.warmup_steps),
      step_boundaries=tuple(float(f) for f in train_config.step_boundaries),
      step_factor=float(train_config.step_factor),
    )


def lr_multiplier(schedule: Schedule, step: jax.Array, total_steps: jax.Array) -> jax.Array:
  """Learning-rate multiplier in [0, 1] at `step`: linear warm-up, then constant, cosine or step decay.

  Written in jnp on (step, total_steps) arrays rather than as an optax schedule, so that lanes with
  different budgets (learning curves: 5 vs 50 images per class) share one compiled program.
  """
  step = jnp.asarray(step, jnp.float32)
  total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
  warmup = jnp.minimum(float(schedule.warmup_steps), total - 1)
  progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
  if schedule.kind == "constant":
    decayed = jnp.ones_like(progress)
  elif schedule.kind == "cosine":
    decayed = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  elif schedule.kind == "step":
    passed = sum((step >= jnp.floor(f * total)).astype(jnp.float32) for f in schedule.step_boundaries)
    decayed = schedule.step_factor**passed
  else:
    raise ValueError(f"train.schedule={schedule.kind!r}; use 'constant', 'cosine' or 'step'.")
  warming = step / jnp.maximum(warmup, 1.0)
  return jnp.where(step < warmup, warming, decayed)


def make_optimizer(train_config) -> optax.GradientTransformation:
  """Adam (PyTorch defaults, as BioNIC) or SGD + momentum, with injectable hyperparameters.

  `optax.inject_hyperparams` keeps `learning_rate` and `weight_decay` in the optimiser state: the train
  step writes each lane's scheduled learning rate there, so they can differ per lane without recompiling.
  """

  def build(learning_rate, weight_decay):
    if train_config.optimizer == "adam":
      return optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    if train_config.optimizer == "sgd":
      return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=float(train_config.momentum))
      )
    raise ValueError(f"train.optimizer={train_config.optimizer!r}; use 'adam' or 'sgd'.")

  return optax.inject_hyperparams(build)(
    learning_rate=float(train_config.learning_rate), weight_decay=float(train_config.weight_decay)
  )
