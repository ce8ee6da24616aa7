"""The full-model path: a study arm's pending lanes trained end to end by the lane engine, with progress, periodic
checkpoints and resume (set-up and strategy choice from engine_setup.py)."""

from __future__ import annotations

import logging
import time

import jax
import numpy as np

from jaxcell import host_memory, progress
from jaxcell.training import checkpoints, divergence, engine, engine_setup, inference, trainer
from jaxcell.training import mesh as mesh_lib
from jaxcell.training.interface import ArmSetup, FitResult, PlanItem
from jaxcell.workdir import layout, records

log = logging.getLogger(__name__)


def _loss_logger(writer, lane_indices: list[int], every: int):
  """Writes each real lane's mean training loss over windows of `every` steps."""

  def log_losses(first_step: np.ndarray, losses: np.ndarray) -> None:
    for row, index in enumerate(lane_indices):
      for i in range(0, losses.shape[1], every):
        window = losses[row, i : i + every]
        window = window[~np.isnan(window)]
        if window.size:
          writer.write_scalars(int(first_step[row]) + i + window.size, {f"train_loss/lane_{index:04d}": window.mean()})

  return log_losses


def fit_lanes(arm: ArmSetup, labels: np.ndarray, workdir: str, plan: list[PlanItem], writer) -> FitResult:
  """Trains the lanes of `plan` of one study arm together, end to end with the lane engine -> FitResult.

  `writer` (a workdir.metric_writer.MetricWriter) gets the losses (TensorBoard and log.txt); the console shows a
  progress bar over the arm's steps."""
  c = arm.config
  num_classes = int(arm.model.num_classes)
  lanes = [lane for lane, _, _ in plan]
  ckpt, earlier = None, None
  if c.output.checkpoint:
    earlier = _earlier_group(workdir, [lane.index for lane in lanes])
    ckpt = checkpoints.Checkpointer(records.record_group(workdir, [lane.index for lane in lanes]))
    if ckpt.latest_step() is not None:
      log.info("Resuming %d lanes from checkpoint step %d", len(lanes), ckpt.latest_step())

  def lane_states():  # Host states, fresh or restored; made again after autotune has trained them.
    states = engine_setup.initial_states(arm, lanes)
    if ckpt is not None and ckpt.latest_step() is not None:
      return ckpt.restore_train_state(states)
    if earlier is not None:  # A run stopped between evaluations: these lanes were trained with others.
      return _restore_lanes(workdir, earlier, [lane.index for lane in lanes], states)
    return states

  mesh = mesh_lib.make_mesh(int(c.engine.data_parallel))
  batch = engine_setup.place_lanes(arm, lane_states(), labels, plan, mesh)
  host_memory.release_free_memory()  # The host copy (every lane's parameters and optimiser state), once placed.

  steps_before_chunk = mesh_lib.to_host(batch.states.step)[: batch.num_lanes]
  strategy, trials, chosen_by, autotuned = engine_setup.choose_strategy(
    c, num_classes, batch, mesh, rebuild_states=lambda: batch.place_states(lane_states())
  )
  start = time.perf_counter()
  recipe = engine_setup.make_recipe(c, num_classes, strategy.conv_impl)
  chunk = int(c.train.steps_per_chunk)
  runners = engine.Runners(
    lambda masked: engine.make_runner(recipe, strategy, chunk, mesh, masked),
    chunk,
    compile_ahead=c.engine.compile_ahead == "on"
    or (c.engine.compile_ahead == "auto" and jax.default_backend() != "cpu"),
  )
  if autotuned is not None:  # The winner's program, compiled and timed by autotune, trains the unmasked chunks.
    runners.compiled[False] = autotuned.runner
  record = _engine_record(strategy, trials, chosen_by, mesh, len(lanes))
  log.info(
    "Arm %s: training %d lanes with strategy %s on %d devices %s",
    arm.name,
    len(lanes),
    strategy.name,
    mesh.size,
    dict(mesh.shape),
  )

  log_losses = _loss_logger(writer, [lane.index for lane in lanes], max(1, int(c.output.log_every_steps)))
  chunks = 0
  diverged: dict[int, str] = {}

  def account(losses: np.ndarray) -> np.ndarray:
    """Checks and logs the losses [lanes, steps] of the steps since the last call -> the steps each lane took."""
    nonlocal steps_before_chunk
    steps_now = mesh_lib.to_host(batch.states.step)[: batch.num_lanes]
    taken = steps_now - steps_before_chunk
    for row, why in enumerate(divergence.reasons(losses, taken, float(c.train.divergence_loss), steps_before_chunk)):
      if why and row not in diverged:
        diverged[row] = why
        log.warning("Lane %s diverged: %s; it is stopped and left out of every analysis.", lanes[row].name, why)
    log_losses(steps_before_chunk, losses)  # NaN past each lane's steps: a chunk may be shorter than its buffer.
    steps_before_chunk = steps_now
    return taken

  if autotuned is not None and autotuned.kept:  # Autotune's timed steps were the study's first steps.
    account(autotuned.losses[: batch.num_lanes])
    record["autotune_steps_kept"] = autotuned.trained_steps

  def on_chunk(batch: engine.LaneBatch, metrics: dict) -> np.ndarray:
    nonlocal chunks
    chunks += 1
    taken = account(mesh_lib.to_host(metrics["loss"])[: batch.num_lanes])
    bar.set(engine.lane_steps_done(batch))
    if chunks == 1:
      log.info("First chunk (compile + %d steps) took %.1fs", int(np.max(taken)), time.perf_counter() - start)
    if ckpt and chunks % int(c.output.checkpoint_every_chunks) == 0:
      ckpt.save(int(steps_before_chunk.max()), _real_lanes_on_device(batch))
    return np.array([row in diverged for row in range(len(lanes))])

  steps = sum(steps for _, _, steps in plan)
  with progress.stage(f"train {arm.name}", total=steps, unit="steps", time_as="train") as bar:
    bar.set(engine.lane_steps_done(batch))  # Steps restored from a checkpoint.
    batch = engine.train(runners, batch, on_chunk)
  record["chunks"] = dict(runners.used)  # Chunks run without / with the per-step budget check.
  if "seconds" in runners.ahead:  # The masked form compiled in the background while unmasked chunks trained.
    record["masked_chunk_compiled_ahead_s"] = runners.ahead["seconds"]
  final = _real_lanes(batch)
  if ckpt:  # Lanes that all reached their budgets need no optimiser state any more.
    done = np.all(final.step >= mesh_lib.to_host(batch.lanes.total_steps)[: batch.num_lanes])
    on_device = _real_lanes_on_device(batch)
    ckpt.save(int(np.max(final.step)), checkpoints.finished(on_device) if done else on_device)
    ckpt.close()
  log.info("Trained %d lanes in %.1fs", len(lanes), time.perf_counter() - start)
  states = engine.unstack(final)
  predictor = inference.lane_predictor(arm.model, int(c.eval.batch_size), arm.frozen, arm.data, states)
  record["diverged_lanes"] = {lanes[row].index: why for row, why in diverged.items()}
  return FitResult(states, record, {arm.name: predictor}, diverged)


