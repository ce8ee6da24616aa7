"""Training pieces: frozen groups, schedules, lane hyperparameters, class-balanced sampling, a real step."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcell import config as config_lib
from jaxcell import models
from jaxcell.training import augment, lanes, optim, trainer

IMAGE_SHAPE = (32, 32, 3)


def _tiny_model(num_classes=3):
  c = config_lib.base_config().model
  c.width = 0.125
  c.head = "bionic_mlp"
  c.head_hidden = 16
  return models.build_model(c, num_classes)


def _data(n=24, num_classes=3, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
  labels = np.arange(n) % num_classes
  data = trainer.DeviceData(
    images=jnp.asarray(images), labels=jnp.asarray(labels, jnp.int32), mean=jnp.full(3, 0.5), std=jnp.full(3, 0.25)
  )
  return data, labels


def _train(frozen_regex, steps=3, learning_rate=1e-2, weight_decay=0.0):
  model = _tiny_model()
  tc = config_lib.base_config().train
  tc.learning_rate = learning_rate
  recipe = trainer.Recipe(
    model=model,
    tx=optim.make_optimizer(tc),
    schedule=optim.Schedule("cosine", 1),
    augment=augment.AugmentConfig(rotation_degrees=90, hflip=True),
    batch_size=4,
  )
  state, frozen = trainer.create_train_state(recipe, jax.random.key(0), IMAGE_SHAPE, frozen_regex)
  initial = jax.tree.map(np.array, (state.params, frozen))
  data, labels = _data()
  idx = np.arange(len(labels))
  lane = trainer.make_lane_data(idx, lanes.sampling_weights(idx, labels, True), learning_rate, weight_decay, steps)
  chunk = jax.jit(functools.partial(trainer.train_chunk, recipe, num_steps=2), donate_argnums=0)
  while int(state.step) < steps:
    state, metrics = chunk(state, frozen, jax.random.key(1), data, lane)
  return initial, state, frozen, metrics


def test_split_and_merge_round_trip():
  params = {"conv1": {"kernel": 1}, "layer1_0": {"conv1": {"kernel": 2}}, "fc": {"kernel": 3, "bias": 4}}
  trainable, frozen = optim.split_frozen(params, "^(conv1|layer1)")
  assert trainable == {"fc": {"kernel": 3, "bias": 4}}
  assert frozen == {"conv1": {"kernel": 1}, "layer1_0": {"conv1": {"kernel": 2}}}
  assert optim.merge_params(trainable, frozen) == params
  assert optim.split_frozen(params, "") == (params, {})


def test_freezing_errors_are_actionable():
  params = {"fc": {"kernel": 1}}
  with pytest.raises(ValueError, match="not a valid regular expression"):
    optim.split_frozen(params, "(")
  with pytest.raises(ValueError, match="freezes every parameter"):
    optim.split_frozen(params, ".*")


def test_frozen_parameters_stay_bit_identical_and_the_rest_trains():
  (initial_trainable, initial_frozen), state, frozen, metrics = _train("^(conv1|bn1|layer)", steps=3)
  assert "conv1" in frozen and "fc" not in frozen and "fc" in state.params
  assert all(k.startswith(("conv1", "bn1", "layer")) for k in frozen)
  for a, b in zip(jax.tree.leaves(initial_frozen), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(a, np.asarray(b))
  changed = [
    not np.array_equal(a, np.asarray(b))
    for a, b in zip(jax.tree.leaves(initial_trainable), jax.tree.leaves(state.params))
  ]
  assert all(changed), "every trainable head parameter should move after 3 Adam steps"
  assert int(state.step) == 3
  losses = np.asarray(metrics["loss"])
  assert np.isfinite(losses[0]) and np.isnan(losses[1]), "the step past the budget is skipped"


def test_zero_learning_rate_lane_does_not_move():
  (initial_trainable, _), state, _, _ = _train("", steps=2, learning_rate=0.0)
  for a, b in zip(jax.tree.leaves(initial_trainable), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_schedules_with_warmup(schedule):
  tc = config_lib.base_config().train
  tc.schedule, tc.warmup_steps = schedule, 10
  fn = lambda step: optim.lr_multiplier(optim.Schedule.from_config(tc), step, 100)
  assert float(fn(0)) == 0.0 and float(fn(10)) == pytest.approx(1.0)
  last = float(fn(99))
  expected = {"constant": 1.0, "cosine": 0.0, "step": 0.01}[schedule]
  assert last == pytest.approx(expected, abs=2e-3)


def test_class_balanced_sampling_balances_an_imbalanced_set():
  labels = np.array([0] * 90 + [1] * 10)
  idx = np.arange(100)
  data = trainer.DeviceData(
    images=jnp.zeros((100, 2, 2, 1), jnp.uint8), labels=jnp.asarray(labels), mean=jnp.zeros(1), std=jnp.ones(1)
  )
  for balanced, expected in ((True, 0.5), (False, 0.1)):
    lane = trainer.make_lane_data(idx, lanes.sampling_weights(idx, labels, balanced), 1e-3, 0.0, 1)
    _, batch_labels = trainer.sample_batch(jax.random.key(0), data, lane, 4000)
    assert float(jnp.mean(batch_labels)) == pytest.approx(expected, abs=0.03)


def test_lane_keys_depend_on_identity_not_position():
  a = lanes.Lane(index=0, arm="main", seed=1, repeat=2, fold=3, n_per_class=None, learning_rate=1e-3, weight_decay=0.0)
  b = lanes.Lane(index=7, arm="main", seed=1, repeat=2, fold=3, n_per_class=None, learning_rate=1e-3, weight_decay=0.0)
  c = lanes.Lane(index=0, arm="main", seed=1, repeat=2, fold=4, n_per_class=None, learning_rate=1e-3, weight_decay=0.0)
  d = lanes.Lane(index=9, arm="other", seed=1, repeat=2, fold=3, n_per_class=None, learning_rate=1e-2, weight_decay=0.0)
  same = jax.random.key_data(a.key()), jax.random.key_data(b.key())
  np.testing.assert_array_equal(*same)
  assert not np.array_equal(jax.random.key_data(a.key()), jax.random.key_data(c.key()))
  # Matched lanes of two arms share their random draws (common random numbers for paired comparisons).
  np.testing.assert_array_equal(jax.random.key_data(a.train_key()), jax.random.key_data(d.train_key()))


def test_make_lanes_covers_the_protocol():
  c = config_lib.base_config()
  c.protocol.num_repeats, c.protocol.num_seeds, c.protocol.n_per_class = 2, 2, (5, None)
  all_lanes = lanes.make_lanes({"main": c}, num_folds=3)
  assert len(all_lanes) == 2 * 2 * 2 * 3
  assert [l.index for l in all_lanes] == list(range(len(all_lanes)))
  assert len({(l.seed, l.repeat, l.fold, l.n_per_class) for l in all_lanes}) == len(all_lanes)


def test_a_finished_checkpoint_restores_without_its_optimiser_state(tmp_path):
  from jaxcell.training import checkpoints

  tx = optax.adam(1e-3)
  params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3)}}
  state = trainer.TrainState(jnp.int32(7), params, {"bn": {"mean": jnp.ones(3)}}, tx.init(params))
  fresh = state.replace(step=jnp.int32(0), params=jax.tree.map(jnp.zeros_like, params), opt_state=tx.init(params))
  mid_run, done = checkpoints.Checkpointer(tmp_path / "mid"), checkpoints.Checkpointer(tmp_path / "done")
  mid_run.save(7, state)
  done.save(7, checkpoints.finished(state))
  mid_run.close(), done.close()
  assert checkpoints.Checkpointer(tmp_path / "done").restore_raw()["opt_state"] is None
  restored = checkpoints.Checkpointer(tmp_path / "done").restore_train_state(fresh)
  assert int(restored.step) == 7 and np.array_equal(restored.params["dense"]["kernel"], params["dense"]["kernel"])
  assert restored.opt_state is fresh.opt_state, "the optimiser state comes from the template"
  resumed = checkpoints.Checkpointer(tmp_path / "mid").restore_train_state(fresh)
  assert np.array_equal(jax.tree.leaves(resumed.opt_state)[1], jax.tree.leaves(state.opt_state)[1])


def _resident_growth_during(fn) -> int:
  """How far the process's resident memory rose above its level before `fn()` while it ran (sampled every 2 ms)."""
  import os
  import threading
  import time

  def resident() -> int:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

  before, peak, done = resident(), [0], threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], resident())
      time.sleep(0.002)

  sampler = threading.Thread(target=sample)
  sampler.start()
  try:
    fn()
  finally:
    done.set()
    sampler.join()
  return max(peak[0], resident()) - before


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory is read from Linux's /proc")
def test_a_mid_run_checkpoint_copies_no_state_and_lets_the_next_chunk_reuse_it(tmp_path):
  """Orbax copies a host tree whole before writing it (device arrays it writes without that copy), and with zstd
  it holds an encoded copy of every array while writing: trained weights do not compress, so that is the state's
  size again (+110-125 MB for this 128 MB state, measured). On CPU the chunk after the checkpoint must still be
  able to donate (reuse) the state's buffers."""
  from jaxcell.training import checkpoints

  step = jax.jit(lambda tree: jax.tree.map(lambda x: x + 1, tree), donate_argnums=(0,))
  keys = jax.random.split(jax.random.key(0), 8)
  state = step({f"w{i}": jax.random.normal(k, (4, 1 << 20)) for i, k in enumerate(keys)})  # 128 MB, like weights.
  jax.block_until_ready(state)
  expected = np.asarray(state["w3"]).copy()
  ckpt = checkpoints.Checkpointer(tmp_path / "ckpt")
  growth = _resident_growth_during(lambda: ckpt.save(1, state))
  assert growth < 32 << 20, f"the save took {growth / 2**20:.0f} MB more memory: a copy of the 128 MB state"
  before = jax.tree.leaves(state)
  state = step(state)
  assert all(x.is_deleted() for x in before), "the chunk after a checkpoint must donate the state it was given"
  ckpt.close()
  restored = checkpoints.Checkpointer(tmp_path / "ckpt").restore_raw()
  np.testing.assert_array_equal(np.asarray(restored["w3"]), expected)
  np.testing.assert_array_equal(np.asarray(state["w3"]), expected + 1)


def test_a_compressed_checkpoint_of_an_earlier_version_still_restores(tmp_path):
  """Workdirs written before checkpoints were uncompressed (orbax's StandardSave, zstd) resume and predict."""
  import orbax.checkpoint as ocp

  from jaxcell.training import checkpoints

  tree = {"params": {"kernel": jnp.arange(12.0).reshape(3, 4)}, "step": jnp.int32(5)}
  old = ocp.CheckpointManager((tmp_path / "old").resolve(), options=ocp.CheckpointManagerOptions(create=True))
  old.save(5, args=ocp.args.StandardSave(tree))
  old.wait_until_finished()
  old.close()
  reader = checkpoints.Checkpointer(tmp_path / "old")
  assert reader.latest_step() == 5
  like = jax.tree.map(jnp.zeros_like, tree)
  for restored in (reader.restore(like), reader.restore_raw()):
    np.testing.assert_array_equal(np.asarray(restored["params"]["kernel"]), np.asarray(tree["params"]["kernel"]))
    assert int(restored["step"]) == 5
