"""`python -m jaxcell.main --dry_run`: the plan of a study, checked and estimated, without training or writing.

It runs the study's own input checks (every config field and arm, the data read or taken from the workdir's cache,
the splits), then says what would run: images per class and split, arms and their lanes, steps per lane, which
training path each arm takes and why, and rough estimates of memory and time. Nothing is written, not even the
workdir.

The estimates are arithmetic, not measurements:
- memory: the images on the device, each lane's model state (parameters, gradients, Adam's two moments, in
  float32), and activations estimated from XLA's cost analysis of one forward pass (bytes accessed per image x
  batch), for every lane of an arm at once (the 'vmap' strategy; 'loop' needs one lane's share);
- time: training FLOPs (3 x the forward pass per image for a trained trunk, 1 x for cached trunk features) over
  a matmul rate measured here for half a second, at 10-40 % of it (small convolutional models reach 15-60 % on CPU
  in this project's benchmark, the demo ~17 %); compilation (10-60 s per arm) comes on top.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcell import models, progress, study
from jaxcell.bench import peak
from jaxcell.data import loading
from jaxcell.data import splits as splits_lib
from jaxcell.training import cached_heads, engine_setup, interface
from jaxcell.training import lanes as lanes_lib

_UTILISATION = (0.10, 0.40)  # The demo (quarter-width ResNet-18, 64 px) trains at ~17 % on a 2-core CPU.
_STATE_COPIES = 4  # Parameters, gradients and Adam's two moments.
_PEAK_SECONDS = 0.5


@dataclasses.dataclass
class ArmPlan:
  name: str
  description: str
  path: str  # 'cached features' or 'full model'.
  why: str
  lanes: int
  steps: list[int]  # Per lane.
  forward_flops: float  # One image.
  forward_bytes: float  # One image, as XLA counts bytes accessed.
  state_bytes: int  # One lane's parameters and statistics, float32.
  batch_size: int
  views: int  # Feature views per image on the cached path.
  feature_dim: int  # Size of the pooled trunk features (the cached path keeps them for every image and view).


def plan_study(config, workdir: str) -> str:
  """The plan as text; raises ValueError (like the study) for a config or data that would not run."""
  arm_configs, dataset, splits = study.check_inputs(config, workdir)
  lanes = lanes_lib.make_lanes(arm_configs, splits.num_folds)
  plans = [_arm_plan(name, c, dataset, splits, lanes) for name, c in arm_configs.items()]
  rate = peak.measure_matmul_peak(seconds=_PEAK_SECONDS)
  lines = [f"Dry run: nothing trained, nothing written ({workdir} is left as it is).", ""]
  lines += _data_lines(config, dataset, splits)
  lines += ["", f"Arms ({len(plans)}), {len(lanes)} lanes (models) in all:"]
  for p in plans:
    lines += _arm_lines(p)
  lines += ["", *_estimate_lines(plans, dataset, rate)]
  return "\n".join(lines)


def _arm_plan(name, c, dataset, splits, lanes) -> ArmPlan:
  model = models.build_model(c.model, dataset.num_classes)
  shape = (c.data.image_size, c.data.image_size, dataset.images.shape[-1])
  init = engine_setup.make_init(model, shape, None)  # Shapes only: converted weights are not read here.
  variables = jax.eval_shape(init, jax.random.key(0, impl=lanes_lib.INIT_PRNG))
  setup = interface.ArmSetup(name, c, model, init, {}, None)
  cached, why = cached_heads.applies(setup)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).cost_analysis() or {}
  _, sown = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]), variables, x)
  pooled = sown.get("intermediates", {}).get("pooled")
  arm_lanes = [lane for lane in lanes if lane.arm == name]
  steps = [
    engine_setup.total_steps(c, len(lanes_lib.lane_indices(lane, splits, dataset.labels)[0])) for lane in arm_lanes
  ]
  weights = f"weights {c.transfer.weights}" if c.transfer.weights else "random init"
  preset = f", preset {c.transfer.preset}" if c.transfer.preset else ""
  return ArmPlan(
    name=name,
    description=f"{c.model.name} (width {c.model.width}) from {weights}{preset}; {c.data.image_size} px",
    path="cached features" if cached else "full model",
    why=why,
    lanes=len(arm_lanes),
    steps=steps,
    forward_flops=float(cost.get("flops", 0.0)),
    forward_bytes=float(cost.get("bytes accessed", 0.0)),
    state_bytes=sum(int(np.prod(a.shape)) * 4 for a in jax.tree.leaves(variables)),
    batch_size=int(c.train.batch_size),
    views=cached_heads.num_views(c),
    feature_dim=int(np.prod(pooled[0].shape[1:])) if pooled else 0,
  )


def _data_lines(config, dataset, splits) -> list[str]:
  names = dataset.class_names
  holdout = np.bincount(dataset.labels[splits.holdout], minlength=len(names))
  pool = np.bincount(dataset.labels[splits.cv_pool], minlength=len(names))
  train, test = splits_lib.fold_indices(splits, 0, 0)
  train_counts = np.bincount(dataset.labels[train], minlength=len(names))
  test_counts = np.bincount(dataset.labels[test], minlength=len(names))
  lines = [
    f"Data: {loading.source_text(config.data)}: {len(dataset)} images, {len(names)} classes, "
    f"{len(dataset.skipped)} files skipped{_first_skip(dataset)}.",
    f"Protocol: {splits.num_folds} fold(s) x {splits.num_repeats} repeat(s) x {config.protocol.num_seeds} seed(s); "
    f"training-set sizes per class {[('all' if n is None else n) for n in config.protocol.n_per_class]}.",
    "",
    "| class | images | global holdout | CV pool | fold 0 train | fold 0 test |",
    "|---|---|---|---|---|---|",
  ]
  for k, name in enumerate(names):
    row = [dataset.class_counts[k], holdout[k], pool[k], train_counts[k], test_counts[k]]
    lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |")
  return lines


def _first_skip(dataset) -> str:
  if not dataset.skipped:
    return ""
  return f" (e.g. {dataset.skipped[0].path}: {dataset.skipped[0].reason}; all listed when the study runs)"


def _arm_lines(p: ArmPlan) -> list[str]:
  steps = f"{min(p.steps)}" if min(p.steps) == max(p.steps) else f"{min(p.steps)}-{max(p.steps)}"
  return [
    f"- {p.name}: {p.description}",
    f"  {p.lanes} lanes, {steps} steps each of batch {p.batch_size}; path: {p.path} ({p.why})",
  ]


def _training_flops(p: ArmPlan, num_images: int) -> float:
  if p.path == "cached features":  # The trunk runs once per image and view; the heads' cost is negligible.
    return p.forward_flops * num_images * p.views
  return 3.0 * p.forward_flops * p.batch_size * sum(p.steps)


def _estimate_lines(plans: list[ArmPlan], dataset, rate: dict) -> list[str]:
  flops = sum(_training_flops(p, len(dataset)) for p in plans)
  gflops = rate["gflops"]
  fast, slow = (flops / (gflops * 1e9 * u) for u in reversed(_UTILISATION))
  images = dataset.images.nbytes
  arm_bytes = [
    p.lanes * (p.state_bytes * _STATE_COPIES + int(p.forward_bytes * p.batch_size))
    if p.path == "full model"
    else len(dataset) * p.views * p.feature_dim * 4 + p.state_bytes  # The feature cache and the shared trunk.
    for p in plans
  ]
  return [
    "Estimates (arithmetic, see jaxcell/dry_run.py; not measurements):",
    f"- memory: about {_gib(images + max(arm_bytes))} on the device at the largest arm "
    f"(images {_gib(images)}, model states and activations of all its lanes at once {_gib(max(arm_bytes))})",
    f"- time: {flops / 1e12:.2f} TFLOP of training; at 10-40 % of this {rate['backend']} device's measured "
    f"matmul rate ({gflops:.0f} GFLOP/s) that is {progress.duration(fast)} to {progress.duration(slow)}, plus compilation "
    "(10-60 s per arm) and evaluation",
  ]


def _gib(num_bytes: float) -> str:
  return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**28 else f"{num_bytes / 2**20:.0f} MiB"
