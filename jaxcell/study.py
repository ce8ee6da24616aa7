"""A study end to end: data -> splits -> lanes -> train -> evaluate -> workdir outputs.

`run_study(config, workdir)` is what `python -m jaxcell.main` calls. It is resumable: lanes already in
`results.csv` are skipped and a lane interrupted mid-training continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers

from jaxcell import config as config_lib
from jaxcell import models
from jaxcell.data import dataset as dataset_lib
from jaxcell.data import normalization
from jaxcell.data import splits as splits_lib
from jaxcell.evaluation import metrics as metrics_lib
from jaxcell.evaluation import predict as predict_lib
from jaxcell.reporting import confusion, learning_curves, plots, predictions, results_table, summary
from jaxcell.training import checkpoints, fit, optim, trainer
from jaxcell.training import lanes as lanes_lib
from jaxcell.training import mesh as mesh_lib

log = logging.getLogger(__name__)

# Metrics written to TensorBoard per lane (every metric is in results.csv).
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr")


@dataclasses.dataclass
class Study:
  """Everything shared by the lanes of one study, built once."""

  config: config_lib.ConfigDict
  workdir: str
  dataset: dataset_lib.Dataset
  splits: splits_lib.Splits
  lanes: list[lanes_lib.Lane]
  data: trainer.DeviceData
  model: object
  init: object  # Compiled model.init(key) -> variables.
  frozen: dict  # Frozen parameters, identical for every lane (initialised from the study seed).
  engine_record: dict | None = None  # What the lane engine ran (strategy, devices); see engine.json.


def prepare(config, workdir: str) -> Study:
  """Loads data, splits it, and builds the model and the study's lanes."""
  dataset = dataset_lib.load_dataset(config.data, cache_dir=os.path.join(workdir, "cache"))
  dataset_lib.write_skipped_report(dataset.skipped, os.path.join(workdir, "skipped_files.csv"))
  if dataset.skipped:
    log.warning("%d files were skipped; see skipped_files.csv", len(dataset.skipped))
  p = config.protocol
  splits = splits_lib.make_splits(
    dataset.labels,
    holdout_fraction=p.holdout_fraction,
    num_folds=p.num_folds,
    num_repeats=p.num_repeats,
    seed=config.seed,
    groups=dataset.groups,
    max_per_class=p.max_per_class,
    reshuffle_folds=p.reshuffle_folds,
    given_split=dataset.given_split,
    class_names=dataset.class_names,
  )
  predictions.write_splits(
    os.path.join(workdir, "splits.csv"), dataset.paths, dataset.labels, dataset.class_names, splits
  )
  mean, std = normalization.normalization_constants(config.data.normalization, dataset.images[splits.cv_pool])
  data = trainer.DeviceData(
    images=jnp.asarray(dataset.images),
    labels=jnp.asarray(dataset.labels, jnp.int32),
    mean=jnp.asarray(mean),
    std=jnp.asarray(std),
  )
  model = models.build_model(config.model, dataset.num_classes)
  init = fit.make_init(model, dataset.images.shape[1:])
  frozen = fit.shared_frozen(init, config.seed, config.train.frozen)
  lanes = lanes_lib.make_lanes(config, splits.num_folds)
  log.info(
    "Study: %d images, %d classes, holdout %d, %d folds -> %d lanes",
    len(dataset),
    dataset.num_classes,
    len(splits.holdout),
    splits.num_folds,
    len(lanes),
  )
  return Study(config, workdir, dataset, splits, lanes, data, model, init, frozen)


