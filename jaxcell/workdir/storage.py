"""The one path abstraction for workdirs: a local folder or a Cloud Storage bucket (gs://), through etils epath.

Every read and write of a workdir file goes through an `epath.Path` (`layout.path` returns one) and the helpers
here, never through `open()` or `os.path` on a string, so `--workdir gs://bucket/run` writes into the bucket on
every host instead of into a local folder named `gs:`. epath serves gs:// through TensorFlow's file system (a
dependency already); orbax writes checkpoints to the same paths natively (TensorStore's GCS driver).

Object storage differs from a disk in three ways the helpers hide:
- no append: `append_text` rewrites the object (a workdir's CSVs are small; a local file is appended to);
- an object appears whole when its upload closes, so a remote write is atomic by itself; a local write goes
  through a temporary file and a rename so that a reader (or a killed run) never sees half a file;
- tools that only write local files (matplotlib, TensorBoard's event writer, logging) write into a local
  mirror (`LocalMirror`) that is copied into the workdir at each `sync()`.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import time
from collections.abc import Iterator

from etils import epath

PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
  """An epath.Path for a local path (`~` expanded) or a bucket URI."""
  return epath.Path(os.fspath(path)).expanduser()


def is_local(path: PathLike) -> bool:
  """False for a bucket URI (gs://, s3://, ...), True for a path on this machine's disk."""
  return "://" not in os.fspath(path)


def local_path(path: PathLike) -> str:
  """The path as a local filesystem string, for libraries that take only those; a bucket URI is refused."""
  if not is_local(path):
    raise ValueError(f"{os.fspath(path)} is in object storage; this step needs a local path.")
  return os.fspath(as_path(path))


def read_text(path: PathLike) -> str:
  """The file's text as stored (no newline translation, so CSV quoting survives)."""
  return as_path(path).read_bytes().decode("utf-8")


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes the whole file atomically: a reader sees the old or the new content, never a part."""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    path.write_bytes(data)  # An object becomes visible whole, when its upload completes.
    return
  temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
  temporary.write_bytes(data)
  temporary.replace(path)


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def create_exclusive(path: PathLike, text: str) -> bool:
  """Creates a new file holding `text`; False (nothing written) if it exists. Exclusive on a local disk; in a
  bucket, which has no exclusive create through its file API, checked and then written."""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    if path.exists():
      return False
    path.write_text(text)
    return True
  try:
    fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as handle:
    handle.write(text)
  return True


def csv_text(rows, header=None) -> str:
  """CSV text (the csv module's dialect: quoted where needed, \r\n line ends), header row first if given."""
  buffer = io.StringIO(newline="")
  writer = csv.writer(buffer)
  if header is not None:
    writer.writerow(header)
  writer.writerows(rows)
  return buffer.getvalue()


def dict_csv_text(rows, fieldnames, header: bool = True) -> str:
  """CSV text of dict rows in `fieldnames` order, with the header row unless `header` is False."""
  buffer = io.StringIO(newline="")
  writer = csv.DictWriter(buffer, fieldnames=list(fieldnames))
  if header:
    writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def write_csv(path: PathLike, header, rows) -> None:
  """Writes a whole CSV file atomically (the header even when there are no rows)."""
  write_text(path, csv_text(rows, header))


def csv_rows(text: str) -> Iterator[list[str]]:
  """The rows of CSV text, as lists of cells (the header first)."""
  return csv.reader(io.StringIO(text, newline=""))


def csv_dicts(text: str) -> csv.DictReader:
  """The rows of CSV text after its header, as dicts keyed by it (`.line_num` for messages)."""
  return csv.DictReader(io.StringIO(text, newline=""))


def read_csv(path: PathLike) -> list[dict[str, str]]:
  """A CSV file's rows as dicts keyed by its header."""
  return list(csv_dicts(read_text(path)))


def append_text(path: PathLike, text: str) -> None:
  """Appends to a local file; rewrites an object (object storage cannot append)."""
  path = as_path(path)
  if is_local(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.fspath(path), "a", encoding="utf-8", newline="") as handle:
      handle.write(text)
  else:
    write_text(path, (read_text(path) if path.exists() else "") + text)


def save_figure(figure, path: PathLike, **savefig_kwargs) -> epath.Path:
  """A matplotlib figure saved as PNG to a local or bucket path."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", **savefig_kwargs)
  write_bytes(path, buffer.getvalue())
  return as_path(path)


def copy_file(source: PathLike, destination: PathLike) -> None:
  """Copies one file between any two places (a local image into a bucket workdir, say)."""
  write_bytes(destination, as_path(source).read_bytes())


def walk_files(root: PathLike) -> Iterator[tuple[str, epath.Path]]:
  """(path relative to root with '/' separators, path) for every file under root."""
  root = as_path(root)
  if not root.exists():
    return
  for folder, _, files in root.walk():
    for name in sorted(files):
      path = epath.Path(folder) / name
      yield path.relative_to(root).as_posix(), path


def size_bytes(path: PathLike) -> int:
  """A file's size; a symlink's own size on a local disk (a link into a dataset is not the workdir's bytes)."""
  path = as_path(path)
  return os.lstat(os.fspath(path)).st_size if is_local(path) else path.stat().length


class LocalMirror:
  """A local folder standing in for `destination` for writers that only write local files.

  For a local destination it is the destination itself and `sync` does nothing. For a bucket it is a
  temporary folder; `sync` copies the files changed since the last sync (all of them with `force`, else at most
  every `min_interval_s`), so a log or TensorBoard run can be followed from the bucket while the study runs.
  """

  def __init__(self, destination: PathLike, min_interval_s: float = 30.0):
    self.destination = as_path(destination)
    self.remote = not is_local(self.destination)
    self.min_interval_s = min_interval_s
    if self.remote:
      self._temporary = tempfile.TemporaryDirectory(prefix="jaxcell-mirror-")
      self.local = self._temporary.name
    else:
      self.destination.mkdir(parents=True, exist_ok=True)
      self.local = os.fspath(self.destination)
    self._synced: dict[str, tuple[int, int]] = {}
    self._last_sync = time.monotonic()

  def create(self, name: str):
    """A new file of the mirror's local folder, open for binary writing, for a writer that streams into it
    (TensorBoard's event records)."""
    return open(os.path.join(self.local, name), "xb")  # pylint: disable=consider-using-with

  def sync(self, force: bool = False) -> None:
    if not self.remote or (not force and time.monotonic() - self._last_sync < self.min_interval_s):
      return
    self._last_sync = time.monotonic()
    for relative, path in walk_files(self.local):
      stat = os.stat(os.fspath(path))
      if self._synced.get(relative) != (stat.st_size, stat.st_mtime_ns):
        copy_file(path, self.destination / relative)
        self._synced[relative] = (stat.st_size, stat.st_mtime_ns)

  def close(self) -> None:
    self.sync(force=True)
    if self.remote:
      self._temporary.cleanup()
