"""Orbax checkpoints: the stacked state of lanes trained together (resume mid-run), and shared frozen params.

Where they live in the workdir (and checkpoints/groups.json, which lanes each holds) is workdir/layout.py's and
workdir/records.py's. A directory may be local or in a bucket (gs://...): orbax writes both through epath."""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcell.workdir import storage


def finished(state: Any) -> Any:
  """What a finished lane's checkpoint keeps: step, parameters and BatchNorm statistics, all that prediction and
  a resumed run (which finds the lane done) need. The optimiser state, twice the parameters under Adam, is
  dropped: for 5 ResNet-18 lanes, 225 MB on disk instead of 675 MB."""
  return state.replace(opt_state=None)


class Checkpointer:
  """Saves and restores one pytree under `directory`, keeping only the newest step."""

  def __init__(self, directory):
    directory = storage.as_path(directory)
    self._manager = ocp.CheckpointManager(
      directory.resolve() if storage.is_local(directory) else directory,  # Orbax wants local paths absolute.
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
      # Uncompressed: zstd held an encoded copy of every array while it wrote (+0.56 GB resident for the 0.6 GB
      # state of 5 ResNet-18 lanes, on top of training's) to save 7 % of the bytes (5 finished ResNet-18 lanes:
      # 201 vs 217 MiB). Compressed checkpoints of earlier runs still restore: each array's metadata names its codec.
      item_handlers=ocp.PyTreeCheckpointHandler(use_compression=False),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, tree: Any) -> None:
    """Writes `tree` (device arrays, possibly sharded, or host arrays) as checkpoint `step`.

    Device arrays are handed to orbax as they are: it copies them to the host itself, whereas a host tree is
    copied whole before the write (+0.58 GB peak for a 0.6 GB state, measured on CPU). On CPU that "copy" is a
    view of the device buffers, and a chunk that starts while orbax still holds it cannot reuse (donate) them: it
    would allocate a second state. So on CPU the write finishes first (0.2 s for 0.6 GB); on an accelerator it
    runs in the background while training goes on."""
    self._manager.save(step, args=ocp.args.PyTreeSave(tree))
    if jax.default_backend() == "cpu":
      self._manager.wait_until_finished()

  def restore(self, like: Any, step: int | None = None) -> Any:
    """Restores into the structure, shapes and dtypes of `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._manager.directory}; train the study first.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    return self._manager.restore(step, args=ocp.args.PyTreeRestore(abstract, restore_args=restore_args))

  def restore_train_state(self, like: Any, step: int | None = None) -> Any:
    """A TrainState saved mid-run (optimiser state included) or `finished` (then `like`'s optimiser state is
    kept: a finished lane never steps again)."""
    try:
      return self.restore(like, step)
    except ValueError:  # Orbax: the saved tree has no optimiser state.
      return self.restore(finished(like), step).replace(opt_state=like.opt_state)

  def restore_raw(self, step: int | None = None) -> Any:
    """Restores the saved tree as nested dicts of arrays, without knowing its structure (for prediction)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._manager.directory}; train the study first.")
    return self._manager.restore(step, args=ocp.args.PyTreeRestore())

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
