"""Finding the images of a folder (root/<class>/<image>, or root/{train,test,holdout}/<class>/<image>).

Every entry under root is either a candidate image or a `SkippedFile` with its reason; nothing is passed over in
silence. Symbolic links are followed where that reads each image once: a link to a file is read like the file
(unless it points at a file that is already read, which would count one image twice), a link to a folder is walked
unless it points back into a folder already walked (e.g. a link to root, which would make an extra class of
duplicates). Broken links, link loops and folders that cannot be listed are skipped with the reason.
"""

from __future__ import annotations

import os

from jaxcell.data.dataset import SkippedFile
from jaxcell.data.decode import IMAGE_EXTENSIONS

SPLIT_NAMES = ("train", "test", "holdout")
EXPECTED_LAYOUT = (
  "Expected root/<class>/<image> (e.g. root/healthy/a.png, root/infected/b.png) or "
  "root/{train,test,holdout}/<class>/<image>."
)

Candidate = tuple[str, str, "str | None"]  # (path relative to root, class, given split)


def _link_problem(path: str) -> str | None:
  """Why a symbolic link cannot be followed, or None when its target exists."""
  try:
    os.stat(path)
  except FileNotFoundError:
    return f"broken symbolic link (its target {os.readlink(path)!r} does not exist)"
  except OSError as e:  # ELOOP: a link that points to itself, directly or through others.
    return f"symbolic link that cannot be followed ({e.strerror or e}; a link loop?)"
  return None


class _Walker:
  """Walks folders below root, remembering every real folder walked so that a link cannot lead into one again."""

  def __init__(self, root: str):
    self.root = root
    self.seen_dirs = {os.path.realpath(root)}
    self.skipped: list[SkippedFile] = []
    self.reserved: list[str] = []

  def reserve(self, folders: list[str]) -> None:
    """Class folders are walked in their own right: no link elsewhere may lead into them."""
    self.reserved = [os.path.realpath(f) for f in folders]

  def _follow(self, entry: os.DirEntry) -> bool:
    """Whether a symbolic link to a folder leads somewhere new; if not it is skipped with the reason."""
    real = os.path.realpath(entry.path)
    inside = lambda folder: real == folder or real.startswith(folder + os.sep)  # noqa: E731
    real_root = os.path.realpath(self.root)
    clash = next((f for f in [*self.seen_dirs, *self.reserved] if inside(f)), None)
    if clash is None and real_root.startswith(real + os.sep):
      clash = real  # A link to a folder above root would read root again.
    if clash is None:
      return True
    if clash == real_root:
      where = "the image root"
    else:
      where = self.relative(clash) if clash.startswith(real_root + os.sep) else clash
    self.skipped.append(
      SkippedFile(
        f"{self.relative(entry.path)}/", f"symbolic link into a folder that is read anyway ({where}); not read twice"
      )
    )
    return False

  def relative(self, path: str) -> str:
    return os.path.relpath(path, self.root).replace(os.sep, "/")

  def entries(self, folder: str) -> list[os.DirEntry]:
    """The entries of a folder, sorted by name; a folder that cannot be listed is skipped with the reason."""
    try:
      with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)
    except OSError as e:
      self.skipped.append(SkippedFile(f"{self.relative(folder)}/", f"cannot list this folder ({e.strerror or e})"))
      return []

  def classify(self, entry: os.DirEntry) -> str | None:
    """'dir', 'file', or None with the entry skipped (hidden, broken link, link back into a walked folder)."""
    path = self.relative(entry.path)
    if entry.name.startswith("."):
      self.skipped.append(
        SkippedFile(f"{path}/" if entry.is_dir() else path, "hidden " + ("folder" if entry.is_dir() else "file"))
      )
      return None
    if entry.is_symlink():
      problem = _link_problem(entry.path)
      if problem:
        self.skipped.append(SkippedFile(path, problem))
        return None
    if entry.is_dir():
      if entry.is_symlink() and not self._follow(entry):
        return None
      self.seen_dirs.add(os.path.realpath(entry.path))
      return "dir"
    if entry.is_file():
      return "file"
    self.skipped.append(SkippedFile(path, "not a regular file or folder (device, socket or pipe)"))
    return None

  def files_under(self, folder: str) -> list[str]:
    """Image files under folder (relative to root, recursively); other files are skipped with the reason."""
    images = []
    for entry in self.entries(folder):
      kind = self.classify(entry)
      if kind == "dir":
        images += self.files_under(entry.path)
      elif kind == "file":
        path = self.relative(entry.path)
        extension = os.path.splitext(entry.name)[1].lower()
        if extension in IMAGE_EXTENSIONS:
          images.append(path)
        else:
          reason = f"not an image file extension ({extension or 'none'}); expected one of {', '.join(IMAGE_EXTENSIONS)}"
          self.skipped.append(SkippedFile(path, reason))
    return images


