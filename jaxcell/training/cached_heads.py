"""The cached-feature path of a study arm: trunk features computed once, every lane's head trained on them.

It applies when the arm's whole trunk is frozen and fixed — every parameter outside the head `fc` frozen, and the
trunk's BatchNorms on running statistics (`model.trunk_bn='running'`, e.g. the linear_probe preset) or absent
(VGG16). BioNIC's own frozen trunks keep BatchNorm in train mode, so their features change with every batch; those
arms take the full-model path. The heads trained here equal those of the full-model path draw for draw (see
training/head_training.py and its tests); augmentation is represented by `transfer.feature_views` cached views per image.

Also fits the closed-form least-squares probe per lane (training/lsr_probe.py; arm '<arm>_lsr' in the results) on
the same features.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import numpy as np
from flax import traverse_util

from jaxcell import progress
from jaxcell.models import heads
from jaxcell.training import augment as augment_lib
from jaxcell.training import divergence, engine, engine_setup, head_training, inference, lsr_probe, optim, trainer
from jaxcell.training.interface import ArmSetup, FitResult, PlanItem

log = logging.getLogger(__name__)

LSR_SUFFIX = "_lsr"  # Results of an arm's least-squares probes are recorded as arm '<arm>_lsr'.


def applies(arm: ArmSetup) -> tuple[bool, str]:
  """(whether the arm can train on cached features, why or why not) — the reason goes into engine.json."""
  c = arm.config
  if c.transfer.feature_cache == "off":
    return False, "transfer.feature_cache='off'"
  variables = jax.eval_shape(arm.init, jax.random.key(0, impl="rbg"))
  if not head_training.is_head_only(variables["params"], c.train.frozen):
    return False, "layers outside the head are trained"
  trunk_bn = [k for k in traverse_util.flatten_dict(variables.get("batch_stats", {})) if k[0] != head_training.HEAD]
  if trunk_bn and c.model.trunk_bn != "running":
    return False, "the frozen trunk's BatchNorm uses batch statistics (model.trunk_bn='batch', as BioNIC)"
  return True, "trunk frozen with fixed statistics"


def num_views(c) -> int:
  augment = augment_lib.AugmentConfig.from_config(c.augment)
  identity = not augment.geometric and augment.brightness == 0 and augment.contrast == 0
  return 1 if identity else int(c.transfer.feature_views)


@dataclasses.dataclass
class HeadJob:
  """An arm's plan on the cached-feature path, set up: what the trunk extracts and what the heads train from."""

  trunk_variables: dict  # Full-model variables (the shared trunk, the first lane's head) for feature extraction.
  feature_key: jax.Array  # Draws the augmentation views of every image.
  augment: augment_lib.AugmentConfig
  views: int
  recipe: head_training.HeadRecipe
  states: trainer.TrainState  # Every lane's head state, stacked.
  keys: list  # Each lane's training key.
  lanes: trainer.LaneData  # Every lane's index set and budget, stacked.
  steps: int  # The longest budget.
  trunk_stats: dict  # The trunk's (fixed) BatchNorm statistics, shared by every lane.


def prepare_heads(arm: ArmSetup, labels: np.ndarray, plan: list[PlanItem]) -> HeadJob:
  """The plan's head states, index sets and recipe, and what feature extraction needs (shared with the benchmark)."""
  c = arm.config
  tx = optim.make_optimizer(c.train)
  lanes = [lane for lane, _, _ in plan]
  initial = [arm.init(lane.init_key()) for lane in lanes]  # Each lane's own head; the trunk is shared.
  first = initial[0]
  variables = {"params": optim.merge_params(first["params"], arm.frozen), "batch_stats": first.get("batch_stats", {})}
  states = engine.stack([head_training.head_train_state(v["params"], v.get("batch_stats", {}), tx) for v in initial])
  stacked = engine.stack_lane_data(
    [engine_setup.lane_data(lane, idx, labels, c.train.class_balanced, s) for lane, idx, s in plan]
  )
  views = num_views(c)
  recipe = head_training.HeadRecipe(
    head=_head_module(arm),
    tx=tx,
    schedule=optim.Schedule.from_config(c.train),
    batch_size=int(c.train.batch_size),
    views=views,
  )
  return HeadJob(
    trunk_variables=variables,
    feature_key=jax.random.fold_in(jax.random.key(int(c.seed), impl="threefry2x32"), 0xFEA7),
    augment=augment_lib.AugmentConfig.from_config(c.augment),
    views=views,
    recipe=recipe,
    states=states,
    keys=[lane.train_key() for lane in lanes],
    lanes=stacked,
    steps=max(s for _, _, s in plan),
    trunk_stats={k: v for k, v in first.get("batch_stats", {}).items() if k != head_training.HEAD},
  )


