"""Progress of a study's long stages on the console, and the wall time of each stage.

  with progress.stage("read images", total=len(paths), unit="images") as bar:
    for path in paths:
      ...
      bar.update()

On a terminal each stage is a tqdm bar (count, rate, ETA). Anywhere else (CI, a log file, a notebook's captured
stderr) a stage is one line when it starts, a line every PERIOD_SECONDS while it runs and one when it ends, so a
log stays short. `note` prints a line between bars. Wall times add up per stage name (`stage_times`); the study
records them in engine.json and summary.md ("where the time went").

This module imports nothing of jaxcell but host_memory (each stage hands the memory it freed back to the
system as it ends), so every layer may report progress.
"""

from __future__ import annotations

import contextlib
import sys
import time

from tqdm import tqdm

from jaxcell import host_memory

PERIOD_SECONDS = 30.0  # Non-terminal output: at most one progress line per stage this often.

_times: dict[str, float] = {}
_settings = {"enabled": True}


def configure(enabled: bool = True) -> None:
  """Console progress on (the default) or off (stage times are kept either way)."""
  _settings["enabled"] = enabled


@contextlib.contextmanager
def quiet_unless(condition: bool):
  """Console progress off inside the block unless `condition` (e.g. only process 0 of a multi-host job reports)."""
  before = _settings["enabled"]
  _settings["enabled"] = before and condition
  try:
    yield
  finally:
    _settings["enabled"] = before


def reset_times() -> None:
  _times.clear()


def stage_times() -> dict[str, float]:
  """{stage: seconds}, in the order the stages first ran."""
  return dict(_times)


def _stream():
  return sys.stderr


def _is_terminal() -> bool:
  stream = _stream()
  return bool(getattr(stream, "isatty", lambda: False)())


def note(message: str) -> None:
  """A line on the console (above any bar), e.g. where the results are."""
  if _settings["enabled"]:
    tqdm.write(message, file=_stream())


class Stage:
  """One long stage: counts work done, shows it, and records its wall time when it ends."""

  def __init__(self, name: str, total: float | None = None, unit: str = "it", time_as: str | None = None):
    self.name, self.total, self.unit = name, total, unit
    self.time_as = time_as or name  # The name its wall time is recorded under (e.g. 'train' for every arm).
    self.done = 0
    self._bar = None
    self._start = self._last_line = 0.0

  def __enter__(self) -> Stage:
    self._start = self._last_line = time.monotonic()
    if _settings["enabled"]:
      if _is_terminal():
        self._bar = tqdm(total=self.total, desc=self.name, unit=self.unit, file=_stream(), dynamic_ncols=True)
      else:
        size = f" ({_count(self.total)} {self.unit})" if self.total else ""
        print(f"[{self.name}] started{size}", file=_stream(), flush=True)
    return self

  def update(self, amount: float = 1) -> None:
    self.set(self.done + amount)

  def set(self, done: float) -> None:
    """Sets the work done so far (for stages that count in their own terms, e.g. steps of all lanes)."""
    step, self.done = done - self.done, done
    if self._bar is not None:
      self._bar.update(step)
      return
    now = time.monotonic()
    if _settings["enabled"] and now - self._last_line >= PERIOD_SECONDS:
      self._last_line = now
      print(f"[{self.name}] {self._status(now)}", file=_stream(), flush=True)

  def _status(self, now: float) -> str:
    elapsed = now - self._start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    text = f"{_count(self.done)}"
    if self.total:
      text += f"/{_count(self.total)} {self.unit} ({100 * self.done / self.total:.0f} %)"
      if rate > 0 and self.done < self.total:
        text += f", ETA {duration((self.total - self.done) / rate)}"
    else:
      text += f" {self.unit}"
    speed = f"{rate:.1f} {self.unit}/s" if rate >= 0.1 or rate == 0 else f"{duration(1 / rate)} per {self.unit}"
    return text + f", {speed}, {duration(elapsed)} so far"

  def __exit__(self, *exc) -> None:
    host_memory.release_free_memory()  # What the stage freed (compiler memory, host copies) leaves the process.
    elapsed = time.monotonic() - self._start
    _times[self.time_as] = _times.get(self.time_as, 0.0) + elapsed
    if self._bar is not None:
      self._bar.close()
    elif _settings["enabled"]:
      outcome = "stopped" if exc and exc[0] is not None else "done"
      amount = f"{_count(self.done)} {self.unit} " if self.done else ""
      print(f"[{self.name}] {outcome}: {amount}in {duration(elapsed)}", file=_stream(), flush=True)


def stage(name: str, total: float | None = None, unit: str = "it", time_as: str | None = None) -> Stage:
  return Stage(name, total, unit, time_as)


@contextlib.contextmanager
def timed(name: str, time_as: str | None = None):
  """A stage with nothing to count: only its start, end and wall time."""
  with Stage(name, time_as=time_as) as s:
    yield s


def _count(value: float | None) -> str:
  return "?" if value is None else f"{int(value):,}" if float(value).is_integer() else f"{value:.1f}"


def duration(seconds: float) -> str:
  """'42.0 s', '3 min 05 s', '2 h 10 min': every wall time jaxcell prints."""
  if seconds < 60:
    return f"{seconds:.1f} s"
  if seconds < 3600:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
  return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def times_line(times: dict[str, float], total: float) -> str:
  """'Where the time went (3 min 40 s): read images 3.1 s (1 %), train 3 min 10 s (86 %), ..., other ...' for
  summary.md and the report; 'other' is the rest of `total` (set-up, weights, compilation outside the stages)."""
  other = total - sum(times.values())
  items = {**times, "other": other} if other > 0.05 * total else dict(times)
  share = lambda s: f" ({100 * s / total:.0f} %)" if total > 0 else ""  # noqa: E731
  parts = [f"{name} {duration(seconds)}{share(seconds)}" for name, seconds in items.items()]
  return f"Where the time went ({duration(total)}): " + ", ".join(parts) + "."
