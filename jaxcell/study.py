"""A study end to end: data -> splits -> lanes -> train -> evaluate -> workdir outputs.

`run_study(config, workdir)` is what `python -m jaxcell.main` calls. It is resumable: lanes already in
`results.csv` are skipped and a lane interrupted mid-training continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcell import arms as arms_lib
from jaxcell import progress
from jaxcell import config as config_lib
from jaxcell import validation
from jaxcell.analysis import purification
from jaxcell.data import dataset as dataset_lib
from jaxcell.data import cache as image_cache
from jaxcell.data import duplicates
from jaxcell.data import loading
from jaxcell.data import splits as splits_lib
from jaxcell.evaluation import metrics as metrics_lib
from jaxcell.reporting import study_report
from jaxcell.training import engine_setup, fit, interface
from jaxcell.training import lanes as lanes_lib
from jaxcell.training import mesh as mesh_lib
from jaxcell.workdir import confusion, layout, lock, metric_writer, predictions, records, results, storage

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Study:
  """Everything shared by the lanes of one study, built once."""

  config: config_lib.ConfigDict
  workdir: str
  dataset: dataset_lib.Dataset
  splits: splits_lib.Splits
  arms: dict[str, arms_lib.Arm]
  lanes: list[lanes_lib.Lane]
  engine_records: dict = dataclasses.field(default_factory=dict)  # Arm -> what the lane engine ran (engine.json).


def check_inputs(config, workdir: str) -> tuple[dict, dataset_lib.Dataset, splits_lib.Splits]:
  """Everything that can be checked before the workdir is touched: every config field and arm, the data (decoded,
  or read from the workdir's cache; nothing written) and the splits it allows. Returns (arm configs, dataset,
  splits); raises ValueError with what to fix."""
  validation.check_config(config)
  arm_configs = arms_lib.arm_configs(config)
  dataset = loading.load_dataset(config.data, cache_dir=image_cache_dir(config, workdir), write_cache=False)
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
  return arm_configs, dataset, splits


# Where a bucket workdir's hosts cache decoded images: the cache is keyed by the data config, so studies share it.
HOST_IMAGE_CACHE = "~/.cache/jaxcell/images"


def image_cache_dir(config, workdir: str) -> str | None:
  """The local folder of the decoded-image cache (data.cache_dir), or None for no cache."""
  setting = config.data.cache_dir
  if setting == "auto":
    setting = layout.path(workdir, layout.CACHE) if storage.is_local(workdir) else HOST_IMAGE_CACHE
  return storage.local_path(setting) if setting else None


def prepare(config, workdir: str, arm_configs: dict, dataset: dataset_lib.Dataset, splits: splits_lib.Splits) -> Study:
  """Records the checked inputs in the workdir and builds every arm's model and the study's lanes."""
  if primary():
    image_cache.save(dataset)  # Read with write_cache=False in check_inputs (synthetic data have no cache).
    records.write_skipped_report(dataset.skipped, layout.path(workdir, layout.SKIPPED))
    records.write_splits(workdir, dataset.paths, dataset.labels, dataset.class_names, splits)
    _report_duplicates(config, workdir, dataset)
  if dataset.skipped:
    log.warning("%d files were skipped; see skipped_files.csv", len(dataset.skipped))
  images = jnp.asarray(dataset.images)  # On device once, shared by every arm.
  cache_dir = image_cache_dir(config, workdir) if primary() else None
  arms = {
    name: arms_lib.prepare_arm(name, c, dataset, splits, images, cache_dir, config.data)
    for name, c in arm_configs.items()
  }
  if config.purify.retrain:
    first = next(iter(arms))
    arms[arms_lib.purified_name(first)].purify_from = first
  lanes = lanes_lib.make_lanes(arm_configs, splits.num_folds)
  if primary():  # What prediction on new images needs.
    normalisation = {name: (arm.data.mean, arm.data.std) for name, arm in arms.items()}
    source = loading.source_format(config.data, dataset)
    sizes = {name: {lane.index: lane.n_per_class for lane in lanes if lane.arm == name} for name in arms}
    shapes = {name: arm.data.images.shape[1:] for name, arm in arms.items()}
    records.write_study(workdir, dataset.class_names, dataset.images.shape[1:], normalisation, source, sizes, shapes)
  log.info(
    "Study: %d images, %d classes, holdout %d, %d folds, %d arm(s) -> %d lanes",
    len(dataset),
    dataset.num_classes,
    len(splits.holdout),
    splits.num_folds,
    len(arms),
    len(lanes),
  )
  return Study(config, workdir, dataset, splits, arms, lanes)


def _report_duplicates(config, workdir: str, dataset: dataset_lib.Dataset) -> None:
  """duplicates.csv and a warning per group of byte-identical images (image folders only)."""
  source = config.data.source == "folder"
  groups = duplicates.find_duplicates(config.data.root, dataset, config.data.channel_pattern) if source else []
  records.write_duplicates(workdir, groups)
  for group in groups:
    log.warning("Duplicate images (%s): %s", group.kind, duplicates.describe(group))
  if groups:
    log.warning("%d groups of byte-identical images; see duplicates.csv", len(groups))


def primary() -> bool:
  """Whether this process writes the study's files. In a multi-host job every process trains (the compiled steps
  span all devices) but only process 0 writes results, reports and logs; the workdir must be on a shared disk,
  which orbax checkpoints (written by every process together) need as well."""
  return jax.process_index() == 0


def evaluate_lane(study: Study, arm_name: str, lane: lanes_lib.Lane, test_idx: np.ndarray, probs_of) -> list[dict]:
  """Scores a trained lane on its CV test fold and the global holdout; writes per-image predictions.

  `probs_of(idx)` gives the lane's class probabilities for images idx; rows are recorded under `arm_name`. A lane
  whose probabilities are not finite (weights that overflowed without a non-finite loss) is recorded as diverged,
  with no prediction rows."""
  ds = study.dataset
  fields = _lane_fields(arm_name, lane)
  splits = _evaluated_splits(study, test_idx)
  if not splits:
    return []
  # Every split in one call: the predictor's fixed-size batches pad the images once, not once per split.
  every = probs_of(np.concatenate([idx for _, idx in splits]))
  ends = np.cumsum([len(idx) for _, idx in splits])[:-1]
  scored = [(split, idx, probs) for (split, idx), probs in zip(splits, np.split(every, ends))]
  if not all(np.isfinite(probs).all() for _, _, probs in scored):
    log.warning("Lane %s (%s) predicts non-finite probabilities: recorded as diverged.", lane.name, arm_name)
    return diverged_rows(study, arm_name, lane, test_idx)
  rows = []
  for split, idx, probs in scored:
    row = dict(fields, split=split, num_images=len(idx), status=results.OK)
    row.update(metrics_lib.classification_metrics(ds.labels[idx], probs, ds.class_names))
    rows.append(row)
    if not primary():
      continue
    matrix = metrics_lib.confusion_matrix(ds.labels[idx], probs.argmax(axis=1), ds.num_classes)
    confusion.append_confusion(layout.path(study.workdir, layout.CONFUSION), fields, split, matrix, ds.class_names)
    predictions.append_predictions(
      layout.predictions(study.workdir, split),
      predictions.prediction_rows(fields, [ds.paths[i] for i in idx], ds.labels[idx], probs, ds.class_names),
    )
  return rows


def diverged_rows(study: Study, arm_name: str, lane: lanes_lib.Lane, test_idx: np.ndarray) -> list[dict]:
  """results.csv rows of a lane that diverged: status 'diverged', every metric NaN, no per-image predictions."""
  nan = metrics_lib.nan_metrics(study.dataset.class_names)
  return [
    dict(_lane_fields(arm_name, lane), split=split, num_images=len(idx), status=results.DIVERGED, **nan)
    for split, idx in _evaluated_splits(study, test_idx)
  ]


def _evaluated_splits(study: Study, test_idx: np.ndarray) -> list[tuple[str, np.ndarray]]:
  """(split name, dataset indices) a lane is scored on: its CV test fold and the global holdout, where not empty."""
  splits = ((layout.CV_TEST_SPLIT, test_idx), (layout.HOLDOUT_SPLIT, study.splits.holdout))
  return [(split, idx) for split, idx in splits if len(idx)]


def _lane_fields(arm_name: str, lane: lanes_lib.Lane) -> dict:
  return {
    "arm": arm_name,
    "lane": lane.index,
    "seed": lane.seed,
    "repeat": lane.repeat,
    "fold": lane.fold,
    "n_per_class": lane.n_per_class,
  }


def run_lanes(study: Study) -> None:
  """Trains every lane not yet in results.csv with the lane engine (one group per arm), then evaluates each."""
  workdir = study.workdir
  results_path = layout.path(workdir, layout.RESULTS)
  done = {r["lane"] for r in results.read_rows(results_path)} if results_path.exists() else set()
  per_image = [*(layout.predictions(workdir, s) for s in layout.SPLIT_NAMES), layout.path(workdir, layout.CONFUSION)]
  for path in per_image:
    if primary():
      predictions.keep_lanes(path, done)  # Rows of lanes interrupted mid-write.
  labels = study.dataset.labels
  lane_sets = {lane.index: lanes_lib.lane_indices(lane, study.splits, labels) for lane in study.lanes}
  if all(lane.index in done for lane in study.lanes):
    log.info("Every lane is already trained and evaluated.")
    return
  events = storage.LocalMirror(layout.path(workdir, layout.TENSORBOARD))  # The event writer writes local files.
  writer = metric_writer.MetricWriter(events, just_logging=not primary())
  for name, arm in study.arms.items():
    plan = _plan(study, arm, done, lane_sets)
    if not plan:
      continue
    result = fit.fit_arm(arm, labels, workdir, plan, study.splits.cv_pool, writer)
    study.engine_records[name] = result.record
    if primary():
      records.write_engine(workdir, study.engine_records)
    with progress.stage(f"evaluate {name}", total=len(plan), unit="models", time_as="evaluate") as bar:
      _evaluate_plan(study, plan, result, lane_sets, writer, results_path, bar)
    writer.flush()
    events.sync()
  writer.close()
  events.close()


def _evaluate_plan(study: Study, plan, result, lane_sets, writer, results_path: str, bar) -> None:
  """Scores each trained lane of an arm (and its other predictors, e.g. LSR probes); results.csv last."""
  for position, (lane, _, _) in enumerate(plan):
    rows = []
    test_idx = lane_sets[lane.index][1]
    for recorded_as, predictor in result.predictors.items():  # The arm's models, then e.g. its LSR probes.
      if position in result.diverged:
        rows += diverged_rows(study, recorded_as, lane, test_idx)
      else:
        rows += evaluate_lane(study, recorded_as, lane, test_idx, lambda idx: predictor(position, idx))
    if primary():
      results.append_rows(results_path, rows)  # Written last: a lane in results.csv is complete.
    for row in rows:
      writer.write_scalars(
        lane.index, {f"{row['arm']}/{row['split']}/{k}": row[k] for k in study_report.HEADLINE_METRICS}
      )
    scores = ", ".join(f"{r['arm']} {r['split']} bal.acc {r['balanced_accuracy']:.3f} ({r['status']})" for r in rows)
    log.info("Lane %d/%d %s: %s", lane.index + 1, len(study.lanes), lane.name, scores)
    bar.update()


def _plan(study: Study, arm: arms_lib.Arm, done: set[int], lane_sets: dict[int, tuple]) -> list[interface.PlanItem]:
  """[(lane, train indices, steps)] of the arm's lanes still to train; a purified arm drops flagged images.

  `lane_sets` maps a lane index to its (train, test) indices (lanes.lane_indices)."""
  labels, names = study.dataset.labels, study.dataset.class_names
  flagged = _flagged_images(study, arm.purify_from) if arm.purify_from else None
  plan = []
  for lane in study.lanes:
    if lane.arm != arm.name or lane.index in done:
      continue
    train_idx = lane_sets[lane.index][0]
    if flagged is not None:
      train_idx = train_idx[~np.isin(train_idx, flagged)]
    missing = sorted(set(range(study.dataset.num_classes)) - set(labels[train_idx].tolist()))
    if missing:
      log.warning("Lane %s trains without classes %s", lane.name, [names[m] for m in missing])
    plan.append((lane, train_idx, engine_setup.total_steps(arm.config, len(train_idx))))
  return plan


def _flagged_images(study: Study, source_arm: str) -> np.ndarray:
  """Dataset indices that confident learning flags from `source_arm`'s out-of-fold predictions (written to CSV)."""
  path = layout.predictions(study.workdir, layout.CV_TEST_SPLIT)
  largest = layout.largest_size(lane.n_per_class for lane in study.lanes if lane.arm == source_arm)
  try:
    oof = predictions.read_oof_predictions(path, arm=source_arm, n_per_class=largest)
  except (OSError, ValueError) as e:
    raise ValueError(f"purify.retrain needs out-of-fold predictions of arm {source_arm!r}: {e}") from None
  index = {p: i for i, p in enumerate(study.dataset.paths)}
  names = list(study.dataset.class_names)
  if oof.class_names != names:
    raise ValueError(f"{path} has classes {oof.class_names}, the dataset {names}.")
  mask = purification.find_label_issues(oof.labels, oof.probs, method=study.config.purify.method)
  flagged = np.array(sorted(index[p] for p, m in zip(oof.paths, mask) if m), np.int64)
  if primary():
    records.write_purification_removed(
      study.workdir, [(study.dataset.paths[i], names[study.dataset.labels[i]]) for i in flagged]
    )
  log.info(
    "Purification: %d of %d CV images flagged (%s); arm %s_purified trains without them",
    len(flagged),
    len(oof.paths),
    study.config.purify.method,
    source_arm,
  )
  if len(flagged) > 0.3 * len(oof.paths):
    log.warning(
      "Purification flagged %.0f %% of the images: arm %s's models are probably too weak for their out-of-fold "
      "predictions to single out mislabelled images; read purification.csv before trusting the purified arm.",
      100 * len(flagged) / len(oof.paths),
      source_arm,
    )
  return flagged


