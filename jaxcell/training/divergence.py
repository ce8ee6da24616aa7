"""Divergence: a lane whose training loss becomes non-finite, or explodes past `train.divergence_loss`, has
diverged. It is stopped, named in the log, recorded in results.csv with status 'diverged' and left out of every
ensemble, triage, calibration, purification and comparison; the other lanes are untouched (lanes share nothing)."""

from __future__ import annotations

import numpy as np


def reasons(losses: np.ndarray, valid_steps: np.ndarray, threshold: float, first_step: np.ndarray) -> list[str | None]:
  """Per lane, why it diverged in this window of losses, or None.

  losses: [lanes, steps] training losses of one chunk (NaN where a lane was past its budget); valid_steps: [lanes]
  how many leading steps of the window each lane really took; first_step: [lanes] the step number of the window's
  first loss."""
  out = []
  for row, (taken, start) in enumerate(zip(np.asarray(valid_steps), np.asarray(first_step))):
    window = np.asarray(losses[row, : max(int(taken), 0)], np.float64)
    bad = np.flatnonzero(~np.isfinite(window) | (window > threshold))
    if bad.size == 0:
      out.append(None)
      continue
    step, value = int(start) + int(bad[0]) + 1, window[bad[0]]
    if np.isfinite(value):
      out.append(f"training loss {value:.3g} at step {step} exceeds train.divergence_loss={threshold:g}")
    else:
      out.append(f"training loss became {value} at step {step}")
  return out
