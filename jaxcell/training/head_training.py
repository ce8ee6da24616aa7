"""Head-only training on cached trunk features: feature extraction, and many lanes' heads trained at once.

When every parameter outside the head ('fc/') is frozen and the trunk's BatchNorms use running statistics (or there
are none), the trunk is a fixed function of the input image. Its pooled features are then computed once per image
and augmentation view (`extract_features`), and each lane trains only its head on the cache: `head_train_step`
mirrors `trainer.train_step` draw for draw (same lane key, same batch indices, same schedule and optimiser update),
so a head trained here equals the head of the full model trained with its trunk frozen, at a tiny fraction of the
cost. `train_heads` runs all lanes as one vmapped, compiled program, like the lane engine.

training/cached_heads.py runs an arm's lanes through this; training/lsr_probe.py fits closed-form probes on the same
features.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcell.training import augment as augment_lib
from jaxcell.training import optim, trainer

Params = Any
HEAD = "fc"  # Every jaxcell model calls its head 'fc' (models/heads.py).


def is_head_only(params: Params, frozen_regex: str) -> bool:
  """True when `frozen_regex` freezes every parameter outside the head, the first condition for cached features.

  The second, which the caller must check, is that the trunk's BatchNorms use running statistics in training.
  """
  trainable, _ = optim.split_frozen(params, frozen_regex)
  return set(trainable) == {HEAD}


# ----------------------------------------------------------------------------------------------------------------
# Feature extraction


@functools.partial(jax.jit, static_argnames=("model", "augment", "views"))
def _batch_features(model, augment, views, variables, images, view_keys, mean, std):
  """Pooled features [B, views, D] of one batch; view_keys [views - 1, B] are the per-image augmentation keys."""
  data = trainer.DeviceData(images=images, labels=None, mean=mean, std=std)
  xs = [augment_lib.to_unit_float(images)]
  for v in range(views - 1):
    xs.append(jax.vmap(augment_lib.augment_image, in_axes=(0, 0, None))(view_keys[v], images, augment))
  x = trainer.normalize(jnp.concatenate(xs), data)  # All views in one trunk call: [views * B, H, W, C].
  _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
  pooled = state.get("intermediates", {}).get("pooled")
  if pooled is None:
    raise ValueError(
      f"{type(model).__name__} does not sow 'pooled'; the model must call self.sow('intermediates', 'pooled', x) on "
      "the features it feeds to its head (as jaxcell's ResNets do)."
    )
  features = pooled[0].astype(jnp.float32)
  return features.reshape(views, images.shape[0], -1).transpose(1, 0, 2)


def extract_features(
  model: nn.Module,
  variables: Params,
  data: trainer.DeviceData,
  key: jax.Array,
  augment: augment_lib.AugmentConfig,
  views: int,
  batch_size: int = 64,
  on_batch=None,
) -> jax.Array:
  """Pooled trunk features [N, views, D] (float32) of every image of `data`, in eval mode (train=False).

  View 0 is the un-augmented image. View v >= 1 is exactly `augment_batch(fold_in(key, v), data.images, augment)`:
  image i gets the key `split(fold_in(key, v), N)[i]`, whatever `batch_size` is, so the cache is deterministic
  given (key, augment, views). Every view is then normalised with `trainer.normalize`. Images are processed in
  batches of `batch_size`, the last one padded by repeating the last image (its rows are dropped), so no image is
  lost; the per-batch program is compiled once. `variables` are the full model's ({'params', 'batch_stats'}).
  `on_batch(num_images)`, if given, is called as each batch's features are ready (progress).
  """
  if views < 1 or batch_size < 1:
    raise ValueError(f"views and batch_size must be >= 1, got views={views}, batch_size={batch_size}.")
  n = int(data.images.shape[0])
  if n == 0:
    raise ValueError("data.images is empty; there are no images to extract features from.")
  variables = {k: v for k, v in variables.items() if k != "intermediates"}  # Stale sown values would be appended to.
  keys = [jax.random.split(jax.random.fold_in(key, v), n) for v in range(1, views)]
  view_keys = jnp.stack(keys) if keys else None
  batch_size = min(batch_size, n)  # A batch larger than the data set would only compute padding.
  out = []
  for start in range(0, n, batch_size):
    rows = np.minimum(np.arange(start, start + batch_size), n - 1)
    batch_keys = None if view_keys is None else view_keys[:, rows]
    feats = _batch_features(model, augment, views, variables, data.images[rows], batch_keys, data.mean, data.std)
    out.append(feats[: min(batch_size, n - start)])
    if on_batch is not None:
      on_batch(int(jax.block_until_ready(out[-1]).shape[0]))
  return jnp.concatenate(out)


# ----------------------------------------------------------------------------------------------------------------
# Head training on cached features


@dataclasses.dataclass(frozen=True)
class HeadRecipe:
  """The static part of head training (a change means a new compile), the head-only analogue of trainer.Recipe."""

  head: nn.Module  # heads.make_head(...): the same module the full model calls 'fc'.
  tx: optax.GradientTransformation
  schedule: optim.Schedule
  batch_size: int
  views: int = 1  # Views sampled from; must not exceed the cache's view axis.


def head_train_state(params: Params, batch_stats: Params, tx: optax.GradientTransformation) -> trainer.TrainState:
  """A head-only TrainState from a full model's (trainable) params and batch_stats: the subtrees under 'fc'."""
  if HEAD not in params:
    raise ValueError(f"params have no '{HEAD}' subtree (top-level keys: {sorted(params)}); pass the full model's.")
  head_params = params[HEAD]
  return trainer.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=head_params,
    batch_stats=batch_stats.get(HEAD, {}),
    opt_state=tx.init(head_params),
  )


