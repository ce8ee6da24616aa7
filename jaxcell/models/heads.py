"""Replaceable classification heads (the `fc` of every jaxcell model).

Every head is called as ``head(features, train)`` on pooled/flattened features [B, D] and returns
logits [B, num_classes]. New heads use PyTorch's default init, as BioNIC's new layers did.

Heads and their parameter names (torch `state_dict` key <-> Flax path, the head named `fc`):

- 'linear': torchvision's `fc = Linear(D, n)`:  ``fc.weight`` <-> ``fc/kernel`` (transposed),
  ``fc.bias`` <-> ``fc/bias``.
- 'bionic_mlp': BioNIC's `nn.Sequential` of [Linear(., h) -> ReLU -> BatchNorm1d(h)] per hidden
  width h, then Linear(h_last, n). Children are named by their index in that Sequential, so
  ``fc.<i>.<w>`` <-> ``fc/<i>/<w>``:
    hidden=256 (ResNet_all): fc/0 Linear, fc/2 BN, fc/3 Linear
    hidden=(64, 32) (ResNet_lower) or (256, 128) (CNN_all, CNN_flat):
                             fc/0 Linear, fc/2 BN, fc/3 Linear, fc/5 BN, fc/6 Linear
  BN weight/bias <-> scale/bias in 'params'; running_mean/var <-> mean/var in 'batch_stats'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from jaxcell.models.conv import Linear, batch_norm

HEADS = ("linear", "bionic_mlp")


class MLPHead(nn.Module):
  """BioNIC's head: [Linear -> ReLU -> BatchNorm1d] per hidden width, then Linear(num_classes)."""

  hidden: Sequence[int]
  num_classes: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    index = 0  # Position in the equivalent torch nn.Sequential (ReLU takes an index too).
    for width in self.hidden:
      x = Linear(width, self.dtype, name=str(index))(x)
      x = nn.relu(x)
      x = batch_norm(train, self.dtype, name=str(index + 2))(x)
      index += 3
    return Linear(self.num_classes, self.dtype, name=str(index))(x)


def hidden_widths(hidden: int | Sequence[int]) -> tuple[int, ...]:
  """Normalises `head_hidden` (an int or a sequence of ints) to a tuple of positive widths."""
  widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
  if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
    raise ValueError(
      f"head_hidden must be a positive int or a non-empty sequence of positive "
      f"ints (e.g. 256 or (256, 128)), got {hidden!r}."
    )
  return widths


def make_head(head: str, num_classes: int, hidden: int | Sequence[int], dtype: Any, name: str = "fc") -> nn.Module:
  """Builds the head called `name` (default 'fc'); `hidden` is ignored by the 'linear' head."""
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  if head == "linear":
    return Linear(num_classes, dtype, name=name)
  if head == "bionic_mlp":
    return MLPHead(hidden_widths(hidden), num_classes, dtype, name=name)
  raise ValueError(f"Unknown head {head!r}; choose one of {HEADS}.")
