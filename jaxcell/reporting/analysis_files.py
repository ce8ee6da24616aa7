"""What a finished study means for a biologist, computed from the files in its workdir only.

`analyze_study(workdir, config)` reads `predictions_{holdout,test}.csv` and `results.csv` (as written by
`jaxcell.study`) and writes, beside them:

- ensembles.csv: per arm and training-set size, the holdout scores of the mean-probability and majority-vote
  ensembles of the arm's models, the average single model, and BioNIC's label-leaking vote as the clearly
  named compatibility column `compat_bionic_leaky_vote/bionic_weighted_accuracy` (never a result to quote).
- risk_coverage.png and triage numbers: per arm, how many holdout images the mean-probability ensemble keeps at
  each `eval.triage_thresholds` and how accurate they are; the threshold reaching `eval.target_accuracy`, and
  how that threshold and its coverage vary between the arm's single models.
- triage.csv: every arm's holdout images at the first threshold (column `arm`); triage/<bucket>/ holds the
  first arm's images when `output.triage_folders` (files copied, or PNGs from `image_lookup` for images that
  are not on disk, e.g. synthetic data).
- reliability.png and calibration numbers: per arm, reliability bins and ECE of the holdout ensemble, and the
  ECE after a temperature fitted on out-of-fold CV test predictions only. Arms ending in '_lsr' are skipped:
  their probabilities are softmaxed least-squares scores, which rank images but are not probabilities.
- purification.csv: confident learning (`purify.method`) on the first arm's out-of-fold CV test predictions.
- comparisons.md: paired comparisons of every arm against the first on `eval.compare_metric`.
- analysis.json: the key numbers, for the report and for tests.

A study without a global holdout whose models all predicted the same test images (a given test/ folder) uses those
as the shared evaluation set instead, under that name (`evaluation_set` in analysis.json); no temperature is fitted
then, as there is nothing out-of-fold apart from them.

Triage and calibration use each arm's largest training-set size (all images when present); ensembles.csv
covers every size. Whatever cannot be computed is logged and listed under `skipped` with its reason.
The per-arm numbers come from arm_summaries.py and the triage folders from triage_images.py; this module runs
every analysis, records skips and writes the files.
"""

from __future__ import annotations

import csv
import json
import logging
import io
import math
import os
from collections.abc import Sequence

import numpy as np

from jaxcell.analysis import comparisons, ensembles, purification, triage
from jaxcell.reporting import triage_plots
from jaxcell.reporting.arm_summaries import arm_calibration, arm_triage, largest, triage_csv_rows
from jaxcell.reporting.triage_images import ImageLookup, dataset_root, write_triage_folders
from jaxcell.workdir import layout, predictions, storage
from jaxcell.workdir import results as results_lib
from jaxcell.workdir.layout import size_key, size_text

log = logging.getLogger(__name__)

LINEAR_PROBE_SUFFIX = "_lsr"
LEAKY_KEY = "bionic_leaky_vote/bionic_weighted_accuracy"
LEAKY_COLUMN = "compat_bionic_leaky_vote/bionic_weighted_accuracy"
TRIAGE_CSV_COLUMNS = ("arm", "n_per_class", "threshold", *triage.TRIAGE_COLUMNS)
NUM_PURIFICATION_SHOWN = 25  # Rows of the purification list kept in analysis.json (the CSV has them all).
FILES = layout.ANALYSIS_FILES


# --- small helpers ------------------------------------------------------------------------------


def is_linear_probe(arm: str) -> bool:
  return arm.endswith(LINEAR_PROBE_SUFFIX)


def skip(analysis: dict, section: str, reason: str) -> None:
  """Records (and logs) an analysis that was not done, so no skip is silent."""
  log.warning("Analysis %s skipped: %s", section, reason)
  analysis["skipped"].append({"section": section, "reason": reason})