def _write_config(config, workdir: str) -> None:
  """Stores the resolved config; refuses to resume a workdir that holds a different study."""
  if records.check_config(workdir, config):
    log.info("Resuming the study in %s", workdir)
  if primary():
    records.write_config(workdir, config)


def _not_orbax_chatter(record: logging.LogRecord) -> bool:
  """Orbax logs several INFO lines per checkpoint; keep its warnings, drop the rest."""
  return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


class _WorkdirLogHandler(logging.FileHandler):
  """log.txt: written to a local file (the workdir itself, or a mirror of a bucket workdir copied every 30 s)."""

  def __init__(self, workdir: str, name: str):
    self.mirror = storage.LocalMirror(workdir)
    super().__init__(storage.as_path(self.mirror.local) / name)

  def emit(self, record: logging.LogRecord) -> None:
    super().emit(record)
    self.mirror.sync()

  def close(self) -> None:
    super().close()
    self.mirror.close()


def log_to_file(workdir: str) -> logging.Handler:
  """Every log line of this process into the workdir's log (orbax's INFO chatter dropped everywhere); the handler."""
  name = layout.LOG if primary() else layout.process_log(jax.process_index())
  handler = _WorkdirLogHandler(workdir, name)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  handler.addFilter(_not_orbax_chatter)
  root = logging.getLogger()
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  for other in root.handlers:  # Also the console (absl's handler under `python -m jaxcell.main`).
    if _not_orbax_chatter not in other.filters:
      other.addFilter(_not_orbax_chatter)
  return handler


