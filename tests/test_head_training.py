"""Head training on cached features (training/head_training.py) and the LSR probe (training/lsr_probe.py): cached features train the same head as the full model, lanes match solo runs, and
the closed-form probe matches scikit-learn's Ridge."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcell.models import conv, heads
from jaxcell.training import augment, engine, head_training, lsr_probe, optim, trainer

NUM_CLASSES, HIDDEN, SHAPE, N = 3, 8, (8, 8, 3), 10
HEAD_ONLY = "^(?!fc/)"


class TinyNet(nn.Module):
  """A conv trunk whose BatchNorm always uses running statistics (a fixed function of the image), then 'fc'."""

  head: str

  @nn.compact
  def __call__(self, x, train):
    x = conv.Conv2d(5, 3, 2, 1, name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(x))  # Running statistics even when training.
    x = conv.global_avg_pool(x)
    self.sow("intermediates", "pooled", x)
    return heads.make_head(self.head, NUM_CLASSES, HIDDEN, jnp.float32, name="fc")(x, train).astype(jnp.float32)


class NoPooled(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    return nn.Dense(2)(x.mean(axis=(1, 2)))


def _data(n=N, seed=0):
  rng = np.random.default_rng(seed)
  return trainer.DeviceData(
    images=jnp.asarray(rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)),
    labels=jnp.asarray(np.arange(n) % NUM_CLASSES, jnp.int32),
    mean=jnp.asarray([0.4, 0.5, 0.6]),
    std=jnp.asarray([0.2, 0.25, 0.3]),
  )


def _tx(optimizer="adam"):
  return optim.make_optimizer(
    type("C", (), dict(optimizer=optimizer, learning_rate=1e-2, weight_decay=0.0, momentum=0.9))()
  )


SCHEDULE = optim.Schedule("cosine", 1)


def _lane(idx, lr, steps, labels):
  idx = np.asarray(idx)
  counts = np.bincount(labels[idx], minlength=NUM_CLASSES)
  weights = 1.0 / counts[labels[idx]]
  return trainer.make_lane_data(idx, weights / weights.sum(), lr, 1e-3, steps)


def _full_model(head, tx):
  """Full model and its state with the trunk frozen; trunk BatchNorm statistics made non-trivial."""
  recipe = trainer.Recipe(TinyNet(head), tx, SCHEDULE, augment.AugmentConfig(), batch_size=4)
  state, frozen = trainer.create_train_state(recipe, jax.random.key(0), SHAPE, HEAD_ONLY)
  stats = dict(state.batch_stats)
  stats["bn"] = {"mean": jnp.linspace(-0.2, 0.3, 5), "var": jnp.linspace(0.5, 2.0, 5)}
  return recipe, state.replace(batch_stats=stats), frozen


def _close(a, b, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.parametrize("head", ["linear", "bionic_mlp"])
def test_cached_feature_head_training_equals_frozen_trunk_training(head):
  tx = _tx()
  recipe, state, frozen = _full_model(head, tx)
  assert head_training.is_head_only(optim.merge_params(state.params, frozen), HEAD_ONLY)
  assert not head_training.is_head_only(optim.merge_params(state.params, frozen), "^conv")
  data = _data()
  variables = {"params": optim.merge_params(state.params, frozen), "batch_stats": state.batch_stats}
  cache = head_training.extract_features(
    recipe.model, variables, data, jax.random.key(7), augment.AugmentConfig(), 1, 4
  )
  assert cache.shape == (N, 1, 5)

  lane, key, steps = _lane([0, 2, 3, 5, 7, 8, 9], 1e-2, 3, np.asarray(data.labels)), jax.random.key(11), 3
  full, full_metrics = jax.jit(functools.partial(trainer.train_chunk, recipe, num_steps=steps))(
    state, frozen, key, data, lane
  )
  head_recipe = head_training.HeadRecipe(heads.make_head(head, NUM_CLASSES, HIDDEN, jnp.float32), tx, SCHEDULE, 4, 1)
  start = head_training.head_train_state(state.params, state.batch_stats, tx)
  mine, metrics = jax.jit(functools.partial(head_training.head_train_chunk, head_recipe, num_steps=steps))(
    start, key, cache, data.labels, lane
  )
  assert int(mine.step) == steps
  _close(full.params["fc"], mine.params, 1e-5)
  _close(full.batch_stats.get("fc", {}), mine.batch_stats, 1e-5)
  np.testing.assert_allclose(np.asarray(full_metrics["loss"]), np.asarray(metrics["loss"]), atol=1e-5)
  assert not np.allclose(np.asarray(start.params["kernel"] if head == "linear" else start.params["0"]["kernel"]), 0)
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(mine.params))]
  assert all(moved), "every head parameter should move in 3 Adam steps"
  if head == "bionic_mlp":
    assert not np.allclose(np.asarray(mine.batch_stats["2"]["mean"]), 0), "head BatchNorm statistics are trained"

  # Merged back into the full model, the trained head predicts as it does on the cache.
  merged = head_training.merge_head(
    {"params": optim.merge_params(full.params, frozen), "batch_stats": full.batch_stats}, mine
  )
  probs = trainer.predict_probs(recipe.model, merged, data, jnp.arange(N))
  np.testing.assert_allclose(
    np.asarray(probs), np.asarray(head_training.head_probs(head_recipe, mine, cache[:, 0])), atol=1e-5
  )


def test_sample_indices_are_those_of_trainer_sample_batch():
  labels = np.arange(20) % NUM_CLASSES
  index_data = trainer.DeviceData(images=jnp.arange(20), labels=jnp.arange(20), mean=None, std=None)
  lane = engine.stack_lane_data([_lane([1, 4, 5, 6, 9, 13, 17], 1e-3, 1, labels), _lane(range(20), 1e-3, 1, labels)])
  lane = jax.tree.map(lambda x: jnp.asarray(x[0]), lane)  # The short lane, padded with zero-weight entries.
  for seed in range(4):
    key = jax.random.key(seed)
    expected, _ = trainer.sample_batch(key, index_data, lane, 16)
    np.testing.assert_array_equal(np.asarray(head_training.sample_indices(key, lane, 16)), np.asarray(expected))


def test_views_are_the_documented_augmentations_and_padding_drops_nothing():
  model = TinyNet("linear")
  variables = model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)), train=False)
  data, key = _data(), jax.random.key(3)
  cfg = augment.AugmentConfig(rotation_degrees=90, hflip=True, brightness=0.2)
  batches = []  # Progress: the images of each batch as it is done.
  cache = head_training.extract_features(model, variables, data, key, cfg, 3, 4, batches.append)  # 10 = 4 + 4 + 2.
  assert cache.shape == (N, 3, 5) and batches == [4, 4, 2]

  def pooled(x):
    _, state = model.apply(variables, trainer.normalize(x, data), train=False, mutable=["intermediates"])
    return np.asarray(state["intermediates"]["pooled"][0])

  np.testing.assert_allclose(np.asarray(cache[:, 0]), pooled(augment.to_unit_float(data.images)), atol=1e-5)
  for v in (1, 2):
    view = augment.augment_batch(jax.random.fold_in(key, v), data.images, cfg)
    np.testing.assert_allclose(np.asarray(cache[:, v]), pooled(view), atol=1e-5)
  assert not np.allclose(np.asarray(cache[:, 1]), np.asarray(cache[:, 0]), atol=1e-3)
  assert not np.allclose(np.asarray(cache[:, 1]), np.asarray(cache[:, 2]), atol=1e-3)
  one_batch = head_training.extract_features(model, variables, data, key, cfg, views=3, batch_size=64)
  np.testing.assert_allclose(np.asarray(one_batch), np.asarray(cache), atol=1e-5)

  # Training batches pick a random cached view of each sampled image; with one view, always view 0.
  lane = _lane(range(N), 1e-3, 1, np.asarray(data.labels))
  recipe = head_training.HeadRecipe(heads.make_head("linear", NUM_CLASSES, HIDDEN, jnp.float32), _tx(), SCHEDULE, 32, 3)
  lane_key = jax.random.key(5)
  x, y = head_training.sample_head_batch(recipe, lane_key, jnp.int32(2), cache, data.labels, lane)
  k_sample, k_augment = jax.random.split(jax.random.fold_in(lane_key, 2))
  idx = np.asarray(head_training.sample_indices(k_sample, lane, 32))
  view = np.asarray(head_training.sample_views(k_augment, 32, 3))
  assert set(view.tolist()) == {0, 1, 2}
  np.testing.assert_array_equal(np.asarray(x), np.asarray(cache)[idx, view])
  np.testing.assert_array_equal(np.asarray(y), np.asarray(data.labels)[idx])
  np.testing.assert_array_equal(np.asarray(head_training.sample_views(k_augment, 32, 1)), 0)


def test_train_heads_lanes_equal_solo_runs_with_their_own_budgets():
  rng = np.random.default_rng(1)
  n, views, dim = 20, 2, 6
  cache = jnp.asarray(rng.normal(size=(n, views, dim)), jnp.float32)
  labels = np.arange(n) % NUM_CLASSES
  tx = _tx("sgd")
  recipe = head_training.HeadRecipe(
    heads.make_head("bionic_mlp", NUM_CLASSES, HIDDEN, jnp.float32), tx, SCHEDULE, 4, views
  )
  budgets = (3, 5, 4)
  lanes = [_lane(rng.choice(n, 6 + 4 * i, replace=False), 0.05 * (i + 1), budgets[i], labels) for i in range(3)]
  keys = [jax.random.key(100 + i) for i in range(3)]

  def initial(i):
    variables = recipe.head.init(jax.random.key(i), jnp.zeros((2, dim)), train=False)
    return head_training.head_train_state({"fc": variables["params"]}, {"fc": variables["batch_stats"]}, tx)

  stacked, losses = head_training.train_heads(
    recipe, engine.stack([initial(i) for i in range(3)]), keys, cache, labels, engine.stack_lane_data(lanes), 5, 2
  )
  np.testing.assert_array_equal(np.asarray(stacked.step), budgets)
  assert losses.shape == (3, 5)
  for i, budget in enumerate(budgets):
    assert np.all(np.isfinite(losses[i, :budget])) and np.all(np.isnan(losses[i, budget:]))

  solo_chunk = jax.jit(functools.partial(head_training.head_train_chunk, recipe, num_steps=2))
  for i in range(3):
    state, solo_losses = initial(i), []
    while int(state.step) < budgets[i]:
      state, metrics = solo_chunk(state, keys[i], cache, jnp.asarray(labels), lanes[i])
      solo_losses.extend(np.asarray(metrics["loss"]).tolist())
    # Batched and single matmuls may sum in different orders: float32 noise, as in the lane engine's tests.
    _close(jax.tree.map(lambda x, i=i: x[i], stacked.params), state.params, 2e-5)
    _close(jax.tree.map(lambda x, i=i: x[i], stacked.batch_stats), state.batch_stats, 2e-5)
    np.testing.assert_allclose(losses[i, : budgets[i]], solo_losses[: budgets[i]], atol=2e-5)


@pytest.mark.parametrize("m, d", [(12, 20), (40, 6)])
def test_lsr_probe_equals_sklearn_ridge(m, d):
  linear_model = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is the reference ridge solver")
  rng = np.random.default_rng(m)
  x = rng.normal(size=(m, d)).astype(np.float32) + 0.5
  y = np.arange(m) % NUM_CLASSES
  w, b = lsr_probe.lsr_probe(x, y, NUM_CLASSES, 0.7)
  assert w.shape == (d, NUM_CLASSES) and b.shape == (NUM_CLASSES,)
  ridge = linear_model.Ridge(alpha=0.7, fit_intercept=True).fit(x.astype(np.float64), np.eye(NUM_CLASSES)[y])
  np.testing.assert_allclose(np.asarray(w), ridge.coef_.T, atol=1e-4)
  np.testing.assert_allclose(np.asarray(b), ridge.intercept_, atol=1e-4)
  test = rng.normal(size=(7, d)).astype(np.float32)
  scores = lsr_probe.lsr_scores(test, w, b)
  np.testing.assert_allclose(np.asarray(scores), ridge.predict(test.astype(np.float64)), atol=1e-4)
  probs = np.asarray(lsr_probe.scores_to_probs(scores))
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(probs.argmax(-1), np.asarray(scores).argmax(-1))


@pytest.mark.parametrize("d", [8, 25])  # Padded M = 20: the primal (D < M) and the dual (D > M) system.
def test_lsr_probe_lanes_with_padding_equals_each_lane_alone(d):
  rng = np.random.default_rng(d)
  n = 30
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = np.arange(n) % NUM_CLASSES
  lanes = [_lane(rng.choice(n, size, replace=False), 1e-3, 1, y) for size in (5, 12, 20)]
  stacked = engine.stack_lane_data(lanes)
  w, b = lsr_probe.lsr_probe_lanes(x, y, stacked.train_idx, stacked.weights > 0, NUM_CLASSES, 0.3)
  assert w.shape == (3, d, NUM_CLASSES) and b.shape == (3, NUM_CLASSES)
  scores = lsr_probe.lsr_scores(x, w, b)
  assert scores.shape == (3, n, NUM_CLASSES)
  for i, lane in enumerate(lanes):
    idx = np.asarray(lane.train_idx)
    w_i, b_i = lsr_probe.lsr_probe(x[idx], y[idx], NUM_CLASSES, 0.3)
    np.testing.assert_allclose(np.asarray(w[i]), np.asarray(w_i), atol=1e-5)
    np.testing.assert_allclose(np.asarray(b[i]), np.asarray(b_i), atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores[i]), np.asarray(lsr_probe.lsr_scores(x, w_i, b_i)), atol=1e-4)


def test_bad_inputs_have_actionable_errors():
  x, y = np.ones((4, 3), np.float32), np.array([0, 1, 2, 0])
  with pytest.raises(ValueError, match="l2_reg must be > 0"):
    lsr_probe.lsr_probe(x, y, 3, 0.0)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
    lsr_probe.lsr_probe(x, y, 2, 1.0)
  with pytest.raises(ValueError, match="at least one unmasked row"):
    lsr_probe.lsr_probe_lanes(x, y, np.zeros((2, 2), int), np.array([[1, 1], [0, 0]]), 3, 1.0)
  with pytest.raises(ValueError, match="does not sow 'pooled'"):
    model = NoPooled()
    variables = model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)), train=False)
    head_training.extract_features(model, variables, _data(), jax.random.key(0), augment.AugmentConfig(), 1)
  recipe = head_training.HeadRecipe(heads.make_head("linear", 3, 4, jnp.float32), _tx(), SCHEDULE, 4)
  lanes = engine.stack_lane_data([_lane(range(4), 1e-3, 6, y)])
  with pytest.raises(ValueError, match="below the largest lane budget 6"):
    head_training.train_heads(recipe, None, [jax.random.key(0)], x[:, None], y, lanes, 5, 2)
