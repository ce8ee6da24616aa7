"""The lane engine: every strategy trains each lane exactly as that lane trained alone, on any device count.

Run directly (`python tests/test_engine.py`) it prints the multi-device comparison as JSON; the test
below runs it in a subprocess with 8 fake CPU devices, because the device count is fixed at start-up.
"""

import functools
import json
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxcell import config as config_lib
from jaxcell.training import autotune, engine, engine_setup, trainer
from jaxcell.training import lanes as lanes_lib
from jaxcell.training import mesh as mesh_lib

NUM_CLASSES, SIZE = 3, 32


def _config():
  c = config_lib.base_config()
  c.model.width, c.model.stages, c.model.head = 0.125, 2, "bionic_mlp"
  c.train.batch_size, c.train.steps_per_chunk, c.train.learning_rate = 8, 2, 1e-3
  c.train.optimizer, c.train.schedule, c.train.warmup_steps = "sgd", "cosine", 1
  c.train.frozen = "^conv1"  # A shared, unbatched frozen stem.
  return c


def _problem(num_lanes):
  """Lanes with different index sets, learning rates and budgets (3 or 4 steps) on one random dataset."""
  c = _config()
  rng = np.random.default_rng(0)
  data = trainer.DeviceData(
    images=rng.integers(0, 256, (30, SIZE, SIZE, 3), dtype=np.uint8),
    labels=(np.arange(30) % NUM_CLASSES).astype(np.int32),
    mean=np.full(3, 0.5, np.float32),
    std=np.full(3, 0.25, np.float32),
  )
  recipe = engine_setup.make_recipe(c, NUM_CLASSES, "xla")
  init = engine_setup.make_init(recipe.model, (SIZE, SIZE, 3))
  frozen = engine_setup.shared_frozen(init, 0, c.train.frozen)
  states, keys, lane_data = [], [], []
  for i in range(num_lanes):
    lane = lanes_lib.Lane(i, "main", 0, i // 3, i % 3, None, 1e-3 * (1 + i % 2), 0.0)
    states.append(engine_setup.initial_state(init, recipe.tx, c.train.frozen, lane))
    keys.append(lane.train_key())
    idx = rng.choice(30, size=12 + 3 * (i % 3), replace=False)
    lane_data.append(engine_setup.lane_data(lane, idx, data.labels, True, 3 + i % 2))
  return c, frozen, data, states, keys, lane_data


def _train(strategy_name, lane_ids, problem, mesh=None, compile_ahead=False, seen=None):
  c, frozen, data, states, keys, lane_data = problem
  strategy = engine.Strategy.parse(strategy_name)
  mesh = mesh or mesh_lib.make_mesh(devices=jax.devices()[:1])
  batch = engine.LaneBatch.place(
    engine.stack([states[i] for i in lane_ids]),
    frozen,
    engine.key_data([keys[i] for i in lane_ids]),
    data,
    engine.stack_lane_data([lane_data[i] for i in lane_ids]),
    mesh,
  )
  recipe = engine_setup.make_recipe(c, NUM_CLASSES, strategy.conv_impl or "xla")
  # min_unmasked_chunks=1: a 3- or 4-step budget runs its first chunk unmasked, so both forms are compared.
  runners = engine.Runners(
    lambda masked: engine.make_runner(recipe, strategy, 2, mesh, masked), 2, 1, compile_ahead=compile_ahead
  )
  batch = engine.train(runners, batch)
  if seen is not None:
    seen.update(used=dict(runners.used), ahead=dict(runners.ahead))
  return jax.tree.map(lambda x: np.asarray(x)[: batch.num_lanes], mesh_lib.to_host(batch.states))


def _max_difference(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def _assert_same_training(a, b):
  """Same lane, same training: parameters and BN statistics to 1e-5, optimiser state to 1e-3 relative.

  Batched and single matmuls may sum in different orders (float32 noise of ~1e-5 in a gradient); the
  momentum trace carries raw gradients, so it gets a tolerance relative to its size.
  """
  assert int(a.step) == int(b.step)
  assert _max_difference((a.params, a.batch_stats), (b.params, b.batch_stats)) < 1e-5
  for x, y in zip(jax.tree.leaves(a.opt_state), jax.tree.leaves(b.opt_state)):
    scale = max(float(np.max(np.abs(y))), 1e-6)
    assert float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) / scale < 1e-3


@pytest.fixture(scope="module")
def problem():
  return _problem(5)


@pytest.mark.parametrize("strategy", ["vmap", "vmap_xla", "map2", "loop"])
def test_each_lane_of_a_group_equals_its_solo_run(problem, strategy):
  together = _train(strategy, [0, 1, 2, 3, 4], problem)
  assert together.step.tolist() == [3, 4, 3, 4, 3], "each lane stops at its own budget"
  for i in (1, 4):
    alone = _train(strategy, [i], problem)
    _assert_same_training(jax.tree.map(lambda x: x[i], together), jax.tree.map(lambda x: x[0], alone))


def test_strategies_agree_with_each_other(problem):
  reference = _train("loop", [0, 1, 2], problem)
  for strategy in ("vmap", "vmap_xla"):  # im2col vs lax.conv: same maths, different summation order.
    assert _max_difference(reference.params, _train(strategy, [0, 1, 2], problem).params) < 1e-4


def test_training_moves_parameters(problem):
  _, _, _, states, _, _ = problem
  trained = _train("vmap", [0], problem)
  assert _max_difference(trained.params, jax.tree.map(lambda x: np.asarray(x)[None], states[0].params)) > 1e-3


def _parameter_copies(compiled_text, params):
  """How many copy instructions of the compiled program have the shape of a trainable conv kernel."""
  shapes = {",".join(map(str, x.shape)) for x in jax.tree.leaves(params) if x.ndim == 4}
  return sum(shape in shapes for shape in re.findall(r"= f32\[([\d,]*)\]\{[^}]*\} copy\(", compiled_text))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU compiler option")
def test_chunks_compile_without_most_per_step_parameter_copies(problem):
  c, frozen, data, states, keys, lane_data = problem
  chunk = functools.partial(engine._solo_chunk, engine_setup.make_recipe(c, NUM_CLASSES, "im2col"), 2, False)
  args = (states[0], frozen, engine.key_data(keys[:1])[0], data, lane_data[0], np.int32(2))
  plain = jax.jit(chunk, donate_argnums=(0,)).lower(*args).compile().as_text()
  ours = engine.compile_chunk(chunk).lower(*args).compile().as_text()
  assert _parameter_copies(ours, states[0].params) < _parameter_copies(plain, states[0].params)


def test_runners_skip_the_budget_check_only_where_no_lane_can_reach_its_budget():
  made = []
  runners = engine.Runners(lambda masked: made.append(masked) or ("masked" if masked else "unmasked"), num_steps=50)
  assert runners.for_chunk(np.array([240, 236])) == ("unmasked", 50)  # 4 whole chunks for every lane
  assert runners.for_chunk(np.array([90, 86])) == ("unmasked", 50)
  assert runners.for_chunk(np.array([40, 36])) == ("unmasked", 36)  # as far as every lane can go
  assert runners.for_chunk(np.array([4, 0])) == ("masked", 4)  # a finished lane must not move
  assert made == [False, True], "each form compiled once, on first use"
  assert runners.used == {"unmasked": 3, "masked": 1}
  short = engine.Runners(lambda masked: "masked" if masked else "unmasked", num_steps=50)
  assert short.for_chunk(np.array([60, 55])) == ("masked", 50), "one unmasked chunk is not worth a second compile"
  equal = engine.Runners(lambda masked: made.append(masked) or ("masked" if masked else "unmasked"), num_steps=50)
  # BioNIC's folds all train epochs x (train size // batch) steps: one program, last shorter chunk included.
  assert [equal.for_chunk(np.array([n, n])) for n in (256, 206, 156, 106, 56, 6)] == [("unmasked", 50)] * 5 + [
    ("unmasked", 6)
  ]
  assert equal.used == {"unmasked": 6, "masked": 0}


def test_one_compiled_chunk_runs_any_number_of_steps_up_to_its_length(problem):
  c, frozen, data, states, keys, lane_data = problem
  mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
  place = lambda: engine.LaneBatch.place(
    engine.stack(states[:2]), frozen, engine.key_data(keys[:2]), data, engine.stack_lane_data(lane_data[:2]), mesh
  )
  runner = engine.make_runner(engine_setup.make_recipe(c, NUM_CLASSES, "im2col"), engine.Strategy("vmap"), 4, mesh)
  batch = place()
  compiled = runner.lower(*batch.args(0)).compile()
  batch.states, metrics = compiled(*batch.args(1))
  batch.states, metrics = compiled(*batch.args(2))
  loss = np.asarray(metrics["loss"])
  assert np.isfinite(loss[:, :2]).all() and np.isnan(loss[:, 2:]).all(), "steps not run report NaN"
  in_one = place()
  in_one.states, _ = compiled(*in_one.args(3))
  assert mesh_lib.to_host(batch.states.step).tolist() == mesh_lib.to_host(in_one.states.step).tolist() == [3, 3]
  assert _max_difference(mesh_lib.to_host(batch.states.params), mesh_lib.to_host(in_one.states.params)) < 1e-6


@pytest.mark.parametrize("strategy", ["vmap", "map2"])
def test_a_chunk_program_traces_the_training_step_once(problem, strategy, monkeypatch):
  # The metric buffers' shapes come from the step's own trace, reused by the loop body, not from a second trace
  # (lowering 5 ResNet-18 lanes' chunk took 2.38 s with two traces, 1.79 s with one).
  c, frozen, data, states, keys, lane_data = problem
  traced = []
  monkeypatch.setattr(trainer, "train_step", lambda *a, _step=trainer.train_step: traced.append(1) or _step(*a))
  mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
  batch = engine.LaneBatch.place(
    engine.stack(states[:2]), frozen, engine.key_data(keys[:2]), data, engine.stack_lane_data(lane_data[:2]), mesh
  )
  for masked in (True, False):
    traced.clear()
    recipe = engine_setup.make_recipe(c, NUM_CLASSES, "im2col")
    runner = engine.make_runner(recipe, engine.Strategy.parse(strategy), 4, mesh, masked)
    runner.lower(*batch.args(2))
    assert len(traced) == 1, f"masked={masked}: the step was traced {len(traced)} times"


def test_autotune_skips_vmapped_lax_conv_only_for_per_lane_kernels_on_cpu(problem):
  c, frozen, data, states, keys, lane_data = problem
  mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
  batch = engine.LaneBatch.place(
    engine.stack(states[:2]), frozen, engine.key_data(keys[:2]), data, engine.stack_lane_data(lane_data[:2]), mesh
  )
  skip = autotune.known_losers(batch.states.params, backend="cpu")  # layer1's convs train per lane
  assert list(skip) == ["vmap_xla"]
  head_only = {"fc": batch.states.params["fc"]}  # a frozen trunk: shared kernels, an ordinary convolution
  assert autotune.known_losers(head_only, backend="cpu") == {}
  assert autotune.known_losers(batch.states.params, backend="gpu") == {}
  make = lambda s, n: engine.make_runner(engine_setup.make_recipe(c, NUM_CLASSES, s.conv_impl or "xla"), s, n, mesh)
  strategies = [engine.Strategy("vmap_xla"), engine.Strategy("vmap")]
  best, trials = autotune.choose(make, batch, strategies, chunk_steps=10, skip=skip, long_chunk=2)
  assert best.name == "vmap" and trials[0].error.startswith("not timed") and np.isnan(trials[0].step_seconds)


def test_strategy_names_parse_and_reject():
  assert engine.Strategy.parse("map4") == engine.Strategy("map", 4)
  assert engine.Strategy.parse("vmap_xla").conv_impl == "xla"
  for bad in ("map", "map0", "pmap", ""):
    with pytest.raises(ValueError, match="engine.strategy"):
      engine.Strategy.parse(bad)


def test_autotune_times_every_candidate_and_picks_one_that_ran(problem):
  c, frozen, data, states, keys, lane_data = problem
  mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
  batch = engine.LaneBatch.place(
    engine.stack(states[:3]), frozen, engine.key_data(keys[:3]), data, engine.stack_lane_data(lane_data[:3]), mesh
  )
  before = jax.tree.map(np.asarray, batch.states)
  make = lambda s, n: engine.make_runner(engine_setup.make_recipe(c, NUM_CLASSES, s.conv_impl or "xla"), s, n, mesh)
  best, trials = autotune.choose(make, batch, [engine.Strategy("vmap"), engine.Strategy("loop")], chunk_steps=5)
  assert [t.strategy for t in trials] == ["vmap", "loop"]
  assert all(t.step_seconds > 0 and t.chunk_seconds >= 0 and t.compile_seconds > 0 and not t.error for t in trials)
  assert best.name == min(trials, key=lambda t: t.seconds_per_step(5)).strategy
  assert _max_difference(before, jax.tree.map(np.asarray, batch.states)) == 0.0, "autotune works on copies"


def test_autotune_trains_the_study_states_when_it_can_rebuild_them():
  """No copy of every lane's state: the trials train the batch's own, which the study then places again."""
  seen, made = [], []

  def make(strategy, num_steps):
    def run(states, *args):
      seen.append((strategy.name, states["w"]))
      if strategy.name == "loop":  # Fails after the runner took (donated) its input.
        states["w"].delete()
        raise RuntimeError("out of memory")
      return {"w": states["w"] + int(args[-1])}, {"loss": np.zeros((2, num_steps))}

    return run

  def rebuild():
    assert batch.states is None, "the trained states are dropped before the study's are placed again"
    made.append({"w": jax.numpy.zeros(2)})
    batch.states = made[-1]

  batch = engine.LaneBatch({"w": jax.numpy.zeros(2)}, None, None, None, None, num_lanes=2)
  first = batch.states["w"]
  best, (loop, vmap) = autotune.choose(
    make, batch, [engine.Strategy("loop"), engine.Strategy("vmap")], chunk_steps=5, rebuild_states=rebuild
  )
  assert best.name == "vmap" and loop.error.startswith("RuntimeError") and not vmap.error
  assert seen[0] == ("loop", first), "the batch's own states, not a copy"
  assert len(made) == 2, "rebuilt once after the failed trial lost them, once at the end"
  assert next(w for name, w in seen if name == "vmap") is made[0]["w"]
  assert batch.states is made[1] and np.asarray(batch.states["w"]).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
  "candidates, fewest_steps_left, kept",
  [(["vmap"], 9, True), (["vmap"], 8, False), (["vmap", "loop"], 100, False)],
  ids=["winner-alone-trained-them", "a-lane-past-its-budget", "two-candidates-trained-them"],
)
def test_autotune_keeps_the_winners_steps_only_when_they_are_the_studys_own(candidates, fewest_steps_left, kept):
  """The trials run unmasked, here 1 (the first call, as the loop's compiles) + 1+1 + 3+3 steps. Kept, they are the
  study's first steps; else the states are rebuilt."""
  per_step = {"vmap": 1.0, "loop": 10.0}  # loop's steps add more: a run it trained cannot pass as vmap's

  def make(strategy, num_steps):
    def run(states, *args):
      steps = int(args[-1])
      return {"w": states["w"] + per_step[strategy.name] * steps}, {"loss": np.full((2, num_steps), float(steps))}

    return run

  rebuilt = []

  def rebuild():
    rebuilt.append(True)
    batch.states = {"w": jax.numpy.zeros(2)}

  batch = engine.LaneBatch({"w": jax.numpy.zeros(2)}, None, None, None, None, num_lanes=2)
  best, trials = autotune.choose(
    make,
    batch,
    [engine.Strategy.parse(name) for name in candidates],
    chunk_steps=5,
    rebuild_states=rebuild,
    fewest_steps_left=fewest_steps_left,
  )
  winner = next(t for t in trials if t.strategy == best.name)
  assert [t.trained_steps for t in trials] == [9] * len(candidates)
  assert winner.kept == kept and rebuilt == ([] if kept else [True])
  assert np.asarray(batch.states["w"]).tolist() == ([9.0, 9.0] if kept else [0.0, 0.0])
  assert winner.losses.tolist() == [[1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]] * 2, "each call's steps, in order"
  assert "losses" not in winner.record() and winner.record()["kept"] == kept


