"""A whole pretraining run: collection -> held-out split -> data-parallel training -> probe -> exported weights.

`run_pretraining(config, workdir)` is what `python -m jaxcell.pretrain` calls. Like a study it checks the config and
the data before writing anything, holds the workdir alone, logs to log.txt and TensorBoard, and resumes: a killed
run (even `kill -9`) re-run with the same command continues from its last checkpoint to the same weights.
The workdir ends with cellnet.npz, the backbone in jaxcell's converted-weights format, which a study starts from
with `transfer.weights='cellnet:<workdir>'`, and pretrain.json with the probe's scores.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time

import jax
import numpy as np

from jaxcell import progress, study, validation
from jaxcell.convert import weights_file
from jaxcell.data import loading
from jaxcell.pretraining import backbone, objectives, probe, steps
from jaxcell.training import augment as augment_lib
from jaxcell.training import checkpoints, mesh as mesh_lib, trainer
from jaxcell.workdir import layout, lock, metric_writer, records, storage

log = logging.getLogger(__name__)


def run_pretraining(config, workdir: str) -> dict:
  """Runs (or resumes) a pretraining and returns pretrain.json's record."""
  mesh_lib.maybe_initialize_distributed(bool(config.engine.distributed) or None, int(config.engine.distributed_timeout))
  validation.check_pretrain_config(config)
  p = config.pretrain
  mesh = steps.data_mesh()
  if p.batch_size % mesh.shape[mesh_lib.DATA]:
    raise ValueError(
      f"Invalid config: pretrain.batch_size={p.batch_size} must be a multiple of the {mesh.shape[mesh_lib.DATA]} "
      "devices it is split over."
    )
  dataset = loading.load_dataset(config.data, cache_dir=study.image_cache_dir(config, workdir), write_cache=False)
  train_idx, held_idx = probe.holdout_split(dataset.labels, float(p.holdout_fraction), int(config.seed))
  if len(train_idx) < 2:
    raise ValueError(f"{len(dataset)} images leave {len(train_idx)} to train on; pretraining needs a collection.")
  if config.engine.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", str(storage.as_path(config.engine.compilation_cache)))
  storage.as_path(workdir).mkdir(parents=True, exist_ok=True)
  with progress.quiet_unless(study.primary()), lock.held(workdir) if study.primary() else contextlib.nullcontext():
    handler = study.log_to_file(workdir)
    try:
      if records.check_config(workdir, config):
        log.info("Resuming the pretraining in %s", workdir)
      elif study.primary():
        records.write_config(workdir, config)
      return _pretrain(config, workdir, dataset, train_idx, held_idx, mesh)
    finally:
      logging.getLogger().removeHandler(handler)
      handler.close()


def _pretrain(config, workdir: str, dataset, train_idx: np.ndarray, held_idx: np.ndarray, mesh) -> dict:
  p, start = config.pretrain, time.time()
  channels = objectives.input_channels(p.objective, int(config.data.channels))
  mean, std = backbone.input_normalisation(p.objective, dataset.images[train_idx])
  model = backbone.build_model(config, dataset.num_classes)
  setup = steps.Setup(
    model=model,
    tx=steps.make_optimizer(p),
    objective=p.objective,
    batch_size=int(p.batch_size),
    augment=augment_lib.AugmentConfig.from_config(config.augment),
    temperature=float(p.temperature),
    batch_sharding=steps.batch_sharding(mesh),
  )
  data = trainer.DeviceData(images=dataset.images, labels=dataset.labels.astype(np.int32), mean=mean, std=std)
  data, device_idx = mesh_lib.put_replicated((data, train_idx.astype(np.int32)), mesh)
  key = jax.random.key(int(config.seed))
  key_data = mesh_lib.put_replicated(np.asarray(jax.random.key_data(jax.random.fold_in(key, 2))), mesh)
  state = steps.init_state(setup, jax.random.fold_in(key, 1), (*dataset.images.shape[1:3], channels))
  ckpt = checkpoints.Checkpointer(layout.checkpoints_dir(workdir) / layout.PRETRAIN_CHECKPOINT)
  resumed = ckpt.latest_step() is not None
  record = records.read_pretrain(workdir) if resumed else {}
  if resumed:
    state = ckpt.restore(jax.device_get(state))
    log.info("Resumed at step %d of %d", int(state.step), p.num_steps)
  state = mesh_lib.put_replicated(jax.device_get(state), mesh)
  record = {
    **_describe(config, dataset, channels, mean, std, train_idx, held_idx),
    "probe": record.get("probe", []),
    "loss": record.get("loss", []),
    "seconds": record.get("seconds", 0.0),
  }
  events = storage.LocalMirror(layout.path(workdir, layout.TENSORBOARD))
  writer = metric_writer.MetricWriter(events, just_logging=not study.primary())
  runners, step = {}, int(state.step)
  if step == 0 and not record["probe"]:  # The starting point; a resumed run has it already.
    _probe(config, model, state, dataset, held_idx, mean, std, record, writer)
  with progress.stage("pretrain", total=int(p.num_steps), unit="steps") as bar:
    bar.set(step)
    while step < p.num_steps:
      length = min(int(p.steps_per_chunk), int(p.num_steps) - step)
      if length not in runners:
        runners[length] = steps.compile_chunk(setup, length, mesh)
      state, metrics = runners[length](state, key_data, data, device_idx)
      losses = np.asarray(metrics["loss"])
      if not np.all(np.isfinite(losses)):
        raise FloatingPointError(
          f"pretraining diverged at step {step + int(np.argmin(np.isfinite(losses)))} (loss {losses}); lower "
          "pretrain.learning_rate or raise pretrain.warmup_steps."
        )
      before, step = step, int(state.step)
      bar.update(step - before)
      if _crossed(before, step, p.log_every_steps) or step == p.num_steps:
        accuracy = float(np.asarray(metrics["accuracy"])[-1])
        record["loss"].append({"step": step, "loss": float(losses[-1]), "accuracy": accuracy})
        writer.write_scalars(step, {"pretrain/loss": float(losses[-1]), "pretrain/accuracy": accuracy})
        log.info("step %d: loss %.4f, accuracy %.3f", step, losses[-1], accuracy)
      if _crossed(before, step, p.probe_every_steps) or step == p.num_steps:
        _probe(config, model, state, dataset, held_idx, mean, std, record, writer)
      if _crossed(before, step, p.checkpoint_every_steps) or step == p.num_steps:
        ckpt.save(step, state)
        record["seconds"] = round(record["seconds"] + time.time() - start, 2)
        start = time.time()
        if study.primary():
          records.write_pretrain(workdir, record)
        writer.flush()
        events.sync()
  ckpt.close()
  if study.primary():
    _export_weights(workdir, config, state, record)
    records.write_pretrain(workdir, record)
  writer.close()
  events.close()
  progress.note(f"Pretrained {p.num_steps} steps; weights in {layout.path(workdir, layout.PRETRAINED_WEIGHTS)}")
  return record


