"""Reads a PyTorch checkpoint's state dict into numpy arrays: `.safetensors`, `.npz`, `.pth`/`.pt`/`.bin`.

    state_dict = read_state_dict("resnet18-f37072fd.pth")     # {'conv1.weight': np.ndarray, ...}

- `.safetensors` reads with `safetensors.numpy` (no torch).
- `.npz` reads with numpy, without pickle.
- `.pth`/`.pt`/`.bin` (torch.save files, zip or legacy pre-1.6 format) read with
  `torch.load(weights_only=True)` when torch is importable, and otherwise with `load_torch_file`, which never
  calls pickle's loader: `safe_pickle` interprets the opcodes, rebuilds exactly what a state dict holds (an
  OrderedDict of tensors over float/half/bfloat16/int storages) and refuses every other object, so a checkpoint
  can never run code.

Common wrappers are unwrapped: a top-level 'state_dict' or 'model' entry holding the weights (as written by
training scripts), and the 'module.' prefix of DataParallel/DistributedDataParallel models.
"""

from __future__ import annotations

import collections
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jaxcell.convert import safe_pickle

SAFETENSORS = (".safetensors",)
NPZ = (".npz",)
TORCH = (".pth", ".pt", ".bin")
EXTENSIONS = SAFETENSORS + NPZ + TORCH
WRAPPER_KEYS = ("state_dict", "model")

# torch storage class name -> numpy dtype of its elements (torch's zip format is little-endian by default).
STORAGE_DTYPES = {
  "FloatStorage": np.dtype("<f4"),
  "DoubleStorage": np.dtype("<f8"),
  "HalfStorage": np.dtype("<f2"),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype("<i8"),
  "IntStorage": np.dtype("<i4"),
}


def read_state_dict(path: str, use_torch: bool | None = None) -> dict[str, np.ndarray]:
  """The checkpoint at `path` as {torch key: numpy array}, wrappers and 'module.' prefixes removed.

  use_torch: for .pth/.pt/.bin, True = torch.load, False = the restricted unpickler, None = torch if
  importable.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No checkpoint at {path!r}; check the path (expected one of {', '.join(EXTENSIONS)}).")
  lower = path.lower()
  if lower.endswith(SAFETENSORS):
    raw = _read_safetensors(path)
  elif lower.endswith(NPZ):
    raw = _read_npz(path)
  elif lower.endswith(TORCH):
    raw = _read_torch(path, use_torch)
  else:
    raise ValueError(
      f"Cannot read {path!r}: unknown checkpoint extension. Supported: {', '.join(EXTENSIONS)} "
      "(save a torch model with torch.save(model.state_dict(), 'model.pth'))."
    )
  return _as_numpy(unwrap(raw, path), path)


def unwrap(checkpoint: Any, path: str = "checkpoint") -> Mapping[str, Any]:
  """Strips {'state_dict': ...} / {'model': ...} wrappers and a 'module.' prefix shared by every key."""
  while isinstance(checkpoint, Mapping):
    inner = next((checkpoint[k] for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
    if inner is None:
      break
    checkpoint = inner
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict (a mapping of name -> tensor).")
  if checkpoint and all(isinstance(k, str) and k.startswith("module.") for k in checkpoint):
    checkpoint = {k[len("module.") :]: v for k, v in checkpoint.items()}
  return checkpoint


def _as_numpy(state_dict: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
  out = {}
  for key, value in state_dict.items():
    if hasattr(value, "detach"):  # A torch tensor (torch.load path); numpy has no bfloat16, torch's .numpy() fails.
      value = value.detach().cpu()
      value = value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
    if isinstance(value, np.ndarray) and value.dtype == ml_dtypes.bfloat16:
      value = value.astype(np.float32)  # The same arrays whichever reader ran.
    if not isinstance(value, np.ndarray):
      raise ValueError(
        f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor. Pass a file holding only a state dict "
        "(or a dict with the weights under 'state_dict' or 'model')."
      )
    out[str(key)] = value
  return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  try:
    return load_file(path)
  except Exception as e:  # safetensors raises its own error types for bad headers or unsupported dtypes.
    raise ValueError(f"Cannot read {path!r} as safetensors: {e}") from None


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile/ValueError/OSError: not an npz, or one that needs pickle.
    raise ValueError(f"Cannot read {path!r} as a numpy .npz of arrays: {e}") from None
  if "__metadata__" in arrays:
    raise ValueError(
      f"{path!r} is already a jaxcell converted-weights file; load it with "
      "jaxcell.convert.weights_file.load_weights instead of converting it again."
    )
  return arrays


def _read_torch(path: str, use_torch: bool | None) -> Any:
  if use_torch is None:
    try:
      import torch  # noqa: F401
    except ImportError:
      use_torch = False
    else:
      use_torch = True
  if not use_torch:
    return load_torch_file(path)
  import torch

  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch's UnpicklingError for non-weights objects, RuntimeError for damaged files.
    raise ValueError(f"torch.load(weights_only=True) cannot read {path!r}: {e}") from None


# --------------------------------------------------------------------------------------------
# Reading torch.save files without torch. Both formats pickle the object tree with each tensor as
# torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...) and each storage as a persistent id
# ('storage', <torch.XStorage>, key, location, numel[, view]); they differ in where the storage bytes live:
# - zip (torch >= 1.6): `<name>/data.pkl` and one record `<name>/data/<key>` per storage;
# - legacy (torch < 1.6; still how many published checkpoints are stored): a stream of pickles (magic
#   number, protocol 1001, system info, the object tree, the list of storage keys) followed, for each key
#   in that list, by its element count (int64) and its raw bytes.
# Tensors are first unpickled as _TensorRef records and then resolved once the storage bytes are known.

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class _TensorRef:
  """A tensor whose storage bytes may not have been read yet (legacy files keep them after the pickle)."""

  def __init__(self, storage: tuple, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
  """Stands in for torch._utils._rebuild_tensor_v2: records where the tensor's values are."""
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