def merge_head(variables: Params, state: trainer.TrainState) -> Params:
  """The full model's variables with the head replaced by a trained head state (for trainer.predict_probs)."""
  merged = {k: dict(v) for k, v in variables.items() if k in ("params", "batch_stats")}
  merged["params"][HEAD] = state.params
  if state.batch_stats:
    merged.setdefault("batch_stats", {})[HEAD] = state.batch_stats
  return merged


def sample_indices(key: jax.Array, lane: trainer.LaneData, batch_size: int) -> jax.Array:
  """The image indices `trainer.sample_batch` draws for the same key and lane (same inverse-CDF method)."""
  cumulative = jnp.cumsum(lane.weights)
  u = jax.random.uniform(key, (batch_size,)) * cumulative[-1]
  picks = jnp.minimum(jnp.searchsorted(cumulative, u, side="right"), lane.weights.shape[0] - 1)
  return lane.train_idx[picks]


def sample_views(key: jax.Array, batch_size: int, views: int) -> jax.Array:
  """The cached view of each sampled image, uniform over views (always view 0 when views == 1)."""
  if views == 1:
    return jnp.zeros((batch_size,), jnp.int32)
  return jax.random.randint(key, (batch_size,), 0, views)


def sample_head_batch(
  recipe: HeadRecipe, key: jax.Array, step: jax.Array, features: jax.Array, labels: jax.Array, lane: trainer.LaneData
) -> tuple[jax.Array, jax.Array]:
  """The (features [B, D], labels [B]) batch of `step`, drawn from the lane key as trainer.train_step draws it."""
  if features.ndim != 3 or recipe.views > features.shape[1]:
    raise ValueError(
      f"features must be [N, views, D] with at least recipe.views={recipe.views} views, got shape {features.shape}."
    )
  k_sample, k_augment = jax.random.split(jax.random.fold_in(key, step))
  idx = sample_indices(k_sample, lane, recipe.batch_size)
  view = sample_views(k_augment, recipe.batch_size, recipe.views)
  return features[idx, view], labels[idx]


