"""Plots for confidence triage and calibration: risk-coverage curves and reliability diagrams.

Inputs are the dicts of `jaxcell.analysis.triage.risk_coverage` and `jaxcell.analysis.calibration.reliability_bins`,
keyed by a label (an arm, "mean-prob ensemble", ...). Like `plots.py`, figures are drawn on the Agg canvas
directly, so nothing touches pyplot's global state or needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxcell.analysis.calibration import ece_from_bins
from jaxcell.analysis.triage import BIONIC_THRESHOLDS
from jaxcell.workdir import storage

_DPI = 120
_MARKERS = ("o", "s", "^", "D", "v", "P")


def _save(figure: Figure, path: storage.PathLike) -> None:
  storage.save_figure(figure, path, dpi=_DPI)


def _operating_point(curve: Mapping, threshold: float) -> tuple[float, float] | None:
  """(coverage, risk) when keeping confidence >= threshold, or None when no image is that confident."""
  kept = np.flatnonzero(np.asarray(curve["thresholds"]) >= threshold)
  if kept.size == 0:
    return None
  j = kept[-1]  # thresholds decrease: the last one still >= threshold keeps the most images
  return float(curve["coverage"][j]), float(curve["risk"][j])


def plot_risk_coverage(
  curves: Mapping[str, Mapping], path: storage.PathLike, thresholds: Sequence[float] = BIONIC_THRESHOLDS
) -> None:
  """Saves a PNG: risk vs coverage per curve (the triage thresholds marked on it), and coverage vs threshold."""
  if not curves:
    raise ValueError("no risk-coverage curves to plot; pass {label: risk_coverage(targets, probs)}.")
  figure = Figure(figsize=(11.0, 4.5), layout="constrained")
  FigureCanvasAgg(figure)
  risk_ax, coverage_ax = figure.subplots(1, 2)
  for label, curve in curves.items():
    coverage, risk = np.asarray(curve["coverage"]), np.asarray(curve["risk"])
    aurc = curve.get("aurc")
    text = label if aurc is None else f"{label} (AURC {aurc:.3f})"
    (line,) = risk_ax.step(np.r_[0.0, coverage], np.r_[risk[0], risk], where="pre", label=text)
    coverage_ax.step(np.asarray(curve["thresholds"]), coverage, where="post", color=line.get_color(), label=label)
    for k, threshold in enumerate(thresholds):
      point = _operating_point(curve, threshold)
      if point is not None:
        marker = _MARKERS[k % len(_MARKERS)]
        risk_ax.plot(*point, marker=marker, color=line.get_color(), markersize=7, linestyle="none")
  for k, threshold in enumerate(thresholds):
    coverage_ax.axvline(threshold, color="grey", linestyle="--", linewidth=1)
    # A black marker per threshold in the legend explains the coloured markers on the curves.
    risk_ax.plot(
      [], [], marker=_MARKERS[k % len(_MARKERS)], color="black", linestyle="none", label=f"conf >= {threshold:g}"
    )
  risk_ax.set_xlabel("coverage (fraction of images kept)")
  risk_ax.set_ylabel("risk (error rate among kept images)")
  risk_ax.set_xlim(0.0, 1.0)
  risk_ax.set_ylim(bottom=0.0)
  risk_ax.set_title("Risk vs coverage")
  risk_ax.grid(alpha=0.3)
  risk_ax.legend(loc="best", fontsize="small")
  coverage_ax.set_xlabel("confidence threshold (keep if max probability >= threshold)")
  coverage_ax.set_ylabel("coverage (fraction of images kept)")
  coverage_ax.set_ylim(0.0, 1.02)
  coverage_ax.set_title("Coverage vs threshold")
  coverage_ax.grid(alpha=0.3)
  coverage_ax.legend(loc="best", fontsize="small")
  _save(figure, path)


def plot_reliability(bins_by_label: Mapping[str, Mapping], path: storage.PathLike) -> None:
  """Saves a PNG reliability diagram: accuracy vs mean confidence per bin (and ECE) above a bin-count panel."""
  if not bins_by_label:
    raise ValueError("no reliability bins to plot; pass {label: reliability_bins(targets, probs)}.")
  figure = Figure(figsize=(6.0, 6.5), layout="constrained")
  FigureCanvasAgg(figure)
  diagram_ax, count_ax = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  diagram_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
  for index, (label, bins) in enumerate(bins_by_label.items()):
    count = np.asarray(bins["count"])
    filled = count > 0
    edges = np.asarray(bins["bin_edges"])
    (line,) = diagram_ax.plot(
      np.asarray(bins["confidence"])[filled],
      np.asarray(bins["accuracy"])[filled],
      marker=_MARKERS[index % len(_MARKERS)],
      label=f"{label} (ECE {ece_from_bins(bins):.3f})",
    )
    count_ax.stairs(count, edges, color=line.get_color(), label=label)
  diagram_ax.set_xlim(0.0, 1.0)
  diagram_ax.set_ylim(0.0, 1.02)
  diagram_ax.set_ylabel("accuracy in bin")
  diagram_ax.set_title("Reliability diagram")
  diagram_ax.grid(alpha=0.3)
  diagram_ax.legend(loc="upper left", fontsize="small")
  count_ax.set_xlabel("confidence (max class probability)")
  count_ax.set_ylabel("images per bin")
  count_ax.grid(alpha=0.3)
  _save(figure, path)
