"""Orbax checkpoints: the stacked state of lanes trained together (resume mid-run), and shared frozen params."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores one pytree under `directory`, keeping only the newest step."""

  def __init__(self, directory: str):
    self._manager = ocp.CheckpointManager(
      os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, tree: Any) -> None:
    # A host copy: the device buffers are donated to the next train chunk while orbax writes.
    self._manager.save(step, args=ocp.args.StandardSave(jax.device_get(tree)))

  def restore(self, like: Any, step: int | None = None) -> Any:
    """Restores into the structure, shapes and dtypes of `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._manager.directory}; train the study first.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_raw(self, step: int | None = None) -> Any:
    """Restores the saved tree as nested dicts of arrays, without knowing its structure (for prediction)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._manager.directory}; train the study first.")
    return self._manager.restore(step, args=ocp.args.StandardRestore())

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def group_directory(workdir: str, lane_indices: list[int]) -> str:
  """One stacked checkpoint per group of lanes trained together, named by the lanes it holds."""
  first, last = min(lane_indices), max(lane_indices)
  return os.path.join(workdir, "checkpoints", f"lanes_{first:04d}-{last:04d}_{len(lane_indices)}")


def record_group(workdir: str, lane_indices: list[int]) -> str:
  """Notes which lanes a group checkpoint holds (checkpoints/groups.json), so they can be found again."""
  directory = group_directory(workdir, lane_indices)
  path = os.path.join(workdir, "checkpoints", "groups.json")
  groups = read_groups(workdir)
  groups[os.path.basename(directory)] = [int(i) for i in lane_indices]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(groups, f, indent=1)
  os.replace(path + ".tmp", path)
  return directory


def read_groups(workdir: str) -> dict[str, list[int]]:
  """{group folder name: lane indices in stacking order} of every group checkpoint written so far."""
  path = os.path.join(workdir, "checkpoints", "groups.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def frozen_directory(workdir: str, arm: str) -> str:
  """The frozen parameters an arm's lanes share (saved once per arm)."""
  return os.path.join(workdir, "checkpoints", f"frozen_{arm}")
