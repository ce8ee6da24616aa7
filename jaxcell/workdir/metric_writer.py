"""The metric writer of a run: scalars into TensorBoard event files (tensorboard/ in the workdir) and log lines.

TensorBoard's own framework-free writer (`tensorboard.summary.Writer`) writes the event files. clu's writers did
this before, but importing `clu.metric_writers` imports TensorFlow (its summary writer is TensorFlow's), which
cost a study ~0.7 GB of resident memory and several seconds of start-up for no computation (measured in
README.md, "Time to result"); TensorFlow now loads only for a tensorflow-datasets source.

Each `write_scalars` call also logs one line in clu's format, `[step] key=value, ...` (sorted keys, floats to six
significant digits), so log.txt reads as before. A non-primary host of a multi-host run only logs (`just_logging`):
one host writes the workdir.
"""

from __future__ import annotations

from collections.abc import Mapping

from absl import logging


class MetricWriter:
  """Scalars to TensorBoard event files under `logdir` (a local folder; see storage.LocalMirror) and to the log."""

  def __init__(self, logdir: str | None, *, just_logging: bool = False):
    self._writer = None
    if logdir is not None and not just_logging:
      from tensorboard.summary import Writer  # pylint: disable=import-outside-toplevel

      self._writer = Writer(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    step = int(step)
    values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(scalars.items())]
    logging.info("[%d] %s", step, ", ".join(values))
    if self._writer is not None:
      for tag, value in scalars.items():
        self._writer.add_scalar(tag, float(value), step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
