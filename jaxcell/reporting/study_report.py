"""The study's human-readable outputs: summary.md, boxplot.png, learning curves, and the analyses and report.

Everything here reads the finished results (results.csv, predictions_*.csv) plus the study's set-up, a
`FinishedStudy` (jaxcell.study.Study is one).
"""

from __future__ import annotations

import logging
from typing import Protocol

import jax
import ml_collections
import numpy as np

from jaxcell import arms as arms_lib
from jaxcell import progress
from jaxcell.data import dataset as dataset_lib
from jaxcell.data import loading
from jaxcell.data import splits as splits_lib
from jaxcell.training import lanes as lanes_lib

from jaxcell.reporting import (
  analysis_files,
  confusion,
  learning_curves,
  plots,
  preprocess_examples,
  report_html,
  summary,
)
from jaxcell.workdir import layout, records, results, storage

log = logging.getLogger(__name__)

# Metrics written to TensorBoard per lane and drawn as learning curves (every metric is in results.csv).
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr")


class FinishedStudy(Protocol):
  """What the reports need of a study whose lanes are trained and recorded in its workdir."""

  config: ml_collections.ConfigDict
  workdir: str
  dataset: dataset_lib.Dataset
  splits: splits_lib.Splits
  arms: dict[str, arms_lib.Arm]
  lanes: list[lanes_lib.Lane]
  engine_records: dict  # Arm -> what trained it (engine.json).


def write_reports(study: FinishedStudy, seconds: float) -> None:
  """summary.md, boxplot.png and learning curves from results.csv; then the analyses and report.html."""
  c, ds = study.config, study.dataset
  all_rows = results.read_rows(layout.path(study.workdir, layout.RESULTS))
  rows = results.usable(all_rows)  # Diverged models are listed, never averaged.
  counts = ", ".join(f"{n} {k}" for n, k in zip(ds.class_counts.tolist(), ds.class_names))
  source = loading.source_text(c.data)
  setup = [
    f"Dataset: {source}: {len(ds)} images at {c.data.image_size} px, {ds.num_classes} classes ({counts}); "
    f"{len(ds.skipped)} files skipped.",
    f"Protocol: global holdout {len(study.splits.holdout)} images ({c.protocol.holdout_fraction:.0%} per class); "
    f"{study.splits.num_folds} folds x {c.protocol.num_repeats} repeats x {c.protocol.num_seeds} seeds; "
    f"{len(study.lanes)} models.",
    *[arm_setup_line(arm) for arm in study.arms.values()],
    f"Run time: {seconds:.0f} s on {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}).",
    progress.times_line(progress.stage_times(), seconds),
    workdir_line(records.workdir_sizes(study.workdir)),
    f"Engine: {_engine_line(study)}",
    diverged_line(all_rows),
    duplicates_line(records.read_duplicates(study.workdir)),
  ]
  path = layout.path(study.workdir, layout.SUMMARY)
  summary.write_summary_markdown(
    path,
    rows,
    title="jaxcell study summary",
    setup_lines=setup,
    num_resamples=int(c.eval.bootstrap_resamples),
    seed=int(c.seed),
  )
  storage.append_text(
    path, "\n" + confusion.summed_markdown(layout.path(study.workdir, layout.CONFUSION), ds.class_names)
  )
  plots.plot_boxplots(
    rows,
    c.eval.box_metric,
    layout.path(study.workdir, layout.BOXPLOT),
    num_classes=ds.num_classes,
    title=f"{c.eval.box_metric} per model",
  )
  write_learning_curves(study, rows)
  write_preprocess_examples(study)
  lookup = dict(zip(ds.paths, ds.images)).__getitem__  # Example images without re-reading (or synthetic ones).
  analysis = analysis_files.analyze_study(study.workdir, c, image_lookup=lookup)
  if c.output.report:
    path = report_html.write_report(study.workdir, analysis, c, image_lookup=lookup)
    log.info("Report: %s", path)