def scan_folder(root: str) -> tuple[list[str], list[Candidate], list[SkippedFile]]:
  """(class names, candidate images (path, class, split) in sorted order, skipped entries) of an image folder."""
  walker = _Walker(root)
  top = {"dir": [], "file": []}
  for entry in walker.entries(root):
    kind = walker.classify(entry)
    if kind:
      top[kind].append(entry)
  walker.skipped += [SkippedFile(e.name, "not inside a class folder") for e in top["file"]]
  top_names = [e.name for e in top["dir"]]
  if not top_names:
    raise ValueError(f"No class folders in {root!r}. {EXPECTED_LAYOUT}")
  if set(top_names) <= set(SPLIT_NAMES) and "train" in top_names:
    class_folders = []
    for split_entry in top["dir"]:
      for entry in walker.entries(split_entry.path):
        kind = walker.classify(entry)
        if kind == "file":
          walker.skipped.append(SkippedFile(walker.relative(entry.path), f"not inside a class folder of {entry.name}/"))
        elif kind == "dir":
          class_folders.append((entry.path, entry.name, split_entry.name))
  else:
    class_folders = [(e.path, e.name, None) for e in top["dir"]]

  walker.reserve([folder for folder, _, _ in class_folders])
  candidates = []
  for folder, class_name, split in sorted(class_folders, key=lambda f: walker.relative(f[0])):
    images = walker.files_under(folder)
    if not images:
      raise ValueError(
        f"Class folder {folder!r} contains no image file ({', '.join(IMAGE_EXTENSIONS)}); add images or remove "
        "the folder."
      )
    candidates += [(path, class_name, split) for path in images]
  class_names = sorted({class_name for _, class_name, _ in class_folders})
  if len(class_names) < 2:
    raise ValueError(
      f"Found {len(class_names)} class folder(s) {class_names} in {root!r}; "
      f"classification needs at least 2. {EXPECTED_LAYOUT}"
    )
  candidates, duplicates = _without_linked_duplicates(root, sorted(candidates))
  return class_names, candidates, walker.skipped + duplicates


def _without_linked_duplicates(root: str, candidates: list[Candidate]) -> tuple[list[Candidate], list[SkippedFile]]:
  """Drops (and lists) images reached through a symbolic link that are the same file as one already read: one image
  is one sample. A file reached without any link is kept first."""
  real_root = os.path.realpath(root)
  real = {path: os.path.realpath(os.path.join(root, path)) for path, _, _ in candidates}
  direct = {path: real[path] == os.path.join(real_root, *path.split("/")) for path in real}
  first: dict[str, str] = {}
  for path in sorted(real, key=lambda p: (not direct[p], p)):
    first.setdefault(real[path], path)
  kept, skipped = [], []
  for candidate in candidates:
    path = candidate[0]
    if first[real[path]] != path:
      skipped.append(
        SkippedFile(path, f"the same file as {first[real[path]]} (through a symbolic link); not read twice")
      )
    else:
      kept.append(candidate)
  return kept, skipped