def _crossed(before: int, after: int, every: int) -> bool:
  return after // int(every) > before // int(every)


def _describe(config, dataset, channels, mean, std, train_idx, held_idx) -> dict:
  return {
    "objective": config.pretrain.objective,
    "model": config.model.to_dict(),
    "compute_dtype": backbone.compute_dtype(config),
    "input_channels": channels,
    "data_channels": int(config.data.channels),
    "image_size": int(dataset.images.shape[1]),
    "class_names": list(dataset.class_names),
    "head_outputs": objectives.num_outputs(
      config.pretrain.objective, int(config.data.channels), dataset.num_classes, int(config.pretrain.projection_dim)
    ),
    "normalization": {"mean": mean.tolist(), "std": std.tolist()},
    "train_images": int(len(train_idx)),
    "held_out_images": int(len(held_idx)),
    "devices": jax.device_count(),
  }


def _probe(config, model, state, dataset, held_idx, mean, std, record, writer) -> None:
  """The held-out linear probe at the current step, appended to the record (and TensorBoard)."""
  p = config.pretrain
  variables = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
  images = dataset.images[held_idx]
  feats = probe.features(model, variables, images, mean, std, p.objective, batch_size=64)
  score = probe.probe_accuracy(feats, dataset.labels[held_idx], dataset.num_classes, float(p.probe_l2))
  score = {"step": int(state.step), **score}
  record["probe"].append(score)
  if score["accuracy"] is not None:
    writer.write_scalars(score["step"], {"probe/accuracy": score["accuracy"]})
    log.info("probe at step %d: accuracy %.3f (chance %.3f)", score["step"], score["accuracy"], score["chance"])


def _export_weights(workdir: str, config, state, record: dict) -> None:
  """cellnet.npz: the backbone (and its pretraining head, never loaded by transfer) in convert's format."""
  variables = {"params": jax.device_get(state.params)}
  if jax.tree.leaves(state.batch_stats):
    variables["batch_stats"] = jax.device_get(state.batch_stats)
  variables = jax.tree.map(lambda x: np.asarray(x, np.float32), variables)
  metadata = {
    "architecture": config.model.name,
    "source": f"jaxcell pretraining ({config.pretrain.objective}, {config.pretrain.num_steps} steps) in {workdir}",
    "num_classes": record["head_outputs"],
    "normalization": record["normalization"],
    "input_size": record["image_size"],
    "input_channels": record["input_channels"],
    "objective": config.pretrain.objective,
  }
  with tempfile.TemporaryDirectory() as folder:
    local = str(storage.as_path(folder) / layout.PRETRAINED_WEIGHTS)
    weights_file.save_weights(local, variables, metadata)
    storage.copy_file(local, layout.path(workdir, layout.PRETRAINED_WEIGHTS))