def extract_features(arm: ArmSetup, job: HeadJob, on_batch=None) -> jax.Array:
  """Trunk features of every image x view, [N, views, D]; on_batch(num_images) reports progress."""
  batch_size = int(arm.config.eval.batch_size)
  return head_training.extract_features(
    arm.model, job.trunk_variables, arm.data, job.feature_key, job.augment, job.views, batch_size, on_batch
  )


def train_heads(arm: ArmSetup, job: HeadJob, cache: jax.Array) -> tuple[trainer.TrainState, np.ndarray]:
  """Every lane's head trained on the cache for its budget; (stacked states, losses [L, steps])."""
  chunk = int(arm.config.train.steps_per_chunk)
  return head_training.train_heads(
    job.recipe, job.states, job.keys, cache, arm.data.labels, job.lanes, job.steps, chunk
  )


def fit_heads(arm: ArmSetup, labels: np.ndarray, plan: list[PlanItem], cv_pool: np.ndarray, why: str) -> FitResult:
  """Trains the heads of the plan's lanes on cached features -> FitResult with full-model states, whose
  predictors are the trained heads (arm name) and, with transfer.lsr_probe, the LSR probes ('<arm>_lsr').

  `why` is the reason `applies` gave, recorded in engine.json."""
  c = arm.config
  start = time.perf_counter()
  job = prepare_heads(arm, labels, plan)
  images = int(arm.data.images.shape[0])
  with progress.stage(f"features {arm.name}", total=images, unit="images", time_as="features") as bar:
    cache = jax.block_until_ready(extract_features(arm, job, bar.update))
  log.info(
    "Arm %s: trunk features %s (%d views per image) in %.1fs",
    arm.name,
    cache.shape,
    job.views,
    time.perf_counter() - start,
  )
  with progress.stage(f"train heads {arm.name}", time_as="train"):
    final, losses = train_heads(arm, job, cache)
    final = jax.tree.map(np.asarray, final)
  budgets = np.array([steps for _, _, steps in plan])
  why = divergence.reasons(losses, budgets, float(c.train.divergence_loss), np.zeros_like(budgets))
  diverged = {row: reason for row, reason in enumerate(why) if reason}
  for row, reason in diverged.items():
    log.warning("Lane %s diverged: %s; it is left out of every analysis.", plan[row][0].name, reason)
  states = []
  for i in range(len(plan)):
    head_state = jax.tree.map(lambda x: x[i], final)
    batch_stats = dict(job.trunk_stats)
    if head_state.batch_stats:
      batch_stats[head_training.HEAD] = head_state.batch_stats
    states.append(
      trainer.TrainState(
        step=head_state.step,
        params={head_training.HEAD: head_state.params},
        batch_stats=batch_stats,
        opt_state=head_state.opt_state,
      )
    )
  predictors = {arm.name: inference.lane_predictor(arm.model, int(c.eval.batch_size), arm.frozen, arm.data, states)}
  if c.transfer.lsr_probe:
    probes = lsr_probe.lsr_probes(
      cache[:, 0], arm.data.labels, job.lanes, int(arm.model.num_classes), float(c.transfer.lsr_l2), cv_pool
    )
    predictors[f"{arm.name}{LSR_SUFFIX}"] = probes.probs
  seconds = time.perf_counter() - start
  log.info("Arm %s: %d heads trained on cached features in %.1fs", arm.name, len(plan), seconds)
  record = {
    "path": "frozen_features",
    "why": why,
    "views": job.views,
    "feature_shape": list(cache.shape),
    "lanes": len(plan),
    "seconds": round(seconds, 2),
    "lsr_probe": bool(c.transfer.lsr_probe),
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "diverged_lanes": {plan[row][0].index: reason for row, reason in diverged.items()},
  }
  return FitResult(states, record, predictors, diverged)


def _head_module(arm: ArmSetup):
  """The arm's head as a stand-alone module (the same one the model calls 'fc')."""
  m = arm.model
  return heads.make_head(m.head, m.num_classes, m.head_hidden, m.dtype, name=head_training.HEAD)
