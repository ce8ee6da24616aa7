"""The study's records in its workdir — config.json, study.json, engine.json, splits.csv, skipped_files.csv,
duplicates.csv, purification_removed.csv and checkpoints/groups.json — each with its one writer and its one
reader."""

from __future__ import annotations

import json
from collections.abc import Sequence

import ml_collections
import numpy as np

from jaxcell.workdir import layout, storage


class MissingRecordError(FileNotFoundError):
  """A record a finished study has is absent: the folder is not (yet) a jaxcell workdir."""


def _read_json(path, what: str) -> dict:
  if not path.exists():
    raise MissingRecordError(f"{path} is missing: {what}")
  return json.loads(storage.read_text(path))


def _write_json(path, record, indent: int = 2) -> None:
  storage.write_text(path, json.dumps(record, indent=indent))


# --- config.json --------------------------------------------------------------------------------


def config_text(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def check_config(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether workdir already holds this study (True: resume); raises when it holds a different one."""
  path = layout.path(workdir, layout.CONFIG)
  if not path.exists():
    return False
  if storage.read_text(path) != config_text(config):
    raise ValueError(
      f"{workdir} holds a study with a different config (see {path}). Use a new --workdir, "
      "or delete that folder to start over."
    )
  return True


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  storage.write_text(layout.path(workdir, layout.CONFIG), config_text(config))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_read_json(layout.path(workdir, layout.CONFIG), "is this a jaxcell study?"))


# --- study.json ---------------------------------------------------------------------------------


def write_study(
  workdir: str,
  class_names: Sequence[str],
  image_shape: Sequence[int],
  normalisation: dict,
  source_format: dict,
  lane_sizes: dict[str, dict[int, int | None]],
  arm_image_shapes: dict[str, Sequence[int]] | None = None,
) -> None:
  """study.json: what prediction on new images needs — classes, image format, the training files' sizes, channels
  and bit depths, each arm's {mean, std, image_shape} in the order of the config's arms, and each arm's lanes
  {lane: n_per_class} (so an unfinished study is seen as one)."""
  shapes = arm_image_shapes or {}
  record = {
    "class_names": list(class_names),
    "image_shape": list(image_shape),
    "source_format": source_format,
    "lanes": {arm: {str(lane): size for lane, size in sizes.items()} for arm, sizes in lane_sizes.items()},
    "arms": {
      name: {
        "mean": np.asarray(mean).tolist(),
        "std": np.asarray(std).tolist(),
        "image_shape": list(shapes.get(name, image_shape)),
      }
      for name, (mean, std) in normalisation.items()
    },
  }
  _write_json(layout.path(workdir, layout.STUDY), record)


def read_study(workdir: str) -> dict:
  return _read_json(layout.path(workdir, layout.STUDY), "re-run the study with this jaxcell version.")


# --- engine.json --------------------------------------------------------------------------------


# engine.json's key for the wall time of each stage of the last run (arm names cannot start with '_').
STAGE_SECONDS = "_stage_seconds"


def write_engine(workdir: str, records: dict) -> None:
  """engine.json: per arm, which strategy or path ran, why (autotune trials), and on what devices; and under
  STAGE_SECONDS the seconds of each stage of the last run."""
  _write_json(layout.path(workdir, layout.ENGINE), records)


def read_engine(workdir: str) -> dict:
  """engine.json, or {} for a study that trained nothing yet."""
  path = layout.path(workdir, layout.ENGINE)
  return _read_json(path, "") if path.exists() else {}


def workdir_sizes(workdir: str) -> dict[str, int]:
  """Bytes on disk under the workdir: {'total', 'checkpoints', 'cache', 'tensorboard', 'other'} (links not followed)."""
  sizes = {"checkpoints": 0, "cache": 0, "tensorboard": 0, "other": 0}
  top = {layout.CHECKPOINTS: "checkpoints", layout.CACHE: "cache", layout.TENSORBOARD: "tensorboard"}
  for relative, path in storage.walk_files(workdir):
    part = top.get(relative.split("/")[0], "other")
    try:
      sizes[part] += storage.size_bytes(path)
    except OSError:  # Removed meanwhile (a checkpoint being replaced).
      pass
  return {"total": sum(sizes.values()), **sizes}


# --- per-image CSV records ------------------------------------------------------------------------


def write_splits(workdir: str, paths, labels: np.ndarray, class_names, splits) -> None:
  """splits.csv: for each image its class, whether it is in the global holdout, and its fold per repeat.

  `splits` is a data.splits.Splits."""
  holdout = np.zeros(len(paths), bool)
  holdout[splits.holdout] = True
  header = ["path", "target", "holdout", *[f"fold_repeat{r}" for r in range(splits.folds.shape[0])]]
  rows = ([path, class_names[labels[i]], int(holdout[i]), *splits.folds[:, i].tolist()] for i, path in enumerate(paths))
  storage.write_csv(layout.path(workdir, layout.SPLITS), header, rows)


def read_splits(workdir: str) -> list[dict]:
  """splits.csv as rows {path, target, holdout (bool), fold_repeat<r> (int: a fold, -1 not in CV, -2 train only)}."""
  rows = storage.read_csv(layout.path(workdir, layout.SPLITS))
  for row in rows:
    row["holdout"] = row["holdout"] == "1"
    for key in [k for k in row if k.startswith("fold_repeat")]:
      row[key] = int(row[key])
  return rows


def write_skipped_report(skipped: Sequence, csv_path) -> None:
  """skipped_files.csv: the data.dataset.SkippedFile entries with columns path,reason (the header even when empty)."""
  storage.write_csv(csv_path, ["path", "reason"], ([entry.path, entry.reason] for entry in skipped))


def write_purification_removed(workdir: str, rows: Sequence[tuple[str, str]]) -> None:
  """purification_removed.csv: (path, target) of every image a purified arm trained without."""
  storage.write_csv(layout.path(workdir, layout.PURIFICATION_REMOVED), ["path", "target"], rows)


def write_duplicates(workdir: str, groups: Sequence) -> None:
  """duplicates.csv: data.duplicates.DuplicateGroup entries, one row per image (the header even when empty)."""
  rows = (
    [number, group.kind, group.sha256, p, c]
    for number, group in enumerate(groups)
    for p, c in zip(group.paths, group.classes)
  )
  storage.write_csv(layout.path(workdir, layout.DUPLICATES), ["group", "kind", "sha256", "path", "target"], rows)


def read_duplicates(workdir: str) -> dict[str, int]:
  """{kind: number of groups} of duplicates.csv ({} without the file or without duplicates)."""
  path = layout.path(workdir, layout.DUPLICATES)
  if not path.exists():
    return {}
  groups = {(r["group"], r["kind"]) for r in storage.read_csv(path)}
  counts: dict[str, int] = {}
  for _, kind in sorted(groups):
    counts[kind] = counts.get(kind, 0) + 1
  return counts


# --- pretrain.json (a pretraining workdir) --------------------------------------------------------


def write_pretrain(workdir: str, record: dict) -> None:
  """pretrain.json: objective, model config, input channels and normalisation, class names, steps done, the
  linear probe's score per step ({'step', 'accuracy', 'chance', 'images'}), training loss per logged step, seconds."""
  _write_json(layout.path(workdir, layout.PRETRAIN), record)


def read_pretrain(workdir: str) -> dict:
  """pretrain.json, or {} before the first record."""
  path = layout.path(workdir, layout.PRETRAIN)
  return _read_json(path, "") if path.exists() else {}


# --- checkpoints/groups.json ----------------------------------------------------------------------


def record_group(workdir: str, lane_indices: list[int]):
  """Notes which lanes a group checkpoint holds (checkpoints/groups.json) and returns the group's folder."""
  directory = layout.group_directory(workdir, lane_indices)
  path = layout.groups_file(workdir)
  groups = read_groups(workdir)
  groups[directory.name] = [int(i) for i in lane_indices]
  _write_json(path, groups, indent=1)
  return directory


def read_groups(workdir: str) -> dict[str, list[int]]:
  """{group folder name: lane indices in stacking order} of every group checkpoint written so far."""
  path = layout.groups_file(workdir)
  return _read_json(path, "") if path.exists() else {}