def evaluate_lane(
  study: Study, lane: lanes_lib.Lane, state: trainer.TrainState, test_idx: np.ndarray, predict
) -> list[dict]:
  """Scores a trained lane on its CV test fold and the global holdout; writes per-image predictions."""
  variables = {"params": optim.merge_params(state.params, study.frozen), "batch_stats": state.batch_stats}
  ds = study.dataset
  fields = {
    "arm": lane.arm,
    "lane": lane.index,
    "seed": lane.seed,
    "repeat": lane.repeat,
    "fold": lane.fold,
    "n_per_class": lane.n_per_class,
  }
  rows = []
  for split, idx in (("test", test_idx), ("holdout", study.splits.holdout)):
    if len(idx) == 0:
      continue
    probs = predict(variables, study.data, idx)
    row = dict(fields, split=split, num_images=len(idx))
    row.update(metrics_lib.classification_metrics(ds.labels[idx], probs, ds.class_names))
    rows.append(row)
    matrix = metrics_lib.confusion_matrix(ds.labels[idx], probs.argmax(axis=1), ds.num_classes)
    confusion.append_confusion(
      os.path.join(study.workdir, "confusion_matrices.csv"), fields, split, matrix, ds.class_names
    )
    predictions.append_predictions(
      os.path.join(study.workdir, f"predictions_{split}.csv"),
      predictions.prediction_rows(fields, [ds.paths[i] for i in idx], ds.labels[idx], probs, ds.class_names),
    )
  return rows


def run_lanes(study: Study) -> None:
  """Trains every lane not yet in results.csv with the lane engine, then evaluates and records each."""
  c, workdir = study.config, study.workdir
  results_path = os.path.join(workdir, "results.csv")
  done = {r["lane"] for r in results_table.read_rows(results_path)} if os.path.exists(results_path) else set()
  for name in ("predictions_test.csv", "predictions_holdout.csv", "confusion_matrices.csv"):
    predictions.keep_lanes(os.path.join(workdir, name), done)  # Rows of lanes interrupted mid-write.
  labels = study.dataset.labels
  plan, test_sets, steps_before, total = [], {}, 0, 0
  for lane in study.lanes:
    train_idx, test_sets[lane.index] = lanes_lib.lane_indices(lane, study.splits, labels)
    steps = fit.total_steps(c, len(train_idx))
    total += steps
    if lane.index in done:
      steps_before += steps
      continue
    missing = sorted(set(range(study.dataset.num_classes)) - set(labels[train_idx].tolist()))
    if missing:
      log.warning("Lane %s trains without classes %s", lane.name, [study.dataset.class_names[m] for m in missing])
    plan.append((lane, train_idx, steps))
  if not plan:
    log.info("Every lane is already trained and evaluated.")
    return
  if c.output.checkpoint and study.frozen:  # Shared by every lane: saved once, beside the lanes.
    frozen_ckpt = checkpoints.Checkpointer(checkpoints.frozen_directory(workdir))
    if frozen_ckpt.latest_step() is None:
      frozen_ckpt.save(0, study.frozen)
    frozen_ckpt.close()
  writer = metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"), asynchronous=False)
  states = fit.fit_lanes(study, plan, writer, steps_before, total)
  predict = predict_lib.make_predictor(study.model, int(c.eval.batch_size))
  for (lane, _, _), state in zip(plan, states):
    rows = evaluate_lane(study, lane, state, test_sets[lane.index], predict)
    results_table.append_rows(results_path, rows)  # Written last: a lane in results.csv is complete.
    for row in rows:
      writer.write_scalars(lane.index, {f"{row['split']}/{k}": row[k] for k in HEADLINE_METRICS})
    scores = ", ".join(f"{r['split']} bal.acc {r['balanced_accuracy']:.3f}" for r in rows)
    log.info("Lane %d/%d %s: %s", lane.index + 1, len(study.lanes), lane.name, scores)
  writer.flush()
  writer.close()