class _StateDict:
  """How a torch.save object tree is read: only the globals a state dict of tensors needs, and storage ids."""

  def __init__(self, path: str):
    self.path = path
    self.dtypes: dict[str, np.dtype] = {}  # storage key -> element dtype
    self.allowed = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      # A storage type is only ever used as a tag inside persistent ids.
      **{("torch", name): name for name in STORAGE_DTYPES},
    }

  def read(self, file) -> Any:
    try:
      return safe_pickle.read_pickle(file, self.allowed, self.persistent_load, what=self.path)
    except ValueError as e:
      if "refusing to load" not in str(e):
        raise
      raise ValueError(
        f"{e}: only a state dict of tensors can be read without torch. Install torch (pip install "
        "'jaxcell[torch]') or save just model.state_dict(), or use .safetensors."
      ) from None

  def persistent_load(self, pid: Any) -> tuple:
    """('storage', type, key, location, numel[, view]) -> (key, dtype, view)."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage" and pid[1] in STORAGE_DTYPES):
      raise ValueError(f"{self.path}: unsupported persistent id {pid!r} (not a tensor storage).")
    key, dtype = str(pid[2]), STORAGE_DTYPES[pid[1]]
    self.dtypes[key] = dtype
    view = pid[5] if len(pid) == 6 else None  # Legacy storage views: (view key, offset, numel).
    return key, dtype, view


def _resolve(obj: Any, storage_bytes, path: str) -> Any:
  """The unpickled tree with every _TensorRef replaced by a numpy array (a copy, not a view)."""
  if isinstance(obj, _TensorRef):
    key, dtype, view = obj.storage
    storage = np.frombuffer(storage_bytes(key), dtype)
    if view is not None:
      storage = storage[view[1] : view[1] + view[2]]
    return _strided(storage, obj, path)
  if isinstance(obj, Mapping):
    return type(obj)((k, _resolve(v, storage_bytes, path)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v, storage_bytes, path) for v in obj)
  return obj


def _strided(storage: np.ndarray, ref: _TensorRef, path: str) -> np.ndarray:
  size, stride, offset = ref.size, ref.stride, ref.offset
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
  if offset < 0 or last >= storage.size or any(s < 0 for s in stride):
    raise ValueError(f"{path}: a tensor of size {size} stride {stride} runs past its storage of {storage.size}.")
  if not size:
    return np.array(storage[offset], copy=True)
  view = np.lib.stride_tricks.as_strided(
    storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride], writeable=False
  )
  return np.array(view, copy=True)


def load_torch_file(path: str) -> Any:
  """Reads a torch.save'd state dict (zip or legacy format) without torch; tensors become numpy arrays."""
  path = os.fspath(path)
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  return _load_legacy(path)


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path!r} is not a torch.save zip file (found {len(pickles)} data.pkl records).")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
      raise ValueError(f"{path!r} was saved big-endian; load it with torch instead (pip install 'jaxcell[torch]').")
    with archive.open(pickles[0]) as f:
      tree = _StateDict(path).read(f)

    def storage_bytes(key: str) -> bytes:
      try:
        return archive.read(f"{prefix}data/{key}")
      except KeyError:
        raise ValueError(f"{path}: storage record data/{key} is missing; the file is damaged.") from None

    return _resolve(tree, storage_bytes, path)


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    try:  # The header and the key list are plain data: no global, no persistent id allowed.
      magic = safe_pickle.read_pickle(f, what=path)
    except ValueError:  # Not a pickle stream at all.
      magic = None
    if magic != LEGACY_MAGIC:
      raise ValueError(
        f"{path!r} is not a torch.save checkpoint (neither the zip nor the legacy format; TorchScript archives "
        "are not supported). Save the weights with torch.save(model.state_dict(), path), or as .safetensors."
      )
    protocol, sys_info = safe_pickle.read_pickle(f, what=path), safe_pickle.read_pickle(f, what=path)
    if protocol != LEGACY_PROTOCOL or not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
      raise ValueError(f"{path!r}: unsupported legacy torch file (protocol {protocol!r}); load it with torch instead.")
    reader = _StateDict(path)
    tree = reader.read(f)
    keys = safe_pickle.read_pickle(f, what=path)
    if not isinstance(keys, list):
      raise ValueError(f"{path}: the storage key list is a {type(keys).__name__}; the file is damaged.")
    data: dict[str, bytes] = {}
    for key in keys:
      key = str(key)
      if key not in reader.dtypes:
        raise ValueError(f"{path}: storage {key!r} has bytes but no tensor uses it; the file is damaged.")
      (numel,) = np.frombuffer(f.read(8), "<i8")
      data[key] = f.read(int(numel) * reader.dtypes[key].itemsize)
  return _resolve(tree, data.__getitem__, path)
