"""A fake gs:// bucket for tests: `with fake_bucket(root):` serves every `gs://NAME/...` path from `root/NAME/...`.

It behaves like object storage where jaxcell could tell the difference: files cannot be opened for appending
(objects are immutable), and paths are only reachable through etils epath (what jaxcell must use) — `open()`
or `os.path` on a `gs://` string would touch a local folder named `gs:` instead, which the tests look for.
Orbax checkpoints reach the same files: its TensorStore GCS driver spec is pointed at the local folder.
"""

from __future__ import annotations

import contextlib
import os
from unittest import mock

from etils.epath import backend as backend_lib
from etils.epath import gpath
from orbax.checkpoint._src.path import gcs_utils

SCHEME = "gs://"


class BucketBackend(backend_lib._OsPathBackend):  # The os backend, behind a gs:// to local-folder mapping.
  def __init__(self, root: str):
    self.root = root
    self.opened: list[tuple[str, str]] = []  # (path, mode) of every open, for assertions.

  def local(self, path) -> str:
    path = os.fspath(path)
    if not path.startswith(SCHEME):
      raise AssertionError(f"the fake bucket was asked for a non-bucket path {path!r}")
    return os.path.join(self.root, path[len(SCHEME) :])

  def _uri(self, local: str) -> str:
    return SCHEME + os.path.relpath(local, self.root)

  def open(self, path, mode):
    self.opened.append((os.fspath(path), mode))
    if "a" in mode or "+" in mode:
      raise OSError(f"{path}: object storage cannot append to or update an object (mode {mode!r})")
    if "w" in mode:  # Objects need no parent folder.
      os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
    return super().open(self.local(path), mode)

  def exists(self, path):
    return super().exists(self.local(path))

  def isdir(self, path):
    return super().isdir(self.local(path))

  def listdir(self, path):
    return super().listdir(self.local(path))

  def glob(self, path):
    return [self._uri(p) for p in super().glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for folder, dirs, files in super().walk(self.local(top), top_down=top_down, on_error=on_error):
      yield self._uri(folder), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None):
    return super().makedirs(self.local(path), exist_ok=exist_ok)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    return super().mkdir(self.local(path), exist_ok=exist_ok)

  def rmtree(self, path):
    return super().rmtree(self.local(path))

  def remove(self, path):
    return super().remove(self.local(path))

  def rename(self, path, dst):
    return super().rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    return super().replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    return super().copy(self.local(path), self.local(dst), overwrite=overwrite)

  def stat(self, path):
    return super().stat(self.local(path))


@contextlib.contextmanager
def fake_bucket(root: str):
  """Every gs:// path (epath, and orbax's TensorStore writes) lands under `root` while the block runs."""
  bucket = BucketBackend(str(root))

  def tensorstore_spec(path):
    return {"driver": "file", "path": bucket.local(path)}

  with (
    mock.patch.dict(gpath._PREFIX_TO_BACKEND, {"gs": bucket}),
    mock.patch.object(gpath, "_is_tf_installed", lambda: False),  # Else epath sends gs:// to tf.io.gfile.
    mock.patch.object(gcs_utils, "get_kvstore_for_gcs", tensorstore_spec),
    mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False),
  ):
    yield bucket