def write_reports(study: Study, seconds: float) -> None:
  """summary.md and boxplot.png from results.csv."""
  c, ds = study.config, study.dataset
  rows = results_table.read_rows(os.path.join(study.workdir, "results.csv"))
  counts = ", ".join(f"{n} {k}" for n, k in zip(ds.class_counts.tolist(), ds.class_names))
  source = c.data.root if c.data.source == "folder" else f"synthetic cells (seed {c.data.synthetic.seed})"
  setup = [
    f"Dataset: {source}: {len(ds)} images at {c.data.image_size} px, {ds.num_classes} classes ({counts}); "
    f"{len(ds.skipped)} files skipped.",
    f"Protocol: global holdout {len(study.splits.holdout)} images ({c.protocol.holdout_fraction:.0%} per class); "
    f"{study.splits.num_folds} folds x {c.protocol.num_repeats} repeats x {c.protocol.num_seeds} seeds; "
    f"{len(study.lanes)} models.",
    f"Model: {c.model.name} (width {c.model.width}, head {c.model.head}, conv {c.model.conv_impl}); "
    f"frozen: {c.train.frozen or 'nothing'}.",
    f"Training: {c.train.optimizer}, lr {c.train.learning_rate}, {c.train.schedule} schedule, batch "
    f"{c.train.batch_size}, {'class-balanced' if c.train.class_balanced else 'uniform'} sampling.",
    f"Run time: {seconds:.0f} s on {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}).",
    f"Engine: {_engine_line(study)}",
  ]
  path = os.path.join(study.workdir, "summary.md")
  summary.write_summary_markdown(
    path,
    rows,
    title="jaxcell study summary",
    setup_lines=setup,
    num_resamples=int(c.eval.bootstrap_resamples),
    seed=int(c.seed),
  )
  with open(path, "a") as f:
    f.write("\n" + confusion.summed_markdown(os.path.join(study.workdir, "confusion_matrices.csv"), ds.class_names))
  plots.plot_boxplots(
    rows,
    c.eval.box_metric,
    os.path.join(study.workdir, "boxplot.png"),
    num_classes=ds.num_classes,
    title=f"{c.eval.box_metric} per model",
  )
  write_learning_curves(study, rows)


def _engine_line(study: Study) -> str:
  record = study.engine_record
  if record is None:
    return "nothing trained in this run (results from an earlier run)."
  return (
    f"{record['lanes']} models trained together with strategy '{record['strategy']}' "
    f"(chosen by {record['chosen_by']}) on mesh {record['mesh']}; details in engine.json."
  )


def write_learning_curves(study: Study, rows: list[dict]) -> None:
  """learning_curve_<metric>.png and learning_curve.csv when lanes cover two or more training-set sizes."""
  tables = []
  for metric in HEADLINE_METRICS:
    path = os.path.join(study.workdir, f"learning_curve_{metric}.png")
    if not learning_curves.plot_learning_curves(rows, metric, path, num_classes=study.dataset.num_classes):
      if len(study.config.protocol.n_per_class) > 1:
        log.warning("No learning curve: fewer than two training-set sizes have results.")
      return
    tables += learning_curves.learning_curve_table(rows, metric)
  learning_curves.write_learning_curve_csv(os.path.join(study.workdir, "learning_curve.csv"), tables)


def _write_config(config, workdir: str) -> None:
  """Stores the resolved config; refuses to resume a workdir that holds a different study."""
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() != text:
        raise ValueError(
          f"{workdir} holds a study with a different config (see {path}). Use a new --workdir, "
          "or delete that folder to start over."
        )
    log.info("Resuming the study in %s", workdir)
  with open(path, "w") as f:
    f.write(text)


def _not_orbax_chatter(record: logging.LogRecord) -> bool:
  """Orbax logs several INFO lines per checkpoint; keep its warnings, drop the rest."""
  return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def _log_to_file(workdir: str) -> logging.Handler:
  handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  handler.addFilter(_not_orbax_chatter)
  root = logging.getLogger()
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  for other in root.handlers:  # Also the console (absl's handler under `python -m jaxcell.main`).
    if _not_orbax_chatter not in other.filters:
      other.addFilter(_not_orbax_chatter)
  return handler


def run_study(config, workdir: str) -> Study:
  """Runs (or resumes) a whole study and writes every output into `workdir`."""
  config_lib.validate(config)
  mesh_lib.maybe_initialize_distributed(bool(config.engine.distributed) or None)
  if config.engine.compilation_cache:  # Re-runs and resumed studies skip most compilation.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.engine.compilation_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  os.makedirs(workdir, exist_ok=True)
  handler = _log_to_file(workdir)
  try:
    _write_config(config, workdir)
    start = time.time()
    study = prepare(config, workdir)
    run_lanes(study)
    write_reports(study, time.time() - start)
    log.info("Done in %.0f s; outputs in %s", time.time() - start, workdir)
    return study
  finally:
    logging.getLogger().removeHandler(handler)
    handler.close()
