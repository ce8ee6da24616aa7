"""The study benchmark: BioNIC's 20 models (5 folds × 4 repeats), ResNet-18, batch 8 per model.

For each image size and training mode (frozen trunk = BioNIC's ResNet_all, or full fine-tune) it times,
in one process on one machine: jaxcell's lane engine with its chosen strategy, jaxcell's one-lane-at-
a-time loop, and a PyTorch reference training the same 20 models one after another (as BioNIC does).
It reports lane-steps/s, images/s, the ratios, compile time, peak memory, and achieved GFLOP/s
against a matmul peak measured on the same machine (bf16 MFU on accelerators).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcell import config as config_lib
from jaxcell.bench import flops as flops_lib
from jaxcell.bench import peak
from jaxcell.data import synthetic
from jaxcell import models
from jaxcell.training import autotune, cached_heads, engine, engine_setup, trainer
from jaxcell.training import lanes as lanes_lib
from jaxcell.training import mesh as mesh_lib
from jaxcell.training.interface import ArmSetup

log = logging.getLogger(__name__)

# Dense bf16 peak TFLOP/s of accelerators we may run on (vendor figures), for MFU.
MODELS = ("resnet18", "efficientnet_lite0")  # The per-step modes' models.

NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5e": 197.0}


@dataclasses.dataclass
class Case:
  image_size: int
  frozen_trunk: bool
  model: str = "resnet18"  # One of MODELS (EfficientNet-Lite0 timed from random init: the same work).
  lanes: int = 20
  batch_size: int = 8
  width: float = 1.0
  steps: int = 4  # Timed steps per lane, after the compile.
  dtype: str = "float32"
  # 'running' = the frozen trunk keeps its BatchNorm statistics fixed, so jaxcell trains on cached features.
  trunk_bn: str = "batch"
  cached_steps: int = 240  # Steps per lane of the cached-feature job (BioNIC: 8 epochs x ~30 batches).
  cached_views: int = 8  # Augmentation views cached per image.

  @property
  def name(self) -> str:
    model = "" if self.model == "resnet18" else f"{self.model} "
    if self.trunk_bn == "running":
      return f"{model}{self.image_size}px frozen trunk, fixed BN (cached features)"
    return f"{model}{self.image_size}px {'frozen trunk' if self.frozen_trunk else 'full fine-tune'}"


def _config(case: Case) -> config_lib.ConfigDict:
  c = config_lib.base_config()
  if case.model not in MODELS:
    raise ValueError(f"model must be one of {MODELS}, got {case.model!r}.")
  c.model.name, c.model.head, c.model.dtype = case.model, "bionic_mlp", case.dtype
  c.model.width = case.width if case.model == "resnet18" else 1.0  # Lite0 has no width multiplier.
  c.train.frozen = "^(?!fc/)" if case.frozen_trunk else ""  # ResNet_all: everything but the head.
  c.model.trunk_bn = case.trunk_bn
  c.train.batch_size, c.train.learning_rate = case.batch_size, 1e-3
  c.augment.rotation_degrees, c.augment.hflip, c.augment.vflip = 90.0, True, True
  return c


def _dataset(case: Case):
  return synthetic.make_synthetic_cells(images_per_class=24, image_size=case.image_size, seed=0)


def _arm_and_plan(case: Case, steps: int) -> tuple[ArmSetup, list, np.ndarray]:
  """The benchmark's arm and its 20 BioNIC lanes (5 folds × 4 repeats), each trained on the images outside its
  fold for `steps` steps, built by the same set-up functions a study uses (engine_setup)."""
  c = _config(case)
  data_np = _dataset(case)
  model = models.build_model(c.model, len(data_np.class_names))
  init = engine_setup.make_init(model, data_np.images.shape[1:])
  data = trainer.DeviceData(
    jnp.asarray(data_np.images), jnp.asarray(data_np.labels, jnp.int32), jnp.full(3, 0.5), jnp.full(3, 0.25)
  )
  arm = ArmSetup("bench", c, model, init, engine_setup.shared_frozen(init, int(c.seed), c.train.frozen), data)
  n = len(data_np.labels)
  plan = []
  for i in range(case.lanes):
    lane = lanes_lib.Lane(i, arm.name, 0, i // 5, i % 5, None, float(c.train.learning_rate), 0.0)
    plan.append((lane, np.flatnonzero(np.arange(n) % 5 != lane.fold), steps))
  return arm, plan, data_np.labels


# A study runs its lanes in compiled chunks of this many steps (config default); the benchmark reports
# jaxcell's rate in such chunks: per-chunk costs (mapN's and the loop's state copies) spread over them.
STUDY_CHUNK_STEPS = int(config_lib.base_config().train.steps_per_chunk)


def prepare_jaxcell(case: Case, strategy: engine.Strategy | None) -> tuple[dict[str, Any], Callable[[], tuple]]:
  """Builds, autotunes (strategy None) and compiles the engine for `case` as a study would; returns (info, timed),
  where timed() trains every lane one chunk of `case.steps` steps, then one of twice as many, and returns both
  times in seconds (their difference separates the cost per step from the cost per chunk)."""
  arm, plan, labels = _arm_and_plan(case, 10**6)  # Budgets that never end: every chunk runs unmasked.
  c = arm.config
  c.engine.strategy = "auto" if strategy is None else strategy.name
  c.engine.autotune_cache = ""  # The benchmark times the candidates itself, every run.
  mesh = mesh_lib.make_mesh(int(c.engine.data_parallel))
  batch = engine_setup.place_lanes(arm, engine_setup.initial_states(arm, [p[0] for p in plan]), labels, plan, mesh)
  num_classes = int(arm.model.num_classes)
  strategy, trials, _, _ = engine_setup.choose_strategy(c, num_classes, batch, mesh)
  # Unmasked chunks, as a study runs all but its last chunk.
  recipe = engine_setup.make_recipe(c, num_classes, strategy.conv_impl)
  # One program, as a study compiles it for its chunks, called for case.steps and twice as many.
  runner = engine.make_runner(recipe, strategy, max(STUDY_CHUNK_STEPS, 2 * case.steps), mesh, masked=False)

  def run(steps: int) -> float:
    start = time.perf_counter()
    batch.states, metrics = runner(*batch.args(steps))
    jax.block_until_ready(batch.states)
    seconds = time.perf_counter() - start
    assert np.isfinite(np.asarray(metrics["loss"])[..., :steps]).all(), "training diverged in the benchmark"
    return seconds

  timed = lambda: tuple(run(steps) for steps in (case.steps, 2 * case.steps))
  first = timed()  # Compile + one chunk, each length.
  info = {
    "strategy": strategy.name,
    "autotune": trials,
    "first_call_seconds": sum(first),
  }
  return info, timed


def _rates(case: Case, timings: list[tuple[float, float]]) -> dict[str, Any]:
  """Lane-steps/s and images/s in a study's chunks, from the medians of repeated timings of a chunk of
  `case.steps` and one of twice as many steps of every lane."""
  short, long = (float(np.median([t[i] for t in timings])) for i in (0, 1))
  step_seconds, chunk_seconds = autotune.split_chunk_seconds(short, case.steps, long, 2 * case.steps)
  rate = case.lanes * STUDY_CHUNK_STEPS / (chunk_seconds + STUDY_CHUNK_STEPS * step_seconds)
  return {
    "lane_steps_per_s": rate,
    "images_per_s": rate * case.batch_size,
    "step_seconds": step_seconds,  # One step of every lane.
    "chunk_seconds": chunk_seconds,  # Per chunk call, beyond its steps.
    "chunk_steps": STUDY_CHUNK_STEPS,
    "measured_lane_steps_per_s": case.lanes * case.steps / short,  # As timed, in chunks of case.steps.
    "seconds": [list(t) for t in timings],
    "median_seconds": [short, long],
  }


def time_jaxcell_cached(case: Case) -> dict[str, Any]:
  """The whole job of the cached-feature path, timed end to end (compiles included) as a study runs it
  (cached_heads' set-up, extraction and head training): trunk features of every image x view once, then every
  lane's head trained for `case.cached_steps` steps. Rates are over the whole job."""
  arm, plan, labels = _arm_and_plan(case, case.cached_steps)
  arm.config.transfer.feature_views = case.cached_views
  job = cached_heads.prepare_heads(arm, labels, plan)
  start = time.perf_counter()
  cache = jax.block_until_ready(cached_heads.extract_features(arm, job))
  feature_seconds = time.perf_counter() - start
  start = time.perf_counter()
  states, losses = cached_heads.train_heads(arm, job, cache)
  jax.block_until_ready(states)
  head_seconds = time.perf_counter() - start
  assert np.isfinite(losses).all(), "training diverged in the benchmark"
  lane_steps, seconds = case.lanes * case.cached_steps, feature_seconds + head_seconds
  return {
    "strategy": f"cached features ({job.views} views)",
    "autotune": [],
    "lane_steps_per_s": lane_steps / seconds,
    "images_per_s": lane_steps * case.batch_size / seconds,
    "compile_seconds": None,
    "feature_seconds": feature_seconds,
    "head_seconds": head_seconds,
    "job": f"{case.lanes} lanes x {case.cached_steps} steps, {len(labels)} images x {job.views} views",
  }


def time_torch(case: Case) -> dict[str, Any] | None:
  """The PyTorch reference, or None (with the reason logged) when torch is not installed."""
  try:
    from jaxcell.bench import torch_reference  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    log.warning("Skipping the PyTorch reference: %s", e)
    return None
  data_np = _dataset(case)
  out = torch_reference.train_models_sequentially(
    data_np.images,
    data_np.labels,
    num_models=case.lanes,
    steps=case.steps + 1,
    batch_size=case.batch_size,
    width=case.width,
    frozen_trunk=case.frozen_trunk,
    head="bionic_mlp",
    trunk_bn=case.trunk_bn,
    dtype=case.dtype,
    model=case.model,
  )
  return {
    k: out[k]
    for k in ("lane_steps_per_s", "images_per_s", "threads", "torch_version", "device", "dtype", "cpu_capability")
  }


def run_case(
  case: Case,
  matmul_peak_gflops: float,
  with_torch: bool = True,
  strategy: engine.Strategy | None = None,
  repeats: int = 3,
) -> dict[str, Any]:
  """Times jaxcell (`strategy`, None = autotune), jaxcell's loop and the PyTorch reference on one case.

  The three are timed `repeats` times in turn (jaxcell, loop, torch, jaxcell, ...) and each reports its
  median, so a slow spell of a shared machine lands on all of them rather than skewing one ratio.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}.")
  flops = (  # Counted analytically for ResNet-18 only.
    flops_lib.flops_per_image_resnet18(case.image_size, case.width, case.frozen_trunk, head="bionic_mlp", num_classes=6)
    if case.model == "resnet18"
    else None
  )
  result: dict[str, Any] = {"case": case.name, **dataclasses.asdict(case), "flops_per_image": flops, "repeats": repeats}
  cached = case.trunk_bn == "running"
  timers = {}
  if not cached:
    timers["jaxcell"] = prepare_jaxcell(case, strategy)
  # When jaxcell's choice is the loop, both rows are one program: its timings are pooled for both, rather than
  # reporting run-to-run noise (up to 18 % on a shared CPU) as a difference between them.
  same_program = not cached and timers["jaxcell"][0]["strategy"] == "loop"
  if same_program:
    timers["jaxcell_loop"] = ({**timers["jaxcell"][0], "autotune": []}, timers["jaxcell"][1])
  else:
    timers["jaxcell_loop"] = prepare_jaxcell(case, engine.Strategy("loop"))  # The trunk every step, lane by lane.
  runs: dict[str, list] = {"jaxcell": [], "jaxcell_loop": [], "torch": []}
  for _ in range(repeats):
    runs["jaxcell"].append(time_jaxcell_cached(case) if cached else timers["jaxcell"][1]())
    runs["jaxcell_loop"].append(timers["jaxcell_loop"][1]())
    if with_torch:
      runs["torch"].append(time_torch(case))
  if same_program:
    runs["jaxcell"] = runs["jaxcell_loop"] = runs["jaxcell"] + runs["jaxcell_loop"]
  if cached:  # Whole jobs: report the one with the median rate.
    result["jaxcell"] = sorted(runs["jaxcell"], key=lambda r: r["lane_steps_per_s"])[(repeats - 1) // 2]
  else:
    info = timers["jaxcell"][0]
    result["jaxcell"] = {**info, **_rates(case, runs["jaxcell"])}
  loop_info = timers["jaxcell_loop"][0]
  result["jaxcell_loop"] = {**loop_info, **_rates(case, runs["jaxcell_loop"]), "same_program_as_jaxcell": same_program}
  for key in ("jaxcell", "jaxcell_loop"):
    r = result[key]
    if "first_call_seconds" in r:
      r["compile_seconds"] = max(r["first_call_seconds"] - sum(r["median_seconds"]), 0.0)
  torch_runs = [t for t in runs["torch"] if t]
  result["torch"] = None
  if torch_runs:
    rates = [t["lane_steps_per_s"] for t in torch_runs]
    median = float(np.median(rates))
    result["torch"] = {
      **torch_runs[0],
      "lane_steps_per_s": median,
      "images_per_s": median * case.batch_size,
      "lane_steps_per_s_runs": rates,
    }
  for key in ("jaxcell", "jaxcell_loop"):
    r = result[key]
    if (cached and key == "jaxcell") or flops is None:  # The trunk ran once per view, or no FLOP count.
      r["gflops"] = r["fraction_of_matmul_peak"] = None
    else:
      r["gflops"] = r["images_per_s"] * flops / 1e9
      r["fraction_of_matmul_peak"] = r["gflops"] / matmul_peak_gflops
    if result["torch"]:
      r["speedup_vs_torch"] = r["lane_steps_per_s"] / result["torch"]["lane_steps_per_s"]
  result["peak_memory"] = peak.peak_memory_bytes()
  return result


def nominal_peak_tflops() -> float | None:
  kind = jax.devices()[0].device_kind
  return next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in kind), None)
