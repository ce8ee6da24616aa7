"""preprocess_examples.png: what each pre-processing variant of a study does to its images.

One row per arm with its own data.preprocess (arms that share a variant are drawn once, under the first arm's name),
one column per class, the same holdout image in every row, drawn from the pixels the arm trained on (after
pre-processing, before normalisation). Written only when some arm pre-processes; the report shows it with the set-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxcell.reporting import composite
from jaxcell.workdir import storage

MAX_CLASSES_SHOWN = 6
_CELL_INCHES = 1.3


def example_indices(labels: np.ndarray, holdout: np.ndarray, num_classes: int) -> list[int]:
  """The first holdout image of each class (the first image of the class where the holdout has none)."""
  picks = []
  for cls in range(min(num_classes, MAX_CLASSES_SHOWN)):
    pool = [i for i in holdout if labels[i] == cls] or np.flatnonzero(labels == cls).tolist()
    if pool:
      picks.append(int(pool[0]))
  return picks


def variant_rows(preprocess_of: Mapping[str, str]) -> dict[str, str]:
  """{arm: variant} for the first arm of each distinct variant, in arm order; {} when no arm pre-processes."""
  if all(method == "none" for method in preprocess_of.values()):
    return {}
  rows, seen = {}, set()
  for arm, method in preprocess_of.items():
    if method not in seen:
      seen.add(method)
      rows[arm] = method
  return rows


def plot_preprocess_examples(
  images_of: Mapping[str, np.ndarray],
  variants: Mapping[str, str],
  class_names: Sequence[str],
  path: str,
  colors: str | None = None,
) -> str:
  """Draws images_of[arm] ([classes, H, W, C] uint8, one image per class) as one labelled row per arm (N channels
  as a colour composite tinted by `colors`)."""
  arms = list(variants)
  columns = len(next(iter(images_of.values())))
  figure = Figure(figsize=(_CELL_INCHES * columns + 1.2, _CELL_INCHES * len(arms) + 0.4), dpi=100)
  FigureCanvasAgg(figure)
  for row, arm in enumerate(arms):
    for col, image in enumerate(images_of[arm]):
      ax = figure.add_subplot(len(arms), columns, row * columns + col + 1)
      shown = composite.composite(image, colors)
      ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(class_names[col], fontsize=8)
      if col == 0:
        label = variants[arm] if variants[arm] == arm else f"{variants[arm]}\n({arm})"
        ax.set_ylabel(label, fontsize=8)
  figure.tight_layout(pad=0.3)
  return storage.save_figure(figure, path)