def test_autotune_separates_per_chunk_from_per_step_cost_and_ranks_for_the_chunk_length():
  """A strategy with a large fixed cost per chunk (mapN's state copies) loses in short chunks, wins in long ones."""
  costs = {"vmap": (0.0, 0.05), "map2": (0.25, 0.015)}  # (seconds per chunk, seconds per step)

  def make(strategy, num_steps):
    per_chunk, per_step = costs[strategy.name]

    def run(states, *args):
      time.sleep(per_chunk + per_step * int(args[-1]))  # The last argument: this chunk's steps.
      return states, {"loss": np.zeros((2, num_steps))}

    return run

  batch = engine.LaneBatch({"w": np.zeros(2)}, None, None, None, None, num_lanes=2)
  strategies = [engine.Strategy("vmap"), engine.Strategy("map", 2)]
  best, trials = autotune.choose(make, batch, strategies, chunk_steps=50)
  assert best.name == "map2"
  vmap, map2 = trials
  assert abs(map2.chunk_seconds - 0.25) < 0.04 and abs(map2.step_seconds - 0.015) < 0.02
  assert vmap.chunk_seconds < 0.04 and abs(vmap.step_seconds - 0.05) < 0.02
  best, (_, map2) = autotune.choose(make, batch, strategies, chunk_steps=1)
  assert best.name == "vmap"
  assert map2.chunk_seconds == 0.0 and map2.step_seconds > 0.25, "over twice vmap's chunk: not timed further"
  with pytest.raises(ValueError, match="autotune_steps"):
    autotune.time_strategy(make, strategies[0], batch, 50, long_chunk=1)


