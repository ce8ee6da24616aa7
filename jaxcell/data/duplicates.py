"""Byte-identical images, found by content hash before any training: the same file in two classes (a labelling
error, or a leak), across a given train/ and test/ (or holdout/) split (a leak into the test set), or twice in one
class (two copies can land in a CV training fold and its test fold)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os

from jaxcell.data import channel_files
from jaxcell.data.dataset import Dataset

KINDS = ("across_classes", "across_given_splits", "within_class")


@dataclasses.dataclass(frozen=True)
class DuplicateGroup:
  kind: str  # One of KINDS (the most serious that applies).
  sha256: str
  paths: tuple[str, ...]  # Relative to the dataset root, sorted.
  classes: tuple[str, ...]  # The class of each path.


def file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def find_duplicates(root: str, dataset: Dataset, channel_pattern: str = "") -> list[DuplicateGroup]:
  """Groups of dataset images whose files are byte-identical (every channel file, for images grouped by
  `channel_pattern`), most serious kind first."""
  by_digest = collections.defaultdict(list)
  files = channel_files.image_files(root, dataset.paths, channel_pattern) if channel_pattern else {}
  for i, path in enumerate(dataset.paths):
    if channel_pattern:
      digest = hashlib.sha256("".join(file_digest(os.path.join(root, f)) for f in files[path]).encode()).hexdigest()
    else:
      digest = file_digest(os.path.join(root, path))
    by_digest[digest].append(i)
  groups = []
  for digest, members in by_digest.items():
    if len(members) < 2:
      continue
    classes = {int(dataset.labels[i]) for i in members}
    splits = {str(dataset.given_split[i]) for i in members} if dataset.given_split is not None else set()
    if len(classes) > 1:
      kind = "across_classes"
    elif len(splits) > 1:
      kind = "across_given_splits"
    else:
      kind = "within_class"
    members = sorted(members, key=lambda i: dataset.paths[i])
    groups.append(
      DuplicateGroup(
        kind,
        digest,
        tuple(dataset.paths[i] for i in members),
        tuple(dataset.class_names[dataset.labels[i]] for i in members),
      )
    )
  return sorted(groups, key=lambda g: (KINDS.index(g.kind), g.paths))


def describe(group: DuplicateGroup) -> str:
  what = {
    "across_classes": "the same image in classes " + ", ".join(sorted(set(group.classes))),
    "across_given_splits": "the same image in more than one of train/, test/, holdout/",
    "within_class": f"the same image {len(group.paths)} times in class {group.classes[0]}",
  }[group.kind]
  return f"{what}: {', '.join(group.paths)}"
