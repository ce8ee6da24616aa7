"""An embedded demo dataset: microscopy-like images of cell populations in six phenotype classes.

It exists so that every part of jaxcell can run, be tested and be demonstrated offline. The task is
built to be learnable but not trivial, like the small biomedical sets BioNIC studies:

- classes differ in biology: cell shape (round / elongated / irregular), nucleus count and size
  (binucleate, enlarged, fragmented), cytoplasm texture (granules) and, weakly, stain hue;
- classes overlap: 'large_nucleus' differs from 'normal' only by a shifted, overlapping nucleus
  size distribution, and in every non-normal image only a random 50-100 % of the cells show the
  phenotype (the rest are normal), as in a real treated population;
- nuisance variation that a classifier must ignore: modality (fluorescence on black, or in 15 %
  of the images stained brightfield on white), stain hue, position, rotation, cell density,
  magnification, illumination gradient, background level, blur and noise. Mean colour alone
  therefore says little.

Each image has its own generator seeded by (seed, class, index): the same seed gives bit-identical
images whatever order or subset is generated.

A second collection, 'screen', stands in for a large unlabelled-in-spirit screening set to pretrain a CellNet on:
eight other phenotypes (rounded, multinucleate, spread, polarised, punctate, condensed, bright, control) drawn with
the same machinery, meant for N-channel fluorescence (nuclei, cytoplasm and mixed markers), so that what a CellNet
learns from it must transfer to the demo's classes and stains rather than copy them.
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np
from skimage import draw, filters, transform

from jaxcell.data.dataset import Dataset

# Cells are drawn on at least this many pixels; smaller images are drawn at a multiple of their size.
_MIN_RENDER_SIZE = 64
# Share of images rendered as stained brightfield (absorbing, on white) instead of fluorescence.
_BRIGHTFIELD_FRACTION = 0.15


@dataclasses.dataclass(frozen=True)
class Phenotype:
  """How the cells of one class look; sizes are relative to the image's typical cell radius."""

  cell_radius: tuple[float, float]  # Mean, sd.
  aspect: tuple[float, float]  # Uniform range of the long / short axis ratio.
  irregular: bool = False  # Blebbing outline instead of an ellipse.
  nuclei: int = 1
  nucleus_ratio: tuple[float, float] = (0.40, 0.06)  # Nucleus radius / cell radius: mean, sd.
  fragmented: bool = False  # Nucleus broken into small condensed fragments (apoptosis).
  granules: tuple[int, int] = (0, 0)  # Uniform range of bright cytoplasmic granules per cell.
  cytoplasm_brightness: float = 0.5
  hue_shift: float = 0.0  # Small mean shift of the cytoplasm stain hue; within-class spread is larger.


PHENOTYPES: dict[str, Phenotype] = {
  "apoptotic": Phenotype(
    cell_radius=(0.75, 0.10),
    aspect=(1.0, 1.3),
    irregular=True,
    nucleus_ratio=(0.16, 0.03),
    fragmented=True,
    cytoplasm_brightness=0.65,
    hue_shift=0.12,
  ),
  "binucleate": Phenotype(
    cell_radius=(1.15, 0.12), aspect=(1.1, 1.6), nuclei=2, nucleus_ratio=(0.30, 0.05), hue_shift=-0.05
  ),
  "elongated": Phenotype(cell_radius=(1.05, 0.12), aspect=(1.7, 3.0), nucleus_ratio=(0.36, 0.05), hue_shift=0.05),
  "granular": Phenotype(cell_radius=(1.0, 0.12), aspect=(1.0, 1.35), granules=(6, 16), hue_shift=-0.10),
  "large_nucleus": Phenotype(cell_radius=(1.05, 0.12), aspect=(1.0, 1.35), nucleus_ratio=(0.52, 0.07)),
  "normal": Phenotype(cell_radius=(1.0, 0.12), aspect=(1.0, 1.35)),
}
CLASS_NAMES: tuple[str, ...] = tuple(sorted(PHENOTYPES))

