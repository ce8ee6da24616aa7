"""Choosing a lane strategy by timing the candidates on the actual model, shapes, lanes and backend.

Each candidate is compiled for a short chunk, checked against the device's memory, and timed on copies
of the real inputs; the fastest that fits wins. What was tried, and why a candidate lost, is returned
so the study can record it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable

import jax
import numpy as np

from jaxcell.training import engine

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Trial:
  strategy: str
  compile_seconds: float = float("nan")  # Compilation (plus the first call, for the Python loop).
  step_seconds: float = float("nan")  # Wall time of one step of every lane.
  memory_bytes: int | None = None  # XLA's estimate: arguments + outputs + temporaries.
  error: str = ""


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


def _estimated_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # Not every backend reports it.
    return None


def _copy(batch: engine.LaneBatch) -> engine.LaneBatch:
  return dataclasses.replace(batch, states=jax.tree.map(lambda x: x.copy(), batch.states))


def time_strategy(
  make_runner: Callable[[engine.Strategy], engine.Runner],
  strategy: engine.Strategy,
  batch: engine.LaneBatch,
  repeats: int = 2,
  slower_than: float = float("inf"),
) -> Trial:
  """Compiles, sizes and times one strategy on a copy of the batch (the real states are untouched).

  A candidate whose first timed call already takes longer than `slower_than` seconds per step is not
  timed again: it has lost, and on CPU a losing strategy (vmapped lax.conv) can be 10x slower.
  """
  trial = Trial(strategy.name)
  args = lambda b: (b.states, b.frozen, b.raw_keys, b.data, b.lanes)
  try:
    runner = make_runner(strategy)
    trial_batch = _copy(batch)
    times = []
    precompiled = hasattr(runner, "lower")
    start = time.perf_counter()
    if precompiled:  # Compile apart, so that the first call is already a timing.
      compiled = runner.lower(*args(trial_batch)).compile()
      trial.memory_bytes = _estimated_bytes(compiled)
      runner = compiled
      trial.compile_seconds = time.perf_counter() - start
      start = time.perf_counter()
    out = runner(*args(trial_batch))  # The loop strategy compiles here, on its first call.
    jax.block_until_ready(out)
    num_steps = np.asarray(out[1]["loss"]).shape[-1]
    if precompiled:
      times.append(time.perf_counter() - start)
    else:
      trial.compile_seconds = time.perf_counter() - start  # Compilation plus one call.
    while len(times) < repeats and not (times and times[-1] / num_steps > slower_than):
      trial_batch.states = out[0]
      start = time.perf_counter()
      out = runner(*args(trial_batch))
      jax.block_until_ready(out)
      times.append(time.perf_counter() - start)
    trial.step_seconds = min(times) / num_steps  # The fastest call: least disturbed by other processes.
  except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: the candidate just loses.
    trial.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
  return trial


def choose(
  make_runner: Callable[[engine.Strategy], engine.Runner],
  batch: engine.LaneBatch,
  strategies: list[engine.Strategy],
  skip: dict[str, str] | None = None,
) -> tuple[engine.Strategy, list[Trial]]:
  """Times every candidate but those in `skip` (name -> reason, recorded as the trial's error); returns the
  fastest that ran and fits in memory, and all trials."""
  limit = device_memory_bytes()
  trials = []
  for strategy in strategies:
    if strategy.name in (skip or {}):
      trials.append(Trial(strategy.name, error=skip[strategy.name]))
      continue
    best = min((t.step_seconds for t in trials if not t.error), default=float("inf"))
    trial = time_strategy(make_runner, strategy, batch, slower_than=2 * best)
    if not trial.error and trial.memory_bytes is not None and trial.memory_bytes > limit:
      trial.error = f"needs {trial.memory_bytes / 2**30:.1f} GiB, device has {limit / 2**30:.1f} GiB"
    log.info(
      "autotune %-8s compile %.1fs, %.4fs per step of all lanes %s",
      trial.strategy,
      trial.compile_seconds,
      trial.step_seconds,
      trial.error,
    )
    trials.append(trial)
  ok = [(t.step_seconds, s) for t, s in zip(trials, strategies) if not t.error]
  if not ok:
    raise RuntimeError("No lane strategy could run: " + "; ".join(f"{t.strategy}: {t.error}" for t in trials))
  return min(ok, key=lambda pair: pair[0])[1], trials
