"""Optimisers, learning-rate schedules and frozen parameter groups.

Frozen parameters are split off the tree before differentiation (big_vision's "frozen groups by regex"):
gradients, optimiser state and the lane axis exist only for what is trained, and a frozen ImageNet trunk
stays bit-identical.
"""

from __future__ import annotations

import re
from typing import Any

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
    raise ValueError(f"model.frozen={frozen_regex!r} is not a valid regular expression: {e}") from None
  frozen = {k: v for k, v in flat.items() if pattern.search(param_path(k))}
  trainable = {k: v for k, v in flat.items() if k not in frozen}
  if not trainable:
    raise ValueError(f"model.frozen={frozen_regex!r} freezes every parameter; nothing would be trained. "
                     f"Example paths: {[param_path(k) for k in list(flat)[:3]]}")
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Params, frozen: Params) -> Params:
  """Inverse of split_frozen."""
  flat = traverse_util.flatten_dict(trainable)
  flat.update(traverse_util.flatten_dict(frozen))
  return traverse_util.unflatten_dict(flat)


def make_schedule(train_config, total_steps: int) -> optax.Schedule:
  """Peak learning rate 1.0 shaped by warm-up + constant/cosine/step; the peak is applied by the optimiser.

  The returned multiplier is multiplied with a per-lane `learning_rate` hyperparameter, so lanes with
  different learning rates share one compiled schedule.
  """
  warmup = min(int(train_config.warmup_steps), max(total_steps - 1, 0))
  rest = max(total_steps - warmup, 1)
  if train_config.schedule == "constant":
    main = optax.constant_schedule(1.0)
  elif train_config.schedule == "cosine":
    main = optax.cosine_decay_schedule(1.0, decay_steps=rest)
  elif train_config.schedule == "step":
    boundaries = {int(f * total_steps) - warmup: float(train_config.step_factor)
                  for f in train_config.step_boundaries if int(f * total_steps) > warmup}
    main = optax.piecewise_constant_schedule(1.0, boundaries)
  else:
    raise ValueError(f"train.schedule={train_config.schedule!r}; use 'constant', 'cosine' or 'step'.")
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])


def make_optimizer(train_config, total_steps: int) -> optax.GradientTransformation:
  """Adam (PyTorch defaults, as BioNIC) or SGD + momentum; learning rate and weight decay injectable.

  `optax.inject_hyperparams` keeps `learning_rate` and `weight_decay` in the optimiser state, so they
  can differ per lane (an array over lanes) without recompiling.
  """
  schedule = make_schedule(train_config, total_steps)

  def build(learning_rate, weight_decay):
    scaled_lr = lambda step: learning_rate * schedule(step)
    if train_config.optimizer == "adam":
      return optax.adamw(scaled_lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    if train_config.optimizer == "sgd":
      return optax.chain(optax.add_decayed_weights(weight_decay),
                         optax.sgd(scaled_lr, momentum=float(train_config.momentum)))
    raise ValueError(f"train.optimizer={train_config.optimizer!r}; use 'adam' or 'sgd'.")

  return optax.inject_hyperparams(build)(
      learning_rate=float(train_config.learning_rate), weight_decay=float(train_config.weight_decay))