# The pretraining collection: none of these is a demo class (the demo's test set must be new to a CellNet).
SCREEN_PHENOTYPES: dict[str, Phenotype] = {
  "bright": Phenotype(cell_radius=(1.0, 0.12), aspect=(1.0, 1.3), cytoplasm_brightness=0.95),
  "condensed": Phenotype(cell_radius=(0.9, 0.10), aspect=(1.0, 1.2), nucleus_ratio=(0.2, 0.04), fragmented=True),
  "control": Phenotype(cell_radius=(1.0, 0.12), aspect=(1.0, 1.3), nucleus_ratio=(0.38, 0.05)),
  "multinucleate": Phenotype(cell_radius=(1.35, 0.12), aspect=(1.0, 1.4), nuclei=4, nucleus_ratio=(0.2, 0.04)),
  "polarised": Phenotype(cell_radius=(1.0, 0.12), aspect=(2.6, 4.0), nucleus_ratio=(0.3, 0.05)),
  "punctate": Phenotype(cell_radius=(1.05, 0.12), aspect=(1.0, 1.3), granules=(16, 32), cytoplasm_brightness=0.3),
  "rounded": Phenotype(cell_radius=(0.68, 0.08), aspect=(1.0, 1.1), nucleus_ratio=(0.56, 0.06), cytoplasm_brightness=0.8),
  "spread": Phenotype(cell_radius=(1.45, 0.15), aspect=(1.0, 1.5), irregular=True, nucleus_ratio=(0.26, 0.04),
                      cytoplasm_brightness=0.35),
}  # fmt: skip
COLLECTIONS: dict[str, dict[str, Phenotype]] = {"demo": PHENOTYPES, "screen": SCREEN_PHENOTYPES}


def make_synthetic_cells(
  images_per_class: int, image_size: int, seed: int, channels: int = 3, collection: str = "demo"
) -> Dataset:
  """Generates images_per_class images of each class of the collection ('demo': CLASS_NAMES; 'screen': the
  pretraining collection), uint8 [N, S, S, channels]."""
  if collection not in COLLECTIONS:
    raise ValueError(f"collection is {collection!r}; use one of {sorted(COLLECTIONS)}.")
  phenotypes = COLLECTIONS[collection]
  if images_per_class < 1:
    raise ValueError(f"images_per_class is {images_per_class}; it must be at least 1.")
  if image_size < 8:
    raise ValueError(f"image_size is {image_size}; synthetic cells need at least 8 pixels.")
  if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
    raise ValueError(f"channels is {channels!r}; use 1 (greyscale), 3 (RGB) or N >= 1 fluorescence channels.")
  images, labels, paths = [], [], []
  names = tuple(sorted(phenotypes))
  offset = 0 if collection == "demo" else 1000  # Other image generators than the demo's, whatever the seed.
  for label, name in enumerate(names):
    for index in range(images_per_class):
      rng = np.random.default_rng([seed, label + offset, index])
      images.append(render_image(rng, name, image_size, channels, phenotypes))
      labels.append(label)
      paths.append(f"synthetic/{name}/{index:05d}" if collection == "demo" else f"{collection}/{name}/{index:05d}")
  return Dataset(
    images=np.stack(images), labels=np.array(labels, dtype=np.int32), class_names=names, paths=tuple(paths)
  )