def test_eight_devices_give_the_same_lanes_as_one():
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8
  assert report["lanes_sharded_over"] == 8 and report["padded_lanes"] == 8
  assert report["steps"] == [3, 4, 3, 4, 3]
  assert report["max_difference_8_vs_1"] < 1e-5, "parameters and BN statistics"
  assert report["max_difference_4_vs_1"] < 1e-5
  # Each batch split over 2 devices: XLA reduces gradients and BatchNorm statistics across them.
  assert report["data_parallel_mesh"] == {"lanes": 4, "data": 2}
  assert report["max_difference_data_parallel_vs_1"] < 1e-5


def _multi_device_report():
  problem = _problem(5)  # 5 lanes: divides neither 8 nor 4 devices.
  one = _train("vmap", range(5), problem, mesh_lib.make_mesh(devices=jax.devices()[:1]))
  eight_mesh = mesh_lib.make_mesh()
  eight = _train("vmap", range(5), problem, eight_mesh)
  four = _train("vmap", range(5), problem, mesh_lib.make_mesh(devices=jax.devices()[:4]))
  split_mesh = mesh_lib.make_mesh(data_parallel=2)  # 4 lane groups x 2 devices per batch
  split = _train("vmap", range(5), problem, split_mesh)
  print(
    json.dumps(
      {
        "devices": jax.device_count(),
        "lanes_sharded_over": eight_mesh.shape["lanes"],
        "padded_lanes": mesh_lib.padded_lane_count(5, eight_mesh),
        "max_difference_8_vs_1": _max_difference((one.params, one.batch_stats), (eight.params, eight.batch_stats)),
        "max_difference_4_vs_1": _max_difference((one.params, one.batch_stats), (four.params, four.batch_stats)),
        "steps": eight.step.tolist(),
        "data_parallel_mesh": dict(split_mesh.shape),
        "max_difference_data_parallel_vs_1": _max_difference(
          (one.params, one.batch_stats), (split.params, split.batch_stats)
        ),
      }
    )
  )