def check_config(config) -> None:
  """The config fields the analyses use, checked before any work (messages say what to change)."""
  thresholds = tuple(config.eval.triage_thresholds)
  if not thresholds or not all(0.0 <= float(t) <= 1.0 for t in thresholds):
    raise ValueError(f"eval.triage_thresholds={thresholds}; give one or more confidences in [0, 1], e.g. (0.8, 0.85).")
  if not 0.0 < float(config.eval.target_accuracy) <= 1.0:
    raise ValueError(f"eval.target_accuracy={config.eval.target_accuracy}; use an accuracy in (0, 1], e.g. 0.95.")
  if int(config.eval.calibration_bins) < 1:
    raise ValueError(f"eval.calibration_bins={config.eval.calibration_bins}; use a positive number, e.g. 15.")
  if config.purify.method not in purification.METHODS:
    raise ValueError(f"purify.method={config.purify.method!r}; choose one of {purification.METHODS}.")


def jsonable(value):
  """Plain JSON types: numpy scalars/arrays become numbers/lists, nan and inf become None."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, (np.integer, np.bool_)):
    return value.item()
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def write_csv(path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
  """Rows as CSV (floats with 6 decimals, nan as 'nan'); the header is the first row's keys by default."""
  columns = list(columns if columns is not None else (rows[0] if rows else []))
  buffer = io.StringIO(newline="")
  writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
  storage.write_text(path, buffer.getvalue())


# --- ensembles ----------------------------------------------------------------------------------


def ensemble_rows(stacks: dict) -> list[dict]:
  """One row per arm and training-set size: holdout metrics of the arm's ensembles and average model."""
  rows = []
  for arm, by_size in stacks.items():
    for size in sorted(by_size, key=size_key):
      preds = by_size[size]
      scores = ensembles.ensemble_metrics(preds.targets, preds.probs, preds.class_names, include_leaky=True)
      leaky = scores.pop(LEAKY_KEY)
      row = {"arm": arm, "n_per_class": size_text(size), "num_models": int(scores.pop("num_models"))}
      row["num_images"] = len(preds.paths)
      row.update(scores)
      row[LEAKY_COLUMN] = leaky  # Last, and prefixed: the vote sees the labels it is scored against.
      rows.append(row)
  return rows


# --- the whole analysis -------------------------------------------------------------------------


def shared_test_set(test: dict) -> bool:
  """Whether every model of every arm predicted every test image: a given test/ folder, not CV folds."""
  stacks = [preds for by_size in test.values() for preds in by_size.values()]
  if not stacks:
    return False
  paths = stacks[0].paths
  return all(list(p.paths) == list(paths) and not np.isnan(p.probs).any() for p in stacks)


def _ensembles_section(analysis, workdir, holdout) -> None:
  analysis["ensembles"] = ensemble_rows(holdout)
  write_csv(workdir / FILES["ensembles_csv"], analysis["ensembles"])
  analysis["files"]["ensembles_csv"] = str(workdir / FILES["ensembles_csv"])


def _triage_section(analysis, workdir, config, holdout, image_lookup) -> None:
  thresholds = [float(t) for t in config.eval.triage_thresholds]
  curves, rows = {}, []
  for arm, by_size in holdout.items():
    analysis["triage"][arm], arm_curves = arm_triage(largest(by_size), thresholds, float(config.eval.target_accuracy))
    curves.update(arm_curves)
    rows += triage_csv_rows(largest(by_size), thresholds[0])
  triage_plots.plot_risk_coverage(curves, workdir / FILES["risk_coverage_png"], thresholds)
  write_csv(workdir / FILES["triage_csv"], rows, TRIAGE_CSV_COLUMNS)
  analysis["files"].update(risk_coverage_png=str(workdir / FILES["risk_coverage_png"]))
  analysis["files"]["triage_csv"] = str(workdir / FILES["triage_csv"])
  analysis["triage_csv"] = {"threshold": thresholds[0], "arms": list(holdout), "folders_arm": analysis["primary_arm"]}
  if not config.output.triage_folders:
    skip(analysis, "triage folders", "output.triage_folders is False (set it to True to sort image copies)")
    return
  primary = [r for r in rows if r["arm"] == analysis["primary_arm"]]
  folders = write_triage_folders(
    primary, dataset_root(config), workdir / FILES["triage_dir"], image_lookup, config.output.channel_colors
  )
  analysis["triage_folders"] = folders
  analysis["files"]["triage_dir"] = folders["directory"]


