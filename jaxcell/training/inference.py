"""Batched inference over index sets: fixed-shape batches, padding masked out, nothing dropped; and the predictor of
a trained lane (its own parameters merged with the arm's shared frozen ones)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcell.training import optim, trainer


def make_predictor(model: nn.Module, batch_size: int):
  """Returns predict(variables, data, idx) -> float32 [len(idx), num_classes] probabilities (numpy).

  Every call runs the same compiled batch shape; the last batch is padded with index 0 and the padded
  rows are cut off, so every image is scored exactly once.
  """
  step = jax.jit(functools.partial(trainer.predict_probs, model))

  def predict(variables, data: trainer.DeviceData, idx: np.ndarray) -> np.ndarray:
    idx = np.asarray(idx, np.int32)
    if idx.size == 0:
      raise ValueError("Cannot predict on an empty set of images.")
    padded = np.zeros(-(-idx.size // batch_size) * batch_size, np.int32)
    padded[: idx.size] = idx
    chunks = [step(variables, data, jnp.asarray(padded[i : i + batch_size])) for i in range(0, padded.size, batch_size)]
    return np.asarray(jnp.concatenate(chunks))[: idx.size]

  return predict


def lane_predictor(model: nn.Module, batch_size: int, frozen: dict, data: trainer.DeviceData, states: list):
  """predictor(row, idx) -> probabilities of lane `states[row]` on images idx of `data` (interface.Predictor)."""
  predict = make_predictor(model, batch_size)

  def probs(row: int, idx: np.ndarray) -> np.ndarray:
    state = states[row]
    variables = {"params": optim.merge_params(state.params, frozen), "batch_stats": state.batch_stats}
    return predict(variables, data, idx)

  return probs