if __name__ == "__main__":
  _multi_device_report()


def test_the_last_chunks_program_compiled_ahead_trains_the_same_lanes(problem):
  """Budgets of 3 and 4 steps in chunks of 2: the masked form, needed for the last step, is compiled in the
  background during the unmasked chunks (2 steps, then the 1 both lanes still have) and gives exactly the states
  of compiling it on first use."""
  seen = {}
  ahead = _train("vmap", [0, 1], problem, compile_ahead=True, seen=seen)
  assert seen["used"] == {"unmasked": 2, "masked": 1} and seen["ahead"]["seconds"] > 0
  assert "error" not in seen["ahead"]
  plain = _train("vmap", [0, 1], problem)
  assert _max_difference(ahead.params, plain.params) == 0.0
  assert np.array_equal(ahead.step, plain.step) and ahead.step.tolist() == [3, 4]


def test_autotune_stops_timing_when_the_training_left_cannot_repay_a_trial():
  timed = [autotune.Trial("vmap", compile_seconds=10.0, step_seconds=0.5, chunk_seconds=0.0, seconds=20.0)]
  why = autotune.not_worth_timing(timed, 50, total_steps=100, backend="cpu")  # 50 s left: 20 % is 10 s < 20 s
  assert why.startswith("not timed") and "50 s" in why and "20 s" in why
  assert autotune.not_worth_timing(timed, 50, total_steps=1000, backend="cpu") == ""  # 500 s left: worth a trial
  assert autotune.not_worth_timing(timed, 50, total_steps=100, backend="gpu") == "", "gains can be large off CPU"
  assert autotune.not_worth_timing([], 50, total_steps=100, backend="cpu") == "", "the first candidate is timed"
  assert autotune.not_worth_timing(timed, 50, total_steps=None, backend="cpu") == ""
  # 150 s left: 20 % is 30 s, more than the vmap trial's 20 s, less than a mapN trial's twice that.
  why = autotune.not_worth_timing(timed, 50, total_steps=300, backend="cpu", strategy=engine.Strategy("map", 2))
  assert why.startswith("not timed") and "save at most 20 %" in why and "(40 s)" in why


def test_autotune_stops_timing_before_it_takes_more_than_its_share_of_the_study():
  timed = [autotune.Trial("vmap", compile_seconds=10.0, step_seconds=0.5, chunk_seconds=0.0, seconds=20.0)]
  loop = engine.Strategy("loop")
  # 150 s of training left: a 20 s trial could repay itself (20 % of 150 s is 30 s), but autotune would reach
  # 40 s of a 190 s study, more than 20 % of it.
  why = autotune.not_worth_timing(timed, 50, total_steps=300, backend="cpu", strategy=loop)
  assert why.startswith("not timed") and "to 40 s" in why and "190 s" in why
  # 200 s left: 40 s of a 240 s study is within its share.
  assert autotune.not_worth_timing(timed, 50, total_steps=400, backend="cpu", strategy=loop) == ""
  # What was spent on every trial counts, a failed one too.
  failed = autotune.Trial("map2", error="out of memory", seconds=30.0)
  assert autotune.not_worth_timing([*timed, failed], 50, total_steps=400, backend="cpu", strategy=loop) != ""
  assert autotune.not_worth_timing(timed, 50, total_steps=300, backend="gpu", strategy=loop) == ""
