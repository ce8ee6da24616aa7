"""The frozen-feature path of a study arm: trunk features computed once, every lane's head trained on them.

It applies when the arm's whole trunk is frozen and fixed — every parameter outside the head `fc` frozen, and the
trunk's BatchNorms on running statistics (`model.trunk_bn='running'`, e.g. the linear_probe preset) or absent
(VGG16). BioNIC's own frozen trunks keep BatchNorm in train mode, so their features change with every batch; those
arms take the full-model path. The heads trained here equal those of the full-model path draw for draw (see
training/features.py and its tests); augmentation is represented by `transfer.feature_views` cached views per image.

Also fits the closed-form least-squares probe per lane (arm '<arm>_lsr' in the results) on the same features.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcell.models import heads
from jaxcell.training import augment as augment_lib
from jaxcell.training import checkpoints, engine, features, fit, lane_setup, optim, trainer
from jaxcell.workdir import records

log = logging.getLogger(__name__)


def applies(arm) -> tuple[bool, str]:
  """(whether the arm can train on cached features, why or why not) — the reason goes into engine.json."""
  c = arm.config
  if c.transfer.feature_cache == "off":
    return False, "transfer.feature_cache='off'"
  variables = jax.eval_shape(arm.init, jax.random.key(0, impl="rbg"))
  if not features.is_head_only(variables["params"], c.train.frozen):
    return False, "layers outside the head are trained"
  trunk_bn = [k for k in traverse_util.flatten_dict(variables.get("batch_stats", {})) if k[0] != features.HEAD]
  if trunk_bn and c.model.trunk_bn != "running":
    return False, "the frozen trunk's BatchNorm uses batch statistics (model.trunk_bn='batch', as BioNIC)"
  return True, "trunk frozen with fixed statistics"


def num_views(c) -> int:
  augment = augment_lib.AugmentConfig.from_config(c.augment)
  identity = not augment.geometric and augment.brightness == 0 and augment.contrast == 0
  return 1 if identity else int(c.transfer.feature_views)


def fit_heads(arm, labels: np.ndarray, workdir: str, plan: list[tuple], cv_pool: np.ndarray, why: str) -> fit.FitResult:
  """Trains the heads of the plan's lanes on cached features; returns full-model states and the LSR probes.

  `why` is the reason `applies` gave, recorded in engine.json."""
  c = arm.config
  start = time.perf_counter()
  tx = optim.make_optimizer(c.train)
  views = num_views(c)
  lanes = [lane for lane, _, _ in plan]
  initial = [arm.init(lane.init_key()) for lane in lanes]  # Each lane's own head; the trunk is shared.
  first = initial[0]
  variables = {"params": optim.merge_params(first["params"], arm.frozen), "batch_stats": first.get("batch_stats", {})}
  key = jax.random.fold_in(jax.random.key(int(c.seed), impl="threefry2x32"), 0xFEA7)
  augment = augment_lib.AugmentConfig.from_config(c.augment)
  cache = features.extract_features(arm.model, variables, arm.data, key, augment, views, int(c.eval.batch_size))
  log.info(
    "Arm %s: trunk features %s (%d views per image) in %.1fs", arm.name, cache.shape, views, time.perf_counter() - start
  )

  states = engine.stack([features.head_train_state(v["params"], v.get("batch_stats", {}), tx) for v in initial])
  stacked = engine.stack_lane_data(
    [lane_setup.lane_data(lane, idx, labels, c.train.class_balanced, s) for lane, idx, s in plan]
  )
  recipe = features.HeadRecipe(
    head=_head_module(arm),
    tx=tx,
    schedule=optim.Schedule.from_config(c.train),
    batch_size=int(c.train.batch_size),
    views=views,
  )
  steps = max(s for _, _, s in plan)
  states, _ = features.train_heads(
    recipe,
    states,
    [lane.train_key() for lane in lanes],
    cache,
    arm.data.labels,
    stacked,
    steps,
    int(c.train.steps_per_chunk),
  )
  final = jax.tree.map(np.asarray, states)
  trunk_stats = {k: v for k, v in first.get("batch_stats", {}).items() if k != features.HEAD}
  out = []
  for i in range(len(lanes)):
    head_state = jax.tree.map(lambda x: x[i], final)
    batch_stats = dict(trunk_stats)
    if head_state.batch_stats:
      batch_stats[features.HEAD] = head_state.batch_stats
    out.append(
      trainer.TrainState(
        step=head_state.step,
        params={features.HEAD: head_state.params},
        batch_stats=batch_stats,
        opt_state=head_state.opt_state,
      )
    )
  if c.output.checkpoint:  # The final states, for python -m jaxcell.predict.
    ckpt = checkpoints.Checkpointer(records.record_group(workdir, [lane.index for lane in lanes]))
    ckpt.save(int(steps), engine.stack(out))
    ckpt.close()
  probes = None
  if c.transfer.lsr_probe:
    probes = lsr_probes(
      cache[:, 0], arm.data.labels, stacked, int(arm.model.num_classes), float(c.transfer.lsr_l2), cv_pool
    )
  seconds = time.perf_counter() - start
  log.info("Arm %s: %d heads trained on cached features in %.1fs", arm.name, len(lanes), seconds)
  record = {
    "path": "frozen_features",
    "why": why,
    "views": views,
    "feature_shape": list(cache.shape),
    "lanes": len(lanes),
    "seconds": round(seconds, 2),
    "lsr_probe": bool(probes is not None),
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
  }
  return fit.FitResult(out, record, probes)


def _head_module(arm):
  """The arm's head as a stand-alone module (the same one the model calls 'fc')."""
  m = arm.model
  return heads.make_head(m.head, m.num_classes, m.head_hidden, m.dtype, name=features.HEAD)


class LsrProbes:
  """Per-lane closed-form probes on un-augmented features; `probs(row, idx)` scores images for lane `row`."""

  def __init__(self, feats, w, b, scale):
    self.feats, self.w, self.b, self.scale = feats, w, b, scale

  def probs(self, row: int, idx: np.ndarray) -> np.ndarray:
    scores = features.lsr_scores(self.feats[jnp.asarray(idx)] / self.scale, self.w[row], self.b[row])
    return np.asarray(features.scores_to_probs(scores))


def lsr_probes(feats, labels, stacked: trainer.LaneData, num_classes: int, l2: float, cv_pool) -> LsrProbes:
  # One scale for all features (from the CV pool, never the holdout) so lsr_l2 means the same across models.
  scale = float(jnp.std(feats[jnp.asarray(cv_pool)])) or 1.0
  w, b = features.lsr_probe_lanes(feats / scale, labels, stacked.train_idx, stacked.weights > 0, num_classes, l2)
  return LsrProbes(feats, w, b, scale)
