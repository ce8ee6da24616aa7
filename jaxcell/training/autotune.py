"""Choosing a lane strategy by timing the candidates on the actual model, shapes, lanes and backend.

Each candidate is compiled once for the study's chunks (their step count is an argument), checked against the device's
memory, and timed on the real inputs (a copy of the lanes' states, or the states themselves when the study can rebuild
them afterwards or train on from the winner's steps) in chunks of one step and of a few. The two lengths separate what a
chunk costs per step from what it costs once per call: `mapN` and `loop` copy every lane's state in and out each chunk
(1.3-2 s per chunk of 20 ResNet-18 lanes at 64 px on CPU, more than a step), so one-step timings ranked `loop` below
`vmap`, although it ran a study's 50-step chunk 17 % faster. The winner is the fastest that fits for the chunk length
the study runs; its compiled program is what the study trains with. Candidates are not timed once the training left is
too short to repay a trial, or the trial would take autotune past its share of the study (`not_worth_timing`). What was
tried, and why a candidate lost or was not timed, is returned so the study can record it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from typing import Any, Callable

import jax
import numpy as np

from jaxcell import host_memory, progress
from jaxcell.training import engine
from jaxcell.training import mesh as mesh_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Trial:
  strategy: str
  compile_seconds: float = float("nan")  # Compilation (for the loop: its first call).
  step_seconds: float = float("nan")  # Wall time of one more step of every lane in a chunk.
  chunk_seconds: float = float("nan")  # Wall time of a chunk call beyond its steps (state copies, dispatch).
  memory_bytes: int | None = None  # XLA's estimate: arguments + outputs + temporaries.
  error: str = ""
  seconds: float = 0.0  # Wall time of the whole trial: what timing this candidate cost.
  trained_steps: int = 0  # Steps its calls ran on the study's own states (0 when it timed a copy).
  kept: bool = False  # The study trains on from those steps (the one candidate that trained its states won).
  runner: Any = dataclasses.field(default=None, repr=False)  # The compiled runner (kept for the winner only).
  losses: Any = dataclasses.field(default=None, repr=False)  # [lanes, trained_steps]: the losses of those steps.

  def record(self) -> dict:
    """The trial as engine.json and the autotune cache keep it (no compiled program, no losses)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("runner", "losses")}

  def seconds_per_step(self, chunk_steps: int) -> float:
    """Predicted wall time per step of every lane in chunks of `chunk_steps` steps."""
    return self.step_seconds + self.chunk_seconds / chunk_steps


