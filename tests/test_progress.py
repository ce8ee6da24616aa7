"""Stage progress on the console and the wall time of each stage."""

import io

import pytest

from jaxcell import progress


class Console(io.StringIO):
  def __init__(self, terminal: bool):
    super().__init__()
    self.terminal = terminal

  def isatty(self):
    return self.terminal


@pytest.fixture
def console(monkeypatch):
  def make(terminal):
    stream = Console(terminal)
    monkeypatch.setattr(progress, "_stream", lambda: stream)
    progress.reset_times()
    progress.configure(True)
    return stream

  yield make
  progress.configure(True)


def test_a_log_gets_a_start_a_periodic_and_an_end_line(console, monkeypatch):
  stream = console(terminal=False)
  clock = iter([0.0, 10.0, 40.0, 41.0, 50.0])  # enter, three updates, exit.
  monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
  with progress.stage("read images", total=100, unit="images") as bar:
    bar.update(10)  # t=10: within the period, no line.
    bar.update(30)  # t=40: a progress line with the rate and ETA.
    bar.set(100)  # t=41: too soon after the last line.
  lines = stream.getvalue().splitlines()
  assert lines[0] == "[read images] started (100 images)"
  assert lines[1].startswith("[read images] 40/100 images (40 %), ETA 1 min 00 s, 1.0 images/s")
  assert lines[2] == "[read images] done: 100 images in 50.0 s" and len(lines) == 3
  assert progress.stage_times() == {"read images": 50.0}


def test_a_terminal_gets_a_bar_and_times_add_up_per_name(console):
  stream = console(terminal=True)
  for arm in ("a", "b"):
    with progress.stage(f"train {arm}", total=4, unit="steps", time_as="train") as bar:
      bar.update(4)
  assert "train a" in stream.getvalue() and "4/4" in stream.getvalue()  # tqdm's own bar.
  assert list(progress.stage_times()) == ["train"]  # Both arms under one name.


def test_a_failed_stage_says_so_and_disabled_progress_prints_nothing(console):
  stream = console(terminal=False)
  with pytest.raises(RuntimeError):
    with progress.timed("features x"):
      raise RuntimeError("boom")
  assert stream.getvalue().splitlines()[-1].startswith("[features x] stopped: in ")
  progress.configure(False)
  quiet = console(terminal=False)
  progress.configure(False)
  with progress.stage("reports"):
    pass
  progress.note("hello")
  assert quiet.getvalue() == "" and "reports" in progress.stage_times()


def test_the_times_line_names_the_rest_other():
  line = progress.times_line({"read images": 6.0, "train": 84.0}, total=100.0)
  assert (
    line == "Where the time went (1 min 40 s): read images 6.0 s (6 %), train 1 min 24 s (84 %), other 10.0 s (10 %)."
  )


def test_quiet_unless_silences_a_block_and_restores(console):
  stream = console(terminal=False)
  with progress.quiet_unless(False):  # e.g. process 1 of a multi-host job
    progress.note("from process 1")
  progress.note("from process 0")
  assert stream.getvalue() == "from process 0\n"
