"""Per-arm numbers of a finished study: triage and calibration of its prediction stacks.

The stacks are {arm: {n_per_class: ArmPredictions}} (workdir.predictions.read_stacks); `arm_triage`
and `arm_calibration` compute one arm's holdout-ensemble triage and calibration numbers (plus what to plot), and
`triage_csv_rows` its rows of triage.csv. analysis_files.py runs them for every arm and writes the files.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from jaxcell.analysis import calibration, ensembles, triage
from jaxcell.workdir.layout import largest_size, size_text


def largest(by_size: dict):
  """The entry of the largest training-set size (None = all images counts as largest)."""
  return by_size[largest_size(by_size)]


# --- triage -------------------------------------------------------------------------------------


def arm_triage(preds: ensembles.ArmPredictions, thresholds: Sequence[float], target_accuracy: float):
  """Triage numbers of one arm's holdout ensemble; returns (summary dict, {label: curve} to plot)."""
  targets, ensemble = preds.targets, ensembles.mean_probability(preds.probs)
  curve = triage.risk_coverage(targets, ensemble)
  member_curves = [triage.risk_coverage(targets, p) for p in preds.probs]
  member_aurc = np.array([c["aurc"] for c in member_curves])
  median = int(np.argsort(member_aurc, kind="stable")[(member_aurc.size - 1) // 2])  # lower median by AURC
  summary = {
    "n_per_class": size_text(preds.n_per_class),
    "num_models": int(preds.probs.shape[0]),
    "num_images": len(preds.paths),
    "at_thresholds": [triage.triage_at(targets, ensemble, t) for t in thresholds],
    "aurc": curve["aurc"],
    "member_aurc": {"median": float(np.median(member_aurc)), "min": member_aurc.min(), "max": member_aurc.max()},
    "median_model": {"lane": int(preds.lanes[median]), "aurc": float(member_aurc[median])},
    "for_accuracy": triage.threshold_for_accuracy(targets, ensemble, target_accuracy),
    "interval": triage.threshold_interval([(targets, p) for p in preds.probs], target_accuracy),
  }
  curves = {
    f"{preds.arm} ensemble": curve,
    f"{preds.arm} median model (lane {summary['median_model']['lane']})": (member_curves[median]),
  }
  return summary, curves


def triage_csv_rows(preds: ensembles.ArmPredictions, threshold: float) -> list[dict]:
  """triage_rows of an arm's holdout ensemble, with the arm, size and threshold in every row."""
  ensemble = ensembles.mean_probability(preds.probs)
  rows = triage.triage_rows(preds.paths, preds.targets, ensemble, preds.class_names, threshold)
  extra = {"arm": preds.arm, "n_per_class": size_text(preds.n_per_class), "threshold": float(threshold)}
  return [dict(extra, **row) for row in rows]


# --- calibration --------------------------------------------------------------------------------


def arm_calibration(holdout: ensembles.ArmPredictions, test, num_bins: int, temperature_scaling: bool):
  """ECE and reliability bins of the holdout ensemble, and after a temperature fitted on out-of-fold predictions.

  `test` is the arm's CV-test ArmPredictions (same training-set size) or None. Returns (summary, {label: bins}).
  """
  ensemble = ensembles.mean_probability(holdout.probs)
  bins = calibration.reliability_bins(holdout.targets, ensemble, num_bins)
  summary = {
    "n_per_class": size_text(holdout.n_per_class),
    "num_bins": num_bins,
    "ece": calibration.ece_from_bins(bins),
  }
  summary["bins"] = {k: v for k, v in bins.items()}
  plotted = {f"{holdout.arm} ensemble": bins}
  if not temperature_scaling:
    summary["temperature_skipped"] = "eval.temperature_scaling is False"
  elif test is None:
    summary["temperature_skipped"] = "no out-of-fold predictions apart from the evaluation set to fit a temperature on"
  else:
    try:
      oof, _ = ensembles.out_of_fold_probs(test)
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        temperature = calibration.fit_temperature(calibration.log_probs(oof), test.targets)
    except ValueError as error:  # The holdout ECE above still stands; only the temperature is lost.
      summary["temperature_skipped"] = f"the out-of-fold predictions cannot be used: {error}"
      return summary, plotted
    scaled = calibration.apply_temperature(ensemble, temperature)
    scaled_bins = calibration.reliability_bins(holdout.targets, scaled, num_bins)
    summary.update(
      temperature=temperature,
      temperature_fit_on=f"out-of-fold CV test predictions of {len(test.paths)} images",
      temperature_warnings=[str(w.message) for w in caught],
      ece_after_temperature=calibration.ece_from_bins(scaled_bins),
    )
    plotted[f"{holdout.arm} ensemble, T = {temperature:.2f}"] = scaled_bins
  return summary, plotted