def _earlier_group(workdir: str, lane_indices: list[int]) -> tuple[str, list[int]] | None:
  """(folder, lanes) of a checkpoint group written by an earlier run that holds every one of these lanes."""
  wanted = set(lane_indices)
  for name, members in records.read_groups(workdir).items():
    if wanted < set(members):
      return name, members
  return None


def _restore_lanes(workdir: str, group: tuple[str, list[int]], lane_indices: list[int], states):
  """The states of `lane_indices` sliced out of an earlier, larger group's checkpoint (structure of `states`)."""
  name, members = group
  ckpt = checkpoints.Checkpointer(layout.checkpoints_dir(workdir) / name)
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct((len(members), *x.shape[1:]), x.dtype), states)
  restored, step = ckpt.restore_train_state(like), ckpt.latest_step()
  ckpt.close()
  rows = np.array([members.index(i) for i in lane_indices])
  log.info("Resuming %d lanes from the checkpoint of lanes %s (step %d)", len(lane_indices), members, step)
  finished = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(restored.opt_state))
  opt_state = states.opt_state if finished else jax.tree.map(lambda x: x[rows], restored.opt_state)
  return jax.tree.map(lambda x: x[rows], checkpoints.finished(restored)).replace(opt_state=opt_state)


def _real_lanes(batch: engine.LaneBatch) -> trainer.TrainState:
  return jax.tree.map(lambda x: x[: batch.num_lanes], mesh_lib.to_host(batch.states))


def _real_lanes_on_device(batch: engine.LaneBatch) -> trainer.TrainState:
  """The real lanes' states as (sharded) device arrays, for a checkpoint: the states themselves unless lanes were
  padded (then a slice, which is a copy)."""
  if batch.padded_lanes == batch.num_lanes:
    return batch.states
  return jax.tree.map(lambda x: x[: batch.num_lanes], batch.states)


def _engine_record(strategy, trials: list[dict], chosen_by: str, mesh, num_lanes: int) -> dict:
  """Which strategy ran, who chose it and why (the autotune trials, also when read from the cache), on what
  devices."""
  return {
    "path": "full_model",
    "strategy": strategy.name,
    "chosen_by": chosen_by,
    "lanes": num_lanes,
    "mesh": dict(mesh.shape),
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "processes": jax.process_count(),
    "autotune": trials,
  }
