"""Workdirs in object storage: every workdir file goes through workdir/storage.py's epath helpers.

The whole study in a (fake) bucket is tests/test_study.py's `test_a_bucket_workdir_...`; these are the parts."""

import os
import re

import pytest
from bucket_helpers import fake_bucket

from jaxcell import config as config_lib
from jaxcell import study, validation
from jaxcell.workdir import layout, lock, results, storage

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxcell")
LOCAL_FILE_CALLS = re.compile(
  r"\bos\.path\.|\bopen\(|\bos\.(makedirs|replace|rename|remove|walk|listdir|scandir|stat)\(|\bshutil\.|\bpathlib\b"
)
# Modules that only touch workdir files: no local-file call at all (storage.py is the one that may).
WORKDIR_ONLY = [
  "workdir",
  "reporting",
  "analysis",
  "training/checkpoints.py",
  "training/full_model.py",
  "training/fit.py",
]
# Local files that are not the workdir's: the browser that screenshots a local report.
EXEMPT = {"workdir/storage.py", "reporting/screenshot.py"}


def _modules(entry):
  path = os.path.join(PACKAGE, entry)
  if path.endswith(".py"):
    return [entry]
  return [f"{entry}/{name}" for name in sorted(os.listdir(path)) if name.endswith(".py")]


def test_no_local_file_call_touches_a_workdir_path():
  offences = []
  for module in [m for entry in WORKDIR_ONLY for m in _modules(entry) if m not in EXEMPT]:
    with open(os.path.join(PACKAGE, module)) as f:
      offences += [f"{module}:{n}: {line.strip()}" for n, line in enumerate(f, 1) if LOCAL_FILE_CALLS.search(line)]
  # Elsewhere (inputs such as image folders are local files), a local-file call may not name a workdir path.
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      module = os.path.relpath(os.path.join(folder, name), PACKAGE)
      if name.endswith(".py") and module not in EXEMPT:
        with open(os.path.join(folder, name)) as f:
          for n, line in enumerate(f, 1):
            if LOCAL_FILE_CALLS.search(line) and re.search(r"workdir|layout\.|ckpt|checkpoint", line):
              offences.append(f"{module}:{n}: {line.strip()}")
  assert sorted(set(offences)) == [], "workdir paths must go through jaxcell/workdir/storage.py"


def test_the_grep_catches_a_local_file_call():
  assert LOCAL_FILE_CALLS.search('with open(layout.path(workdir, "x")) as f:')
  assert LOCAL_FILE_CALLS.search("os.path.exists(path)")
  assert not LOCAL_FILE_CALLS.search("storage.write_text(path, text)")


def test_files_round_trip_through_a_bucket_without_appending_to_objects(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with fake_bucket(tmp_path / "bucket") as bucket:
    path = storage.as_path("gs://lab/run/results.csv")
    rows = [
      {
        "arm": "main",
        "lane": 0,
        "seed": 0,
        "repeat": 0,
        "fold": 0,
        "n_per_class": None,
        "split": "test",
        "num_images": 4,
      }
    ]
    results.append_rows(path, [dict(rows[0], accuracy=0.5)])
    results.append_rows(path, [dict(rows[0], lane=1, accuracy=0.75)])  # The object is rewritten, never appended.
    assert [r["accuracy"] for r in results.read_rows(path)] == [0.5, 0.75]
    assert not [mode for _, mode in bucket.opened if "a" in mode]
    storage.write_csv("gs://lab/run/x.csv", ["path", "reason"], [["a,b.png", 'say "no"\nthen stop']])
    assert storage.read_csv("gs://lab/run/x.csv") == [{"path": "a,b.png", "reason": 'say "no"\nthen stop'}]
    assert sorted(rel for rel, _ in storage.walk_files("gs://lab/run")) == ["results.csv", "x.csv"]
    assert os.path.isfile(tmp_path / "bucket" / "lab" / "run" / "results.csv")
  assert not os.path.exists(tmp_path / "gs:")  # Nothing went to a local folder named after the URI.


def test_a_local_mirror_copies_files_into_the_bucket(tmp_path):
  with fake_bucket(tmp_path / "bucket"):
    mirror = storage.LocalMirror("gs://lab/run/tensorboard", min_interval_s=3600)
    assert mirror.remote and not mirror.local.startswith("gs:")
    with open(os.path.join(mirror.local, "events.1"), "w") as f:
      f.write("one")
    mirror.sync()  # Within min_interval_s: nothing copied yet.
    assert not storage.as_path("gs://lab/run/tensorboard/events.1").exists()
    mirror.sync(force=True)
    assert storage.read_text("gs://lab/run/tensorboard/events.1") == "one"
    with open(os.path.join(mirror.local, "events.1"), "a") as f:
      f.write(" two")
    local = mirror.local
    mirror.close()  # Forces a last sync and removes the local copy.
    assert storage.read_text("gs://lab/run/tensorboard/events.1") == "one two"
    assert not os.path.exists(local)


def test_a_bucket_workdir_is_locked_against_a_second_run(tmp_path):
  with fake_bucket(tmp_path / "bucket"):
    path = lock.acquire("gs://lab/run")
    assert str(path) == "gs://lab/run/run.lock" and path.exists()
    path.write_text('{"pid": 1, "host": "another-host", "started": "x"}')
    with pytest.raises(lock.WorkdirLockedError, match="another-host"):
      lock.acquire("gs://lab/run")
    path.unlink()
    lock.release(lock.acquire("gs://lab/run"))
    assert not path.exists()


def test_the_image_cache_stays_on_the_host_for_a_bucket_workdir(tmp_path):
  c = config_lib.base_config()
  assert study.image_cache_dir(c, str(tmp_path)) == str(tmp_path / layout.CACHE)
  assert study.image_cache_dir(c, "gs://lab/run") == os.path.expanduser(study.HOST_IMAGE_CACHE)
  c.data.cache_dir = str(tmp_path / "images")
  assert study.image_cache_dir(c, "gs://lab/run") == str(tmp_path / "images")
  c.data.cache_dir = ""
  assert study.image_cache_dir(c, "gs://lab/run") is None
  c.data.cache_dir = "gs://lab/cache"
  with pytest.raises(ValueError, match="data.cache_dir"):
    validation.check_config(c)