def render_image(
  rng: np.random.Generator, class_name: str, image_size: int, channels: int = 3, phenotypes=PHENOTYPES
) -> np.ndarray:
  """One field of view of a population of `class_name` cells, uint8 [image_size, image_size, channels]: a stained
  brightfield-like colour image (3 channels, or its luminance for 1), else N fluorescence channels."""
  scale = -(-_MIN_RENDER_SIZE // image_size)  # Small images are drawn larger, then block-averaged.
  size = image_size * scale
  cytoplasm = np.zeros((size, size), np.float32)
  nuclei = np.zeros((size, size), np.float32)
  phenotype = phenotypes[class_name]
  typical_radius = size * rng.uniform(0.085, 0.115)  # Magnification varies between images.
  affected_fraction = rng.uniform(0.5, 1.0)
  for _ in range(rng.integers(3, 9)):
    cell = phenotype if rng.random() < affected_fraction else phenotypes.get("normal", phenotypes.get("control"))
    _draw_cell(rng, cell, typical_radius, cytoplasm, nuclei)

  # Uneven staining inside the cytoplasm, then optical blur of both stains.
  mottle = filters.gaussian(rng.standard_normal((size, size), np.float32), sigma=size / 30)
  cytoplasm *= 1.0 + 0.25 * mottle / (mottle.std() + 1e-6)
  stains = np.stack([cytoplasm, nuclei], axis=-1)
  stains = filters.gaussian(stains, sigma=rng.uniform(0.4, 1.1) * size / 64, channel_axis=-1)
  if scale > 1:
    stains = transform.downscale_local_mean(stains, (scale, scale, 1))
  if channels not in (1, 3):
    return _fluorescence(rng, stains, channels, image_size)
  rgb = _colourise(rng, stains[..., 0], stains[..., 1], phenotype.hue_shift)
  rgb *= _illumination(rng, image_size)[..., None]
  rgb += rng.normal(0.0, rng.uniform(0.01, 0.04), rgb.shape).astype(np.float32)
  rgb = np.clip(rgb, 0.0, 1.0)
  if channels == 1:
    rgb = rgb @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]  # ITU-R 601 luminance (PIL 'L').
  return np.round(rgb * 255).astype(np.uint8)


def _fluorescence(rng: np.random.Generator, stains: np.ndarray, channels: int, image_size: int) -> np.ndarray:
  """N fluorescence channels: nuclei (a DNA stain), cytoplasm, then markers mixing the two in graded proportions,
  each with its own gain, uneven illumination and camera noise (as in Cell Painting-like imaging)."""
  cytoplasm, nuclei = stains[..., 0], stains[..., 1]
  cytoplasm, nuclei = cytoplasm / (cytoplasm.max() + 1e-6), nuclei / (nuclei.max() + 1e-6)
  weights = [0.0, 1.0, *np.linspace(0.25, 0.85, max(channels - 2, 0))][:channels]
  planes = []
  for w in weights:
    plane = (w * cytoplasm + (1.0 - w) * nuclei) * rng.uniform(0.6, 1.0)
    plane = plane * _illumination(rng, image_size) + rng.normal(0.0, rng.uniform(0.01, 0.03), plane.shape)
    planes.append(np.clip(plane, 0.0, 1.0))
  return np.round(np.stack(planes, axis=-1) * 255).astype(np.uint8)


