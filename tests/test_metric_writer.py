"""The run's metric writer: TensorBoard reads its scalars back, log.txt gets clu's line format, and a study's
command line does not load TensorFlow (it costs ~0.7 GB of memory and seconds; only a tfds source needs it)."""

import logging
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from jaxcell.workdir import metric_writer, storage


def test_tensorboard_reads_the_scalars_back(tmp_path, caplog):
  writer = metric_writer.MetricWriter(storage.LocalMirror(tmp_path))
  with caplog.at_level(logging.INFO):
    writer.write_scalars(3, {"train_loss/lane_0000": 0.25, "b": 2})
    writer.write_scalars(7, {"train_loss/lane_0000": 0.125})
  writer.close()
  events = plugin_event_accumulator.EventAccumulator(str(tmp_path))  # What TensorBoard's UI reads.
  events.Reload()
  assert events.SummaryMetadata("train_loss/lane_0000").plugin_data.plugin_name == "scalars"
  read = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors("train_loss/lane_0000")]
  assert read == [(3, 0.25), (7, 0.125)]
  assert [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors("b")] == [2.0]
  assert "[3] b=2, train_loss/lane_0000=0.25" in caplog.messages


def test_just_logging_writes_no_event_file(tmp_path, caplog):
  writer = metric_writer.MetricWriter(storage.LocalMirror(tmp_path), just_logging=True)
  with caplog.at_level(logging.INFO):
    writer.write_scalars(1, {"x": 1.5})
  writer.flush()
  writer.close()
  assert list(tmp_path.iterdir()) == []
  assert "[1] x=1.5" in caplog.messages


@pytest.mark.parametrize("module", ["jaxcell.main", "jaxcell.pretrain", "jaxcell.api"])
def test_the_programs_and_the_writer_do_not_import_tensorflow(module, tmp_path):
  code = (
    f"import sys, {module}\n"
    "from jaxcell.workdir import metric_writer, storage\n"
    f"writer = metric_writer.MetricWriter(storage.LocalMirror({str(tmp_path)!r}))\n"
    "writer.write_scalars(1, {'loss': 0.5})\n"
    "writer.close()\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'clu')))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]"
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