def _stage_record(start: float) -> dict:
  """Seconds per stage of this run (the whole run under 'total'), for engine.json."""
  return {**{name: round(s, 2) for name, s in progress.stage_times().items()}, "total": round(time.time() - start, 2)}


def run_study(config, workdir: str) -> Study:
  """Runs (or resumes) a whole study and writes every output into `workdir`.

  Nothing is written before the config and the data are checked (`check_inputs`); the workdir is then held by
  this run alone (workdir/lock.py) until it ends."""
  mesh_lib.maybe_initialize_distributed(bool(config.engine.distributed) or None, int(config.engine.distributed_timeout))
  with progress.quiet_unless(primary()):  # One console per job: the other processes only log to their files.
    return _run_study(config, workdir)


def _run_study(config, workdir: str) -> Study:
  progress.reset_times()
  start = time.time()
  arm_configs, dataset, splits = check_inputs(config, workdir)
  if config.engine.compilation_cache:  # Re-runs and resumed studies skip most compilation.
    jax.config.update("jax_compilation_cache_dir", str(storage.as_path(config.engine.compilation_cache)))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  storage.as_path(workdir).mkdir(parents=True, exist_ok=True)
  with lock.held(workdir) if primary() else contextlib.nullcontext():
    handler = log_to_file(workdir)
    try:
      _write_config(config, workdir)
      study = prepare(config, workdir, arm_configs, dataset, splits)
      run_lanes(study)
      if primary():
        with progress.timed("reports"):
          study_report.write_reports(study, time.time() - start)
        records.write_engine(workdir, {**study.engine_records, records.STAGE_SECONDS: _stage_record(start)})
      log.info("Done in %.0f s; outputs in %s", time.time() - start, workdir)
      progress.note(f"Done in {time.time() - start:.0f} s; results in {workdir} (open report.html)")
      return study
    finally:
      logging.getLogger().removeHandler(handler)
      handler.close()