def write_preprocess_examples(study: FinishedStudy) -> str | None:
  """preprocess_examples.png when some arm pre-processes its images: one holdout image per class per variant."""
  variants = preprocess_examples.variant_rows({name: arm.config.data.preprocess for name, arm in study.arms.items()})
  if not variants:
    return None
  ds, c = study.dataset, study.config
  picks = np.array(preprocess_examples.example_indices(ds.labels, study.splits.holdout, ds.num_classes))
  images = {name: np.asarray(study.arms[name].data.images[picks]) for name in variants}
  names = [ds.class_names[ds.labels[i]] for i in picks]
  path = layout.path(study.workdir, layout.PREPROCESS_EXAMPLES)
  return preprocess_examples.plot_preprocess_examples(images, variants, names, path, c.output.channel_colors)


def workdir_line(sizes: dict[str, int]) -> str:
  """How much disk the study takes, and where (counted before the reports and plots are written)."""
  parts = ", ".join(f"{name} {_megabytes(sizes[name])}" for name in ("checkpoints", "cache", "tensorboard", "other"))
  return f"Workdir size: {_megabytes(sizes['total'])} ({parts})."


def _megabytes(num_bytes: int) -> str:
  return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 1e5 else f"{num_bytes / 1e3:.0f} kB"


def diverged_line(rows: list[dict]) -> str:
  """Which models diverged in training (left out of every score, plot, ensemble and comparison), or that none did."""
  diverged = sorted({(r["arm"], r["lane"]) for r in rows if r["status"] == results.DIVERGED})
  if not diverged:
    return "Diverged models: none."
  named = ", ".join(f"{arm} lane {lane}" for arm, lane in diverged)
  return f"Diverged models: {len(diverged)} ({named}), left out of every score, plot and analysis; see log.txt."


def duplicates_line(counts: dict[str, int]) -> str:
  """The byte-identical images found before training (duplicates.csv), by kind."""
  if not counts:
    return "Byte-identical images: none found."
  kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items())
  return (
    f"Byte-identical images: {sum(counts.values())} groups ({kinds}); see duplicates.csv before trusting the scores."
  )


def arm_setup_line(arm: arms_lib.Arm) -> str:
  """One sentence describing how an arm's models are built and trained."""
  c = arm.config
  start = f"weights {storage.as_path(c.transfer.weights).name}" if c.transfer.weights else "random init (scratch)"
  preset = f", preset {c.transfer.preset}" if c.transfer.preset else ""
  return (
    f"Arm '{arm.name}': {c.model.name} (width {c.model.width}, head {c.model.head}, trunk BN {c.model.trunk_bn}) "
    f"from {start}{preset}; frozen: {c.train.frozen or 'nothing'}; {c.train.optimizer} lr {c.train.learning_rate}, "
    f"{c.train.schedule} schedule, batch {c.train.batch_size}, "
    f"{'class-balanced' if c.train.class_balanced else 'uniform'} sampling; input {c.data.image_size} px "
    f"({c.data.resize.replace('_', ' ')}), normalisation {c.data.normalization}"
    + (f", pre-processing {c.data.preprocess}." if c.data.preprocess != "none" else ".")
  )


def _engine_line(study: FinishedStudy) -> str:
  if not study.engine_records:
    return "nothing trained in this run (results from an earlier run)."
  parts = []
  for arm, record in study.engine_records.items():
    if record.get("path") == "frozen_features":
      how = f"heads trained on cached trunk features ({record['views']} views per image)"
    else:
      how = f"strategy '{record['strategy']}' (chosen by {record['chosen_by']}) on mesh {record['mesh']}"
    parts.append(f"{arm}: {record['lanes']} models trained together, {how}")
  return "; ".join(parts) + "; details in engine.json."


def write_learning_curves(study: FinishedStudy, rows: list[dict]) -> None:
  """learning_curve_<metric>.png and learning_curve.csv when lanes cover two or more training-set sizes."""
  tables = []
  for metric in HEADLINE_METRICS:
    path = layout.path(study.workdir, f"learning_curve_{metric}.png")
    if not learning_curves.plot_learning_curves(rows, metric, path, num_classes=study.dataset.num_classes):
      if len(study.config.protocol.n_per_class) > 1:
        log.warning("No learning curve: fewer than two training-set sizes have results.")
      return
    tables += learning_curves.learning_curve_table(rows, metric)
  learning_curves.write_learning_curve_csv(layout.path(study.workdir, layout.LEARNING_CURVE), tables)