def head_train_step(
  recipe: HeadRecipe,
  state: trainer.TrainState,
  key: jax.Array,
  features: jax.Array,
  labels: jax.Array,
  lane: trainer.LaneData,
) -> tuple[trainer.TrainState, dict[str, jax.Array]]:
  """One optimisation step of one lane's head on cached features [N, V, D]; `key` is the lane key."""
  x, y = sample_head_batch(recipe, key, state.step, features, labels, lane)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, updates = recipe.head.apply(variables, x, train=True, mutable=["batch_stats"])
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = trainer.apply_gradients(recipe.tx, recipe.schedule, state, grads, batch_stats, lane)
  return new_state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def head_train_chunk(
  recipe: HeadRecipe,
  state: trainer.TrainState,
  key: jax.Array,
  features: jax.Array,
  labels: jax.Array,
  lane: trainer.LaneData,
  *,
  num_steps: int,
):
  """`num_steps` fused head steps; steps at or past the lane's budget leave the state untouched (NaN metrics)."""

  step = lambda s: head_train_step(recipe, s, key, features, labels, lane)  # noqa: E731
  return trainer.scan_within_budget(step, state, lane.total_steps, num_steps)


@functools.partial(jax.jit, static_argnames=("recipe", "num_steps"), donate_argnames=("states",))
def _lanes_chunk(recipe, num_steps, states, keys, features, labels, lanes):
  """One chunk of every lane: lane axis vmapped; the feature cache and labels are shared (unbatched)."""
  solo = functools.partial(head_train_chunk, recipe, num_steps=num_steps)
  return jax.vmap(solo, in_axes=(0, 0, None, None, 0))(states, keys, features, labels, lanes)


def train_heads(
  recipe: HeadRecipe,
  states: trainer.TrainState,
  keys: Any,
  features: jax.Array,
  labels: jax.Array,
  lanes: trainer.LaneData,
  num_steps: int,
  steps_per_chunk: int,
) -> tuple[trainer.TrainState, np.ndarray]:
  """Trains the heads of stacked lanes until each has used its budget (`lanes.total_steps`).

  `states` and `lanes` (engine.stack / engine.stack_lane_data) carry a leading lane axis; `keys` are the lanes'
  training keys (a list of L keys or a stacked key array [L]; threefry, so a lane matches its solo run).
  `states` is donated: do not reuse it. Returns the final states and losses [L, num_steps] where column s is the
  loss of step s (NaN where a lane took no step s in this call). `num_steps` must cover every lane's budget.
  """
  if steps_per_chunk < 1:
    raise ValueError(f"steps_per_chunk must be >= 1, got {steps_per_chunk}.")
  budgets = np.asarray(lanes.total_steps)
  if budgets.ndim != 1:
    raise ValueError(f"lanes must be stacked along a lane axis (engine.stack_lane_data); total_steps {budgets.shape}.")
  if budgets.size and budgets.max() > num_steps:
    raise ValueError(f"num_steps={num_steps} is below the largest lane budget {budgets.max()}; raise num_steps.")
  keys = jnp.stack(list(keys)) if isinstance(keys, (list, tuple)) else keys
  if keys.shape[0] != budgets.shape[0]:
    raise ValueError(f"Got {keys.shape[0]} keys for {budgets.shape[0]} lanes; pass one training key per lane.")
  features, labels = jnp.asarray(features), jnp.asarray(labels, jnp.int32)
  losses = np.full((budgets.shape[0], num_steps), np.nan, np.float32)
  rows = np.arange(budgets.shape[0])[:, None]
  while True:
    first = np.asarray(states.step)
    if not np.any(first < budgets):
      return states, losses
    states, metrics = _lanes_chunk(recipe, steps_per_chunk, states, keys, features, labels, lanes)
    chunk = np.asarray(metrics["loss"])
    cols = first[:, None] + np.arange(steps_per_chunk)[None, :]
    taken = cols < budgets[:, None]  # Steps past the budget were skipped (their loss is NaN).
    losses[np.broadcast_to(rows, cols.shape)[taken], cols[taken]] = chunk[taken]


def head_probs(recipe: HeadRecipe, state: trainer.TrainState, features: jax.Array) -> jax.Array:
  """Softmax probabilities [N, C] of a trained head on cached un-augmented features [N, D] (eval mode)."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = recipe.head.apply(variables, features, train=False)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
