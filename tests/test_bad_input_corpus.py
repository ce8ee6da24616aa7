"""The bad-input corpus: a three-class image folder with one defect at a time, and each case's documented outcome.

Outcomes: 'used' (the file is in the dataset), 'skipped' (listed in the dataset's skipped files with a reason
matching the case's pattern), 'error' (a clear ValueError naming the problem, raised before any training).
Whatever the outcome, every entry under the root is either used or listed as skipped: nothing is passed over in
silence (`assert_everything_accounted_for`).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from jaxcell.data import duplicates, scan
from jaxcell.data.folder import read_image_folder

CLASSES = ("a", "b", "c")


def _png(path, array=None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((10, 10, 3), 120, np.uint8) if array is None else array).save(path)


def _base(root) -> None:
  """Three classes of four ordinary, distinct images each."""
  for k, name in enumerate(CLASSES):
    for i in range(4):
      _png(f"{root}/{name}/img{i}.png", np.full((10, 10, 3), 10 * (4 * k + i), np.uint8))


def _tiff(path, array, **kwargs) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tifffile.imwrite(path, array, **kwargs)


def _write(path, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _truncated_png(path) -> None:
  _png(path, np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
  with open(path, "rb") as f:
    data = f.read()
  _write(path, data[: len(data) // 2])


def _outside(root) -> str:
  """A folder of two images outside root (a symbolic link target)."""
  outside = os.path.join(os.path.dirname(root), "outside")
  _png(f"{outside}/far0.png", np.full((10, 10, 3), 201, np.uint8))
  _png(f"{outside}/far1.png", np.full((10, 10, 3), 202, np.uint8))
  return outside


# name -> (make(root), outcome, path or None, pattern)
CASES = {
  "rgb_png": (lambda r: _png(f"{r}/a/x.png", np.full((6, 8, 3), 7, np.uint8)), "used", "a/x.png", ""),
  "grey_png": (lambda r: _png(f"{r}/a/x.png", np.full((6, 6), 9, np.uint8)), "used", "a/x.png", ""),
  "rgba_png": (lambda r: _png(f"{r}/a/x.png", np.full((6, 6, 4), 9, np.uint8)), "used", "a/x.png", ""),
  "sixteen_bit_png": (
    lambda r: Image.fromarray(np.full((6, 6), 3000, np.uint16)).save(f"{r}/a/x.png"),
    "used",
    "a/x.png",
    "",
  ),
  "jpeg": (lambda r: Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(f"{r}/a/x.jpg"), "used", "a/x.jpg", ""),
  "bmp": (lambda r: Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(f"{r}/a/x.bmp"), "used", "a/x.bmp", ""),
  "tiff_8bit_grey": (lambda r: _tiff(f"{r}/a/x.tif", np.full((6, 6), 5, np.uint8)), "used", "a/x.tif", ""),
  "tiff_16bit": (lambda r: _tiff(f"{r}/a/x.tif", np.full((6, 6), 999, np.uint16)), "used", "a/x.tif", ""),
  "tiff_rgb": (lambda r: _tiff(f"{r}/a/x.tif", np.full((6, 6, 3), 5, np.uint8)), "used", "a/x.tif", ""),
  "tiff_rgba_alpha_tagged": (
    lambda r: _tiff(f"{r}/a/x.tif", np.full((6, 6, 4), 5, np.uint8), photometric="rgb"),
    "used",
    "a/x.tif",
    "",
  ),
  "tiff_two_channels": (
    lambda r: _tiff(f"{r}/a/x.tif", np.full((6, 6, 2), 5, np.uint8), photometric="minisblack", planarconfig="contig"),
    "skipped",
    "a/x.tif",
    "2 channels, but data.channels is 3",
  ),
  "tiff_four_channels": (
    lambda r: _tiff(f"{r}/a/x.tif", np.full((6, 6, 4), 5, np.uint8), photometric="minisblack", planarconfig="contig"),
    "skipped",
    "a/x.tif",
    "4 channels, but data.channels is 3",
  ),
  "tiff_multi_page": (
    lambda r: _tiff(f"{r}/a/x.tif", np.zeros((2, 5, 5), np.uint8), photometric="minisblack", metadata=None),
    "skipped",
    "a/x.tif",
    "2 channels, but data.channels is 3",  # Its pages are taken as channels.
  ),
  "truncated_png": (lambda r: _truncated_png(f"{r}/a/x.png"), "skipped", "a/x.png", "truncated or corrupt|cannot"),
  "zero_bytes": (lambda r: _write(f"{r}/a/x.png", b""), "skipped", "a/x.png", "zero-byte file"),
  "not_an_image": (lambda r: _write(f"{r}/a/x.png", b"hello"), "skipped", "a/x.png", "cannot identify image file"),
  "text_file": (
    lambda r: _write(f"{r}/a/notes.txt", b"hello"),
    "skipped",
    "a/notes.txt",
    "not an image file extension",
  ),
  "hidden_file": (lambda r: _png(f"{r}/a/.x.png"), "skipped", "a/.x.png", "hidden file"),
  "hidden_folder": (lambda r: _png(f"{r}/a/.cache/x.png"), "skipped", "a/.cache/", "hidden folder"),
  "file_at_root": (lambda r: _png(f"{r}/x.png"), "skipped", "x.png", "not inside a class folder"),
  "nested_folder": (
    lambda r: _png(f"{r}/a/deep/er/x.png", np.full((6, 6, 3), 3, np.uint8)),
    "used",
    "a/deep/er/x.png",
    "",
  ),
  "odd_names": (
    lambda r: _png(f"{r}/a/<script>alert(1)</script> ü.png", np.full((6, 6, 3), 4, np.uint8)),
    "used",
    "a/<script>alert(1)</script> ü.png",
    "",
  ),
  "symlinked_file": (
    lambda r: os.symlink(os.path.join(_outside(r), "far0.png"), f"{r}/a/linked.png"),
    "used",
    "a/linked.png",
    "",
  ),
  "symlinked_subfolder": (lambda r: os.symlink(_outside(r), f"{r}/a/sub"), "used", "a/sub/far1.png", ""),
  "symlink_at_root_back_to_root": (
    lambda r: os.symlink(r, f"{r}/loop"),
    "skipped",
    "loop/",
    "symbolic link into a folder that is read anyway",
  ),
  "dangling_symlink": (
    lambda r: os.symlink(f"{r}/nowhere.png", f"{r}/a/gone.png"),
    "skipped",
    "a/gone.png",
    "broken symbolic link",
  ),
  "symlink_loop": (
    lambda r: (os.symlink(f"{r}/a/l2.png", f"{r}/a/l1.png"), os.symlink(f"{r}/a/l1.png", f"{r}/a/l2.png")),
    "skipped",
    "a/l1.png",
    "cannot be followed",
  ),
  "symlink_to_a_file_already_read": (
    lambda r: os.symlink(f"{r}/a/img0.png", f"{r}/a/again.png"),
    "skipped",
    "a/again.png",
    "the same file as a/img0.png",
  ),
  "symlink_into_another_class": (
    lambda r: os.symlink(f"{r}/b", f"{r}/a/bees"),
    "skipped",
    "a/bees/",
    "symbolic link into a folder that is read",
  ),
  "empty_class": (lambda r: os.makedirs(f"{r}/d"), "error", None, r"Class folder .*/d' contains no image file"),
  "class_of_only_bad_files": (
    lambda r: _write(f"{r}/d/x.png", b"junk"),
    "error",
    None,
    "Class 'd' .* has no readable image",
  ),
  "single_class": (
    lambda r: [os.rename(f"{r}/{c}", f"{r}/.{c}") for c in ("b", "c")],
    "error",
    None,
    "classification needs at least 2",
  ),
  "no_class_folders": (
    lambda r: [os.rename(f"{r}/{c}", f"{r}/.{c}") for c in CLASSES],
    "error",
    None,
    "No class folders",
  ),
}


def _all_entries(root: str) -> set[str]:
  """Every entry under root as the reader names it (folders that are skipped whole end in '/')."""
  found = set()
  for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
    prefix = "" if rel == "." else f"{rel}/"
    found |= {prefix + f for f in filenames}
    found |= {prefix + d + "/" for d in dirnames}
  return found


def assert_everything_accounted_for(root: str, dataset) -> None:
  """Each entry under root is used, skipped, or a folder that was walked (and so holds used or skipped entries)."""
  used, skipped = set(dataset.paths), {s.path for s in dataset.skipped}
  for entry in _all_entries(root):
    if entry in used or entry in skipped:
      continue
    if entry.endswith("/") and any(p.startswith(entry) for p in used | skipped):
      continue  # A folder that was read.
    if any(entry.startswith(s) for s in skipped if s.endswith("/")):
      continue  # Inside a folder skipped whole (hidden, a link read elsewhere).
    raise AssertionError(f"{entry} is neither used nor listed as skipped")


@pytest.mark.parametrize("case", sorted(CASES))
def test_corpus_case(tmp_path, case):
  make, outcome, path, pattern = CASES[case]
  root = str(tmp_path / "root")
  _base(root)
  make(root)
  if outcome == "error":
    with pytest.raises(ValueError, match=pattern):
      read_image_folder(root, image_size=8, channels=3)
    return
  dataset = read_image_folder(root, image_size=8, channels=3)
  reasons = {s.path: s.reason for s in dataset.skipped}
  if outcome == "used":
    assert path in dataset.paths, (path, reasons)
    assert dataset.images[dataset.paths.index(path)].shape == (8, 8, 3)
  else:
    assert path in reasons, (path, dataset.paths, reasons)
    assert re.search(pattern, reasons[path]), reasons[path]
    assert path not in dataset.paths
  assert len(dataset.class_names) == 3  # No extra class, none lost.
  assert_everything_accounted_for(root, dataset)


def test_the_corpus_is_large_enough():
  assert len(CASES) >= 25


def test_unlistable_folder_is_listed_not_ignored(tmp_path, monkeypatch):
  """os.walk skipped folders it could not list without a word; the scan lists them (permission denied as root
  cannot be produced with chmod, so the listing itself fails here)."""
  root = str(tmp_path / "root")
  _base(root)
  _png(f"{root}/a/locked/x.png")
  real_scandir = os.scandir

  def scandir(path="."):
    if os.fspath(path).endswith("locked"):
      raise PermissionError(13, "Permission denied")
    return real_scandir(path)

  monkeypatch.setattr(scan.os, "scandir", scandir)
  dataset = read_image_folder(root, image_size=8, channels=3)
  assert {s.path: s.reason for s in dataset.skipped}["a/locked/"] == "cannot list this folder (Permission denied)"


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
  root = str(tmp_path / "root")
  _base(root)
  _png(f"{root}/a/huge.png", np.zeros((30, 30, 3), np.uint8))
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 900 pixels > 2 x 100: PIL refuses to decode it.
  dataset = read_image_folder(root, image_size=8, channels=3)
  assert "image too large" in {s.path: s.reason for s in dataset.skipped}["a/huge.png"]


def test_byte_identical_images_are_reported(tmp_path):
  root = str(tmp_path / "root")
  _base(root)
  _png(f"{root}/b/copy_of_a0.png", np.full((10, 10, 3), 0, np.uint8))  # a/img0.png again, in class b.
  _png(f"{root}/a/copy.png", np.full((10, 10, 3), 10, np.uint8))  # a/img1.png again, same class.
  dataset = read_image_folder(root, image_size=8, channels=3)
  groups = duplicates.find_duplicates(root, dataset)
  assert [(g.kind, g.paths) for g in groups] == [
    ("across_classes", ("a/img0.png", "b/copy_of_a0.png")),
    ("within_class", ("a/copy.png", "a/img1.png")),
  ]
  assert "classes a, b" in duplicates.describe(groups[0])


def test_identical_images_in_train_and_test_are_reported(tmp_path):
  root = str(tmp_path / "root")
  for split in ("train", "test"):
    for k, name in enumerate(CLASSES):
      for i in range(3):
        value = 10 * (3 * k + i) + (1 if split == "test" else 0)
        _png(f"{root}/{split}/{name}/{i}.png", np.full((10, 10, 3), value, np.uint8))
  _png(f"{root}/test/a/leak.png", np.full((10, 10, 3), 0, np.uint8))  # train/a/0.png again.
  dataset = read_image_folder(root, image_size=8, channels=3)
  groups = duplicates.find_duplicates(root, dataset)
  assert [(g.kind, g.paths) for g in groups] == [("across_given_splits", ("test/a/leak.png", "train/a/0.png"))]
