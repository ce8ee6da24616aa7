"""The pretrained network itself: its head for the objective, its compute dtype, the normalisation of its input.

Kept apart from run.py (which needs orbax and TensorBoard) so the benchmark builds the same network without
them."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxcell import models
from jaxcell.data import normalization
from jaxcell.pretraining import objectives


def compute_dtype(config) -> str:
  """pretrain.compute_dtype, 'auto' resolved: bfloat16 on accelerators (float32 parameters), model.dtype on CPU."""
  chosen = config.pretrain.compute_dtype
  if chosen == "auto":
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else config.model.dtype
  return chosen


def build_model(config, num_classes: int):
  """The backbone with its pretraining head (SimCLR: the projection MLP) and compute dtype."""
  p = config.pretrain
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  model_config.dtype = compute_dtype(config)
  if p.objective == objectives.SELF_SUPERVISED:
    model_config.head = "bionic_mlp"  # Linear-ReLU-BatchNorm-Linear: SimCLR's projection head.
  outputs = objectives.num_outputs(p.objective, int(config.data.channels), num_classes, int(p.projection_dim))
  return models.build_model(model_config, outputs)


def input_normalisation(objective: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """BioNIC's dataset statistics of the training images; one value over every channel for channel identity."""
  mean, std = normalization.normalization_constants("dataset", images)
  if objective == objectives.CHANNEL_IDENTITY:
    mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
  return mean.astype(np.float32), std.astype(np.float32)
