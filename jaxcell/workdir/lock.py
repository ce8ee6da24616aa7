"""One run per workdir: `workdir/run.lock` names the process that holds it (pid, host, start time).

A second run on the same workdir is refused with the holder's pid and host. A lock left by a run that was killed
(its pid no longer exists on this host) is stale and taken over. A lock from another host cannot be checked from
here: the message says how to remove it when that run is known to be gone.

On a local disk the lock is taken with an exclusive create. A bucket (gs://...) offers no exclusive create
through its file API, so there the lock is checked, then written: it still refuses a second run started once the
first holds it, but two runs started in the same second could both get it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

from jaxcell.workdir import layout, storage


class WorkdirLockedError(ValueError):
  """Another live run holds the workdir."""


def _holder(path) -> dict | None:
  try:
    return json.loads(storage.read_text(path))
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # Half-written or damaged: its writer died between creating and filling it.


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Exists, owned by someone else.
  return True


def _is_stale(holder: dict) -> bool:
  if not holder:
    return True
  if holder.get("host") != socket.gethostname():
    return False
  pid = holder.get("pid")
  return not isinstance(pid, int) or (pid != os.getpid() and not _alive(pid))


def acquire(workdir: str):
  """Takes workdir's lock (creating the folder's lock file); returns its path. Raises WorkdirLockedError."""
  path = layout.path(workdir, layout.LOCK)
  record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
  for _ in range(3):  # A stale lock is removed, then the exclusive create is tried again.
    if not storage.create_exclusive(path, json.dumps(record)):
      holder = _holder(path)
      if holder is None:
        continue  # Released meanwhile.
      if not _is_stale(holder):
        raise WorkdirLockedError(
          f"{workdir} is in use by another jaxcell run (pid {holder.get('pid')} on host {holder.get('host')}, "
          f"started {holder.get('started')}). Wait for it to finish or use another --workdir. If that run is gone "
          f"(e.g. its machine was stopped), delete {path}."
        ) from None
      path.unlink(missing_ok=True)
      continue
    return path
  raise WorkdirLockedError(f"Could not take the lock {path}: other runs keep creating it.")


def release(path) -> None:
  holder = _holder(path)
  if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def held(workdir: str) -> Iterator:
  """`with lock.held(workdir):` — the workdir is this process's until the block ends (however it ends)."""
  path = acquire(workdir)
  try:
    yield path
  finally:
    release(path)
