"""PyTorch state-dict layout -> Flax variable layout: the part every converter shares.

A converter for one architecture family (torchvision.py, efficientnet.py) only says how its module names map to
jaxcell's; the rest is the same for every PyTorch checkpoint and lives here:

    `a.b.3.c.<leaf>`                           -> module path a/b_3/c (a numeric part joins the name before it)
    conv weight [O, I, kh, kw]                 -> params/.../kernel [kh, kw, I, O]  (depthwise: [kh, kw, 1, C])
    Linear weight [out, in]                    -> params/.../kernel [in, out]
    BatchNorm weight / bias                    -> params/.../scale / params/.../bias
    BatchNorm running_mean / running_var       -> batch_stats/.../mean / batch_stats/.../var
    conv / Linear bias                         -> params/.../bias
    num_batches_tracked                        -> dropped (Flax keeps no step count)

`flatten_state_dict` converts every entry with a family's key function, and `check_converted` compares the
result with the Flax model's own variable shapes (`variable_shapes`), naming the torch keys behind a mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcell.convert.weights_file import ConversionError, check_keys

BN_STATS = {"running_mean": "mean", "running_var": "var"}
DROPPED_LEAF = "num_batches_tracked"
KeyFunction = Callable[[str, int], str | None]  # (torch key, ndim) -> Flax path, or None to drop the entry.


def module_names(torch_key: str, strip: str = "") -> tuple[list[str], str]:
  """(module names, leaf) of a torch key: `layer1.0.bn1.weight` -> (['layer1_0', 'bn1'], 'weight').

  A numeric part joins the name before it (`features.10` -> `features_10`); `strip` holds characters removed
  from the start of each name (lukemelas' EfficientNet prefixes its modules with '_').
  """
  *modules, leaf = torch_key.split(".")
  names: list[str] = []
  for part in modules:
    if part.isdigit() and names:
      names[-1] = f"{names[-1]}_{part}"
    else:
      names.append(part.lstrip(strip) if strip else part)
  return names, leaf


def flax_path(names: list[str], leaf: str, ndim: int) -> str | None:
  """Flax path ('params/layer1_0/bn1/scale') of a leaf of the module `names`, or None for dropped leaves.

  A 1-D weight is a BatchNorm scale, any other weight a conv or Linear kernel.
  """
  if leaf == DROPPED_LEAF:
    return None
  path = "/".join(names)
  if leaf in BN_STATS:
    return f"batch_stats/{path}/{BN_STATS[leaf]}"
  if leaf == "weight":
    return f"params/{path}/{'scale' if ndim == 1 else 'kernel'}"
  return f"params/{path}/{leaf}"  # 'bias', or an unknown leaf that the key check then reports.


def flax_array(value: np.ndarray, dtype=None) -> np.ndarray:
  """A torch tensor's values in Flax's layout: conv OIHW -> HWIO, Linear [out, in] -> [in, out].

  `dtype` (e.g. np.float32) converts the values; None keeps the tensor's own dtype.
  """
  value = np.asarray(value, dtype)
  if value.ndim == 4:
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if value.ndim == 2:
    return np.ascontiguousarray(value.T)
  return value


def flatten_state_dict(
  state_dict: Mapping[str, np.ndarray], key_function: KeyFunction, what: str, dtype=None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """({Flax path: array in Flax layout}, {Flax path: torch key}) of a state dict; the second is for messages.

  `key_function(torch_key, ndim)` names each entry (None drops it). With a `dtype`, non-float entries raise
  (`what`, e.g. 'resnet50 checkpoint', names the checkpoint), as do two torch keys mapping to one Flax path.
  """
  flat: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  for key, value in state_dict.items():
    array = np.asarray(value)
    path = key_function(key, array.ndim)
    if path is None:
      continue
    if dtype is not None and not np.issubdtype(array.dtype, np.floating):
      raise ConversionError(f"{what}: {key!r} holds {array.dtype} values; weights must be floats.")
    if path in flat:
      raise ConversionError(f"Keys {origin[path]!r} and {key!r} both map to {path}; the checkpoint is malformed.")
    flat[path], origin[path] = flax_array(array, dtype), key
  return flat, origin


def variable_shapes(model, in_channels: int) -> dict[str, tuple]:
  """Flat Flax path -> shape of a linen model's variables (jax.eval_shape of its init: nothing allocated)."""
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  shapes = jax.eval_shape(partial(model.init, train=False), jax.random.key(0), x)
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(shapes), sep="/").items()}


def check_converted(
  expected: Mapping[str, tuple], flat: Mapping[str, np.ndarray], origin: Mapping[str, str], what: str
):
  """Raises ConversionError naming missing, unexpected and mis-shaped Flax paths, then the torch keys behind the
  unexpected and mis-shaped ones (the first 8), when `flat` does not match the model's `expected` shapes."""
  got = {path: array.shape for path, array in flat.items()}
  try:
    check_keys(expected, got, what)
  except ConversionError as error:
    bad = sorted(p for p in got if p not in expected or tuple(expected[p]) != tuple(got[p]))
    shown = ", ".join(f"{origin[p]} -> {p}" for p in bad[:8]) + (f", ... ({len(bad) - 8} more)" if len(bad) > 8 else "")
    raise ConversionError(f"{error}\n  torch keys behind those: {shown}" if bad else str(error)) from None