def _calibration_section(analysis, workdir, config, holdout, test) -> None:
  plotted = {}
  for arm, by_size in holdout.items():
    if is_linear_probe(arm):
      skip(
        analysis,
        f"calibration of {arm}",
        "a closed-form linear probe: its softmaxed least-squares scores rank "
        "images (accuracy, triage) but are not probabilities, so calibration does not apply",
      )
      continue
    preds = largest(by_size)
    arm_test = test.get(arm, {}).get(preds.n_per_class)
    summary, bins = arm_calibration(
      preds, arm_test, int(config.eval.calibration_bins), bool(config.eval.temperature_scaling)
    )
    if "temperature_skipped" in summary:
      skip(analysis, f"temperature scaling of {arm}", summary["temperature_skipped"])
    analysis["calibration"][arm] = summary
    plotted.update(bins)
  if plotted:
    triage_plots.plot_reliability(plotted, workdir / FILES["reliability_png"])
    analysis["files"]["reliability_png"] = str(workdir / FILES["reliability_png"])


def _purification_section(analysis, workdir, config, test) -> None:
  arms = [arm for arm in test if not is_linear_probe(arm)]
  if not arms:
    skip(analysis, "purification", "predictions_test.csv holds no trained (non-'_lsr') arm")
    return
  arm = arms[0]
  size = layout.largest_size(test[arm])
  oof = predictions.read_oof_predictions(layout.predictions(workdir, layout.CV_TEST_SPLIT), arm=arm, n_per_class=size)
  rows = purification.purification_table(
    oof.paths, oof.labels, oof.probs, oof.class_names, num_models=oof.num_models, method=config.purify.method
  )
  purification.write_purification_csv(workdir / FILES["purification_csv"], rows)
  analysis["files"]["purification_csv"] = str(workdir / FILES["purification_csv"])
  analysis["purification"] = {
    "arm": arm,
    "n_per_class": size_text(size),
    "method": config.purify.method,
    "num_images": len(oof.paths),
    "num_flagged": len(rows),
    "num_likely_mislabelled": sum(r["kind"] == "likely_mislabelled" for r in rows),
    "top": rows[:NUM_PURIFICATION_SHOWN],
  }


def _comparisons_section(analysis, workdir, config) -> None:
  rows = results_lib.usable(results_lib.read_rows(workdir / layout.RESULTS))
  arms = list(dict.fromkeys(r["arm"] for r in rows))
  if len(arms) < 2:
    skip(analysis, "comparisons", f"the study has a single arm {arms}; a comparison needs two or more")
    return
  present = {r["split"] for r in rows}
  splits = [s for s in layout.SPLIT_NAMES if s in present]
  results = comparisons.compare_all(
    rows, config.eval.compare_metric, splits, num_resamples=int(config.eval.bootstrap_resamples), seed=int(config.seed)
  )
  path = workdir / FILES["comparisons_md"]
  storage.write_text(path, comparisons.comparisons_markdown(results))
  analysis["files"]["comparisons_md"] = str(path)
  keep = ("arm_a", "arm_b", "metric", "split", "n_per_class", "n_pairs", "mean_diff", "ci_low", "ci_high")
  analysis["comparisons"] = {
    "metric": config.eval.compare_metric,
    "baseline": arms[0],
    "results": [{k: r[k] for k in (*keep, "wilcoxon_p", "verdict", "tentative", "sentence")} for r in results],
  }


