"""The metric writer of a run: scalars into TensorBoard event files (tensorboard/ in the workdir) and log lines.

TensorBoard's framework-free writer (`tensorboard.summary.Writer`) builds the events, and `EventFile` below writes
them to a plain local file with TensorBoard's record framing. clu's writers did this before, but importing
`clu.metric_writers` imports TensorFlow (its summary writer is TensorFlow's), and so does TensorBoard's own
`DirectoryOutput` on its first write (its file goes through `tf.io.gfile`): ~0.5-0.7 GB of resident memory and
seconds of start-up for no computation (measured in README.md, "Time to result"). TensorFlow now loads only for
a tensorflow-datasets source.

Each `write_scalars` call also logs one line in clu's format, `[step] key=value, ...` (sorted keys, floats to six
significant digits), so log.txt reads as before. A non-primary host of a multi-host run only logs (`just_logging`):
one host writes the workdir.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Mapping

from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary import Output, Writer
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from jaxcell.workdir import storage


_SERIAL = itertools.count()  # Two writers of one process in one second still get their own files.


class EventFile(Output):
  """Scalars as an events.out.tfevents.* file in `folder` (a storage.LocalMirror): TFRecord-framed `Event` protos,
  a version record first, each scalar with its plugin's metadata -- what TensorBoard's DirectoryOutput writes."""

  def __init__(self, folder: storage.LocalMirror):
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_SERIAL)}.jaxcell"
    self._records = RecordWriter(folder.create(name))
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def emit_scalar(self, *, plugin_name, tag, data, step, wall_time, tag_metadata=None, description=None):
    metadata = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name, content=tag_metadata),
      summary_description=description,
      data_class=summary_pb2.DataClass.DATA_CLASS_SCALAR,
    )
    event = event_pb2.Event(wall_time=wall_time, step=step)
    event.summary.value.add(tag=tag, tensor=tensor_util.make_tensor_proto(data), metadata=metadata)
    self._write(event)

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()


class MetricWriter:
  """Scalars to a TensorBoard event file in `folder` (the workdir's tensorboard/, through its local mirror) and to
  the log."""

  def __init__(self, folder: storage.LocalMirror | None, *, just_logging: bool = False):
    self._writer = None
    if folder is not None and not just_logging:
      self._writer = Writer(EventFile(folder))

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
