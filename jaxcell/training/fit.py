"""Training's one entry point: an arm's pending lanes take the cached-feature path when it applies (the whole trunk
frozen with fixed statistics), the full-model path otherwise; the checkpoints prediction needs are written here."""

from __future__ import annotations

import numpy as np

from jaxcell.training import cached_heads, checkpoints, engine, full_model
from jaxcell.training.interface import ArmSetup, FitResult, PlanItem
from jaxcell.workdir import layout, records


def fit_arm(
  arm: ArmSetup,
  labels: np.ndarray,
  workdir: str,
  plan: list[PlanItem],
  cv_pool: np.ndarray,
  writer,
) -> FitResult:
  """Trains the lanes of `plan` ([(lane, train indices, steps)]) of one arm -> FitResult (states, engine record,
  named predictors).

  cv_pool: the dataset indices outside the global holdout (the LSR probes scale their features on them);
  writer: the run's metric writer (workdir.metric_writer) for the full-model path's training losses."""
  c = arm.config
  if c.output.checkpoint and arm.frozen:  # Shared by every lane of the arm: saved once, beside the lanes.
    frozen_ckpt = checkpoints.Checkpointer(layout.frozen_directory(workdir, arm.name))
    if frozen_ckpt.latest_step() is None:
      frozen_ckpt.save(0, arm.frozen)
    frozen_ckpt.close()
  cached, why = cached_heads.applies(arm)
  if not cached:
    result = full_model.fit_lanes(arm, labels, workdir, plan, writer)
    result.record["why_not_cached_features"] = why
    return result
  result = cached_heads.fit_heads(arm, labels, plan, cv_pool, why)
  if c.output.checkpoint:  # The final states, for python -m jaxcell.predict (cached heads train in one go).
    ckpt = checkpoints.Checkpointer(records.record_group(workdir, [lane.index for lane, _, _ in plan]))
    ckpt.save(int(max(steps for _, _, steps in plan)), checkpoints.finished(engine.stack(result.states)))
    ckpt.close()
  return result
