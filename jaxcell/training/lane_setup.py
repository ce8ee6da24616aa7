"""What a lane starts from: the compiled training recipe, initial variables, the shared frozen parameters, a
lane's fresh state, its index set and its step budget.

Kept apart from `fit` (which runs a study's lanes with progress reports and checkpoints) so the benchmark and
the tests build lanes with jax, flax, optax and ml_collections alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcell import models
from jaxcell.training import augment as augment_lib
from jaxcell.training import optim, trainer
from jaxcell.training import lanes as lanes_lib


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

  With converted weights (`models.pretrained.Pretrained`), every array but the head's comes from the file.
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