def _run(analysis: dict, section: str, function, *args) -> None:
  """Runs one analysis; data it cannot handle is recorded as a skip with the reason, the others go on."""
  try:
    function(analysis, *args)
  except (ValueError, FileNotFoundError) as error:
    skip(analysis, section, f"{type(error).__name__}: {error}")


def analyze_study(workdir: str | os.PathLike, config, image_lookup: ImageLookup | None = None) -> dict:
  """Writes the analyses of a finished study into its workdir (see the module docstring); returns the summary.

  `image_lookup(path) -> uint8 HxWxC` supplies images that are not files (synthetic data) for triage folders.
  The returned dict (also written as analysis.json) holds the file paths under `files` and every skip reason
  under `skipped`.
  """
  workdir = storage.as_path(workdir)
  if not (workdir / layout.RESULTS).is_file():
    raise ValueError(f"{workdir} has no results.csv: pass the workdir of a finished study (python -m jaxcell.main).")
  check_config(config)
  analysis = {"workdir": str(workdir), "files": {}, "skipped": [], "ensembles": [], "triage": {}, "calibration": {}}
  holdout_csv = layout.predictions(workdir, layout.HOLDOUT_SPLIT)
  test_csv = layout.predictions(workdir, layout.CV_TEST_SPLIT)
  holdout = predictions.read_stacks(holdout_csv) if holdout_csv.is_file() else {}
  test = predictions.read_stacks(test_csv) if test_csv.is_file() else {}
  analysis["arms"] = list(holdout or test)
  analysis["primary_arm"] = next((a for a in analysis["arms"] if not is_linear_probe(a)), None)
  analysis["notes"] = [
    "Triage and calibration use each arm's largest training-set size; ensembles.csv covers every size.",
    "triage.csv lists every arm's holdout images at the first threshold; triage folders hold the first arm's.",
  ]
  evaluation, fit_set = holdout, test
  analysis["evaluation_set"] = {"split": layout.HOLDOUT_SPLIT, "name": "global holdout"}
  if not holdout and shared_test_set(test):
    # A given test/ folder: every model is scored on the same images, which serve as the shared evaluation set;
    # nothing else is out-of-fold, so no temperature can be fitted without touching them.
    evaluation, fit_set = test, {}
    analysis["evaluation_set"] = {"split": layout.CV_TEST_SPLIT, "name": "given test set (test/)"}
  if evaluation:
    analysis["class_names"] = list(next(iter(next(iter(evaluation.values())).values())).class_names)
    _run(analysis, "ensembles", _ensembles_section, workdir, evaluation)
    _run(analysis, "triage", _triage_section, workdir, config, evaluation, image_lookup)
    _run(analysis, "calibration", _calibration_section, workdir, config, evaluation, fit_set)
  else:
    for section in ("ensembles", "triage", "calibration"):
      skip(
        analysis,
        section,
        "no predictions_holdout.csv: the study has no global holdout (holdout_fraction 0) and no test set shared "
        "by every model (a given test/ folder)",
      )
  if test:
    _run(analysis, "purification", _purification_section, workdir, config, test)
  else:
    skip(analysis, "purification", "no predictions_test.csv: there are no CV test (out-of-fold) predictions")
  _run(analysis, "comparisons", _comparisons_section, workdir, config)

  analysis["files"]["analysis_json"] = str(workdir / FILES["analysis_json"])
  analysis = jsonable(analysis)
  storage.write_text(workdir / FILES["analysis_json"], json.dumps(analysis, indent=2))
  return analysis


def load_analysis(workdir: str | os.PathLike) -> dict:
  """analysis.json of a workdir, as written by analyze_study."""
  path = storage.as_path(workdir) / FILES["analysis_json"]
  if not path.is_file():
    raise FileNotFoundError(f"no {path}; run analyze_study(workdir, config) first.")
  return json.loads(storage.read_text(path))