def candidates(num_lanes: int, backend: str | None = None) -> list[engine.Strategy]:
  """The strategies worth trying: all four families, the expected winner first."""
  backend = backend or jax.default_backend()
  chunked = engine.Strategy("map", max(1, -(-num_lanes // 4)))  # Four rounds of a quarter of the lanes.
  order = ["vmap", "loop", "vmap_xla"] if backend == "cpu" else ["vmap_xla", "vmap", "loop"]
  return [engine.Strategy.parse(order[0]), chunked, *[engine.Strategy.parse(k) for k in order[1:]]]


def known_losers(trainable_params, backend: str | None = None) -> dict[str, str]:
  """Candidates not worth timing, with the reason, for lanes whose trainable parameters are `trainable_params`
  (stacked over lanes).

  On CPU, vmapped `lax.conv` over per-lane (trainable) kernels is a grouped convolution: 282 s per step of
  20 ResNet-18 lanes at 128 px against 3.6 s for im2col, so even one timed call would cost minutes. With a
  frozen trunk its kernels are shared and it is an ordinary convolution, so it is still tried.
  """
  backend = backend or jax.default_backend()
  per_lane_kernels = any(np.ndim(x) >= 5 for x in jax.tree.leaves(trainable_params))  # [lanes, kh, kw, in, out]
  if backend == "cpu" and per_lane_kernels:
    return {
      "vmap_xla": "not timed: per-lane conv kernels make vmapped lax.conv a grouped convolution, 10-100x slower on CPU"
    }
  return {}


def device_memory_bytes() -> int:
  """Memory one device may use: the accelerator's limit, or 80 % of the host's RAM on CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)


def host_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, Any]:
  """The host processor: {'model', 'cores', 'vector_isa' ('avx512', 'avx2' or 'unknown')}: part of the key of
  autotune's cached decisions, and of every benchmark report.

  A ratio against the CPU PyTorch reference depends on it, not only on the matmul peak: on a 2-core AMD EPYC
  with AVX-512 the reference trained the 64 px ResNet-18 fine-tune at 11-12 lane-steps/s, on an AVX2 one at
  6.7-7.2, while XLA's float32 matmul peak was 187-192 GFLOP/s on both.
  """
  model, flags = platform.processor() or "unknown", set()
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
          break
  except OSError:  # Not Linux: the model from `platform` is all there is.
    pass
  isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "unknown"
  return {"model": model, "cores": os.cpu_count(), "vector_isa": isa}


def _estimated_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # Not every backend reports it.
    return None


def _copy(batch: engine.LaneBatch) -> engine.LaneBatch:
  return dataclasses.replace(batch, states=jax.tree.map(lambda x: x.copy(), batch.states))


def split_chunk_seconds(short: float, short_steps: int, long: float, long_steps: int) -> tuple[float, float]:
  """(seconds per step, seconds per chunk beyond its steps) from the times of chunks of two lengths.

  Timing noise can make the difference exceed the long chunk itself; neither part is negative."""
  step = min(max(long - short, 0.0) / (long_steps - short_steps), long / long_steps)
  return step, max(short - step * short_steps, 0.0)


def _time_calls(
  runner, batch: engine.LaneBatch, steps: int, repeats: int, slower_than: float, losses: list | None = None
) -> list[float]:
  """Seconds of up to `repeats` chunks of `steps` steps on `batch` (whose states they advance); stops after a call
  slower than `slower_than`. Each call's losses ([lanes, steps]) are appended to `losses` if given."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    batch.states, metrics = runner(*batch.args(steps))
    jax.block_until_ready((batch.states, metrics))
    times.append(time.perf_counter() - start)
    if losses is not None:
      losses.append(mesh_lib.to_host(metrics["loss"])[:, :steps])
    if times[-1] > slower_than:
      break
  return times


def time_strategy(
  make_runner: Callable[[engine.Strategy, int], engine.Runner],
  strategy: engine.Strategy,
  batch: engine.LaneBatch,
  chunk_steps: int,
  long_chunk: int = 3,
  repeats: int = 2,
  slower_than: float = float("inf"),
  on_copy: bool = True,
) -> Trial:
  """Compiles, sizes and times one strategy's runner for the study's chunks of `chunk_steps`, called for 1 and
  `long_chunk` steps (its step count is an argument: one compile serves both, and the study), on a copy of the
  batch (the real states are untouched) or, with `on_copy=False`, on the batch itself (its states train).
  step_seconds is the difference per extra step; chunk_seconds the rest.
  The compiled runner is kept on the trial, for the study to train with if it wins.

  A candidate whose one-step chunk already takes longer than `slower_than` seconds is not timed further (that
  time is recorded as its step time): it has lost, and on CPU a losing strategy (vmapped lax.conv) can be 10x
  slower.
  """
  if long_chunk < 2:
    raise ValueError(f"engine.autotune_steps={long_chunk}; use >= 2 (chunks of 1 and of this many steps are timed).")
  trial = Trial(strategy.name)
  start = time.perf_counter()
  losses = None if on_copy else []  # The study's own steps: their losses are the study's too.
  try:
    trial_batch = _copy(batch) if on_copy else batch
    runner = make_runner(strategy, chunk_steps)
    if hasattr(runner, "lower"):  # Compiled apart, so that the first call is already a timing.
      runner = runner.lower(*trial_batch.args(1)).compile()
      trial.memory_bytes = _estimated_bytes(runner)
      host_memory.release_free_memory()  # The compiler's working memory, before the program's own is allocated.
    else:  # The loop compiles its one-lane program on its first call.
      _time_calls(runner, trial_batch, 1, 1, float("inf"), losses)
    trial.compile_seconds = time.perf_counter() - start
    short = min(_time_calls(runner, trial_batch, 1, repeats, slower_than, losses))  # The fastest: least disturbed.
    trial.runner = runner
    if short > slower_than:
      trial.step_seconds, trial.chunk_seconds = short, 0.0
      return trial
    long = min(_time_calls(runner, trial_batch, long_chunk, repeats, float("inf"), losses))
    trial.step_seconds, trial.chunk_seconds = split_chunk_seconds(short, 1, long, long_chunk)
  except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: the candidate just loses.
    trial.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    trial.runner = None
  finally:
    trial.seconds = time.perf_counter() - start
    if losses:
      trial.losses = np.concatenate(losses, axis=1)
      trial.trained_steps = int(trial.losses.shape[1])
  return trial


# The most a candidate has gained over the expected winner in a study's chunks on CPU once known losers are
# skipped (loop vs vmap, 20 ResNet-18 lanes at 64 px, 50-step chunks: 17 %; map2 vs vmap, 5 lanes: -8 %), rounded
# up; elsewhere (cuDNN's lax.conv against im2col) gains can be several-fold, so every candidate is worth timing.
MOST_GAIN = {"cpu": 0.2}

# A candidate's trial cost, relative to the dearest trial so far: a `mapN` program compiles the vmapped body and the
# lax.map around it, about twice a `vmap` trial (ResNet-18, 5 lanes at 64 px on CPU: 71.6 vs 36.8 s and 93.3 vs
# 43.5 s on a 2-core AMD EPYC with AVX2, 63 vs 34 s on a Sapphire Rapids).
TRIAL_COST_FACTOR = {"map": 2.0}

# The most of a study autotune may take on CPU, where the candidates' speeds are close: a further trial is not
# started when it would take autotune past this share of the study (predicted as autotune + training). A small
# study then trains with the first candidate (5 ResNet-18 lanes, 4 epochs at 64 px on a 2-core AVX2 host: `vmap`'s
# trial 35 s, `loop`'s 39 s and lost, against ~180 s of training); a longer one can still afford the others.
AUTOTUNE_SHARE = {"cpu": 0.2}


def choose(
  make_runner: Callable[[engine.Strategy, int], engine.Runner],
  batch: engine.LaneBatch,
  strategies: list[engine.Strategy],
  chunk_steps: int,
  skip: dict[str, str] | None = None,
  long_chunk: int = 3,
  total_steps: int | None = None,
  rebuild_states: Callable[[], None] | None = None,
  fewest_steps_left: int | None = None,
) -> tuple[engine.Strategy, list[Trial]]:
  """Times every candidate but those in `skip` (name -> reason, recorded as the trial's error); returns the
  fastest per step in chunks of `chunk_steps` that ran and fits in memory, and all trials. The winner's trial
  keeps its compiled runner (`Trial.runner`), the others' are dropped.

  With `total_steps` (the steps of the longest lane still to train), a candidate is not timed once the training
  predicted with the best so far is too short to repay it: MOST_GAIN of it is less than the dearest trial so far cost,
  or the trial would take autotune past AUTOTUNE_SHARE of the study.

  make_runner(strategy, num_steps) builds a runner for chunks of up to num_steps steps.

  With `rebuild_states` (which places the lanes' states on `batch` again, as the study first made them: initialised
  from their keys or restored), the trials train the batch's own states, which are rebuilt afterwards, instead of a
  copy: autotune then holds no second copy of every lane's parameters and optimiser state (5 ResNet-18 lanes with
  Adam: 0.68 GB, the cold run's peak above a warm one's).

  When the winner is the only candidate that trained them and no lane went past its budget (`fewest_steps_left`,
  the steps left of the lane with fewest: the trials run unmasked), the states are not rebuilt: the study trains on
  from the winner's steps, which are its own first steps (each step's batch and augmentation come from the lane's
  key and step number), and the winner is marked `kept` with their losses. On CPU, where one candidate is usually
  all that is worth timing, that saves placing the states again and training those steps twice (5 ResNet-18
  lanes at 64 px: ~1.5 s and 8 steps, ~2.5 s)."""
  limit = device_memory_bytes()
  trials = []
  with progress.stage("autotune", total=len(strategies), unit="strategies") as bar:
    for strategy in strategies:
      trial = _trial(
        make_runner, strategy, batch, chunk_steps, skip or {}, long_chunk, limit, trials, total_steps, rebuild_states
      )
      trials.append(trial)
      if rebuild_states is not None and _deleted(batch.states):  # A failed call after the runner took them.
        _rebuild(batch, rebuild_states)
      host_memory.release_free_memory()  # The trial's copy of the states and its compiler memory.
      bar.update()
  ok = [(t.seconds_per_step(chunk_steps), s, t) for t, s in zip(trials, strategies) if not t.error]
  _, best, winner = min(ok, key=lambda triple: triple[0]) if ok else (None, None, None)
  if rebuild_states is not None:
    trained = [t for t in trials if t.trained_steps]
    if trained == [winner] and fewest_steps_left is not None and winner.trained_steps <= fewest_steps_left:
      winner.kept = not _deleted(batch.states)
    if not winner or not winner.kept:
      _rebuild(batch, rebuild_states)
  if not ok:
    raise RuntimeError("No lane strategy could run: " + "; ".join(f"{t.strategy}: {t.error}" for t in trials))
  for trial in trials:
    if trial is not winner:
      trial.runner = None  # Only the winner's program stays in memory.
  return best, trials


def not_worth_timing(
  trials: list[Trial], chunk_steps: int, total_steps: int | None, backend: str, strategy: engine.Strategy | None = None
) -> str:
  """Why another candidate (`strategy`) is not worth timing ('' if it is): the training left, predicted with the
  best trial so far, is too short for the most a faster strategy could save to repay what its trial costs, or
  the trial would take autotune past AUTOTUNE_SHARE of the study."""
  timed = [t for t in trials if not t.error]
  if total_steps is None or not timed or backend not in MOST_GAIN:
    return ""
  training = min(t.seconds_per_step(chunk_steps) for t in timed) * total_steps
  # A trial costs at least what the dearest one so far did, times what this kind's compile adds.
  cost = max(t.seconds for t in timed) * TRIAL_COST_FACTOR.get(strategy.kind if strategy else "", 1.0)
  if MOST_GAIN[backend] * training < cost:
    return (
      f"not timed: the training is predicted to take {training:.0f} s with the best so far; a faster strategy could "
      f"save at most {100 * MOST_GAIN[backend]:.0f} % of it, less than its trial would cost ({cost:.0f} s)"
    )
  autotune, share = sum(t.seconds for t in trials) + cost, AUTOTUNE_SHARE.get(backend, 1.0)
  if autotune > share * (autotune + training):
    return (
      f"not timed: its trial ({cost:.0f} s) would take autotune to {autotune:.0f} s, more than "
      f"{100 * share:.0f} % of a study predicted to take {autotune + training:.0f} s "
      "(autotune + training with the best so far)"
    )
  return ""


def _deleted(states) -> bool:
  return any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(states))


def _rebuild(batch: engine.LaneBatch, rebuild_states: Callable[[], None]) -> None:
  """The trained (or lost) states dropped first, then the study's own placed again: never both in memory."""
  batch.states = None
  host_memory.release_free_memory()
  rebuild_states()
  host_memory.release_free_memory()  # The host stack the states were placed from (heap pages, 0.4-0.7 GB).


def _trial(
  make_runner, strategy, batch, chunk_steps, skip: dict, long_chunk, limit, trials, total_steps, rebuild_states=None
) -> Trial:
  """One candidate timed (or skipped with its reason), given the trials before it."""
  if strategy.name in skip:
    return Trial(strategy.name, error=skip[strategy.name])
  if why := not_worth_timing(trials, chunk_steps, total_steps, jax.default_backend(), strategy):
    return Trial(strategy.name, error=why)
  best = min((t.seconds_per_step(chunk_steps) for t in trials if not t.error), default=float("inf"))
  # A one-step chunk may be all per-chunk cost, spread over chunk_steps steps in a study: it has lost only
  # when it takes longer than two of the best's whole chunks.
  trial = time_strategy(
    make_runner,
    strategy,
    batch,
    chunk_steps,
    long_chunk,
    slower_than=2 * best * chunk_steps,
    on_copy=rebuild_states is None,
  )
  if not trial.error and trial.memory_bytes is not None and trial.memory_bytes > limit:
    trial.error = f"needs {trial.memory_bytes / 2**30:.1f} GiB, device has {limit / 2**30:.1f} GiB"
  log.info(
    "autotune %-8s compile %.1fs, %.4fs per step of all lanes + %.4fs per chunk: %.4fs per step in chunks of %d %s",
    trial.strategy,
    trial.compile_seconds,
    trial.step_seconds,
    trial.chunk_seconds,
    trial.seconds_per_step(chunk_steps),
    chunk_steps,
    trial.error,
  )
  return trial