def _draw_cell(
  rng: np.random.Generator, phenotype: Phenotype, typical_radius: float, cytoplasm: np.ndarray, nuclei: np.ndarray
) -> None:
  """Adds one cell (cytoplasm, granules) and its nuclei to the two stain maps, in place."""
  size = cytoplasm.shape[0]
  centre = rng.uniform(0.08 * size, 0.92 * size, 2)
  radius = typical_radius * max(0.4, rng.normal(*phenotype.cell_radius))
  aspect = rng.uniform(*phenotype.aspect)
  angle = rng.uniform(-np.pi, np.pi)
  long_axis, short_axis = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
  axis = np.array([np.cos(angle), np.sin(angle)])  # (row, col) direction of the long axis.

  if phenotype.irregular:
    angles = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    radii = radius * (1.0 + 0.22 * rng.standard_normal(14)).clip(0.5, 1.6)
    rows, cols = draw.polygon(centre[0] + radii * np.sin(angles), centre[1] + radii * np.cos(angles), cytoplasm.shape)
  else:
    rows, cols = draw.ellipse(centre[0], centre[1], long_axis, short_axis, cytoplasm.shape, rotation=angle)
  cytoplasm[rows, cols] += phenotype.cytoplasm_brightness * rng.uniform(0.7, 1.3)

  if phenotype.granules[1]:
    # Point-like granules; the optical blur gives them their size.
    count = rng.integers(*phenotype.granules, endpoint=True)
    theta, distance = rng.uniform(0, 2 * np.pi, count), rng.uniform(0.2, 0.85, count)
    along, across = distance * np.cos(theta) * long_axis, distance * np.sin(theta) * short_axis
    rows = np.clip(np.round(centre[0] + along * axis[0] - across * axis[1]), 0, size - 1).astype(int)
    cols = np.clip(np.round(centre[1] + along * axis[1] + across * axis[0]), 0, size - 1).astype(int)
    np.add.at(cytoplasm, (rows, cols), rng.uniform(1.5, 3.0, count).astype(np.float32))

  nucleus_radius = radius * max(0.08, rng.normal(*phenotype.nucleus_ratio))
  if phenotype.fragmented:
    for _ in range(rng.integers(3, 7)):
      position = centre + rng.uniform(0, 0.5) * radius * _unit_vector(rng)
      rows, cols = draw.disk(tuple(position), max(1.0, nucleus_radius * rng.uniform(0.6, 1.3)), shape=nuclei.shape)
      nuclei[rows, cols] = np.maximum(nuclei[rows, cols], rng.uniform(0.9, 1.0))  # Condensed.
    return
  spacing = 0.45 * long_axis if phenotype.nuclei > 1 else 0.0
  for k in range(phenotype.nuclei):
    along = (k - (phenotype.nuclei - 1) / 2) * 2 * spacing + rng.normal(0, 0.08) * radius
    position = centre + along * axis
    elongation = np.sqrt(min(aspect, 1.6))  # The nucleus follows the cell's shape, less strongly.
    rows, cols = draw.ellipse(
      position[0], position[1], nucleus_radius * elongation, nucleus_radius / elongation, nuclei.shape, rotation=angle
    )
    nuclei[rows, cols] = np.maximum(nuclei[rows, cols], rng.uniform(0.55, 0.85))


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
  theta = rng.uniform(0, 2 * np.pi)
  return np.array([np.sin(theta), np.cos(theta)])


def _colourise(rng: np.random.Generator, cytoplasm: np.ndarray, nuclei: np.ndarray, hue_shift: float) -> np.ndarray:
  """Turns the two stain maps into RGB as fluorescence (additive on black) or brightfield (absorbing)."""
  hue_variation = hue_shift + rng.normal(0.0, 0.035)  # Staining differs from batch to batch.
  if rng.random() >= _BRIGHTFIELD_FRACTION:
    cytoplasm_colour = _hue_to_rgb(0.33 + hue_variation)  # Green, FITC/GFP-like.
    nucleus_colour = _hue_to_rgb(rng.uniform(0.58, 0.70))  # DAPI/Hoechst blue.
    background = rng.uniform(0.0, 0.04)
    return background + cytoplasm[..., None] * cytoplasm_colour + nuclei[..., None] * nucleus_colour
  # Brightfield: optical densities of eosin-like (cytoplasm) and haematoxylin-like (nucleus) stains.
  cytoplasm_density = 1.2 * (1.0 - _hue_to_rgb(0.93 + hue_variation))  # Pink.
  nucleus_density = 1.6 * (1.0 - _hue_to_rgb(rng.uniform(0.70, 0.80)))
  background = (rng.uniform(0.75, 0.95) * (1.0 - rng.uniform(0.0, 0.08, 3))).astype(np.float32)
  density = cytoplasm[..., None] * cytoplasm_density + nuclei[..., None] * nucleus_density
  return background * np.exp(-density)


def _hue_to_rgb(hue: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.75, 1.0), np.float32)


def _illumination(rng: np.random.Generator, size: int) -> np.ndarray:
  """A linear illumination gradient across the field, up to +-25 % at the edges."""
  direction = _unit_vector(rng)
  coordinates = (np.arange(size) - size / 2) / size
  ramp = coordinates[:, None] * direction[0] + coordinates[None, :] * direction[1]
  return (1.0 + rng.uniform(0.0, 0.5) * ramp).astype(np.float32)
