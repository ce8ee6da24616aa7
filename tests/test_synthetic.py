"""Tests for the synthetic cell dataset: determinism, format, balance, and a task that is not trivial."""

import ml_collections
import numpy as np
import pytest
from PIL import Image
from skimage import measure

from jaxcell.data.loading import load_dataset
from jaxcell.data.synthetic import CLASS_NAMES, make_synthetic_cells


@pytest.fixture(scope="module")
def cells():
  return make_synthetic_cells(images_per_class=20, image_size=64, seed=0)


def test_format_labels_and_paths(cells):
  assert cells.images.shape == (120, 64, 64, 3) and cells.images.dtype == np.uint8
  assert cells.labels.dtype == np.int32
  assert cells.class_names == CLASS_NAMES == tuple(sorted(CLASS_NAMES))
  assert 5 <= cells.num_classes <= 6
  assert cells.class_counts.tolist() == [20] * cells.num_classes
  assert cells.paths[0] == f"synthetic/{CLASS_NAMES[0]}/00000"
  assert cells.paths[21] == f"synthetic/{CLASS_NAMES[1]}/00001"
  assert all(path.split("/")[1] == cells.class_names[label] for path, label in zip(cells.paths, cells.labels))
  assert cells.groups is None and cells.skipped == ()
  assert 5 < cells.images.mean() < 200 and cells.images.std() > 10  # Neither blank nor saturated.


def test_deterministic_and_independent_of_how_many_are_generated(cells):
  again = make_synthetic_cells(images_per_class=20, image_size=64, seed=0)
  np.testing.assert_array_equal(again.images, cells.images)
  fewer = make_synthetic_cells(images_per_class=3, image_size=64, seed=0)
  np.testing.assert_array_equal(fewer.images[3:6], cells.images[20:23])  # Each image has its own rng.
  other = make_synthetic_cells(images_per_class=3, image_size=64, seed=1)
  assert not np.array_equal(other.images, fewer.images)
  assert all(not np.array_equal(a, b) for a, b in zip(other.images, fewer.images))


def test_images_within_a_class_differ(cells):
  first_class = cells.images[cells.labels == 0].astype(np.int16)
  assert all(np.abs(first_class[0] - image).mean() > 5 for image in first_class[1:])


def test_greyscale_is_the_luminance_of_the_colour_image():
  colour = make_synthetic_cells(images_per_class=2, image_size=32, seed=3)
  grey = make_synthetic_cells(images_per_class=2, image_size=32, seed=3, channels=1)
  assert grey.images.shape == (12, 32, 32, 1)
  luminance = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in colour.images])
  assert np.abs(grey.images[..., 0].astype(int) - luminance).max() <= 1  # Rounding order only.


def test_small_sizes_work():
  tiny = make_synthetic_cells(images_per_class=1, image_size=16, seed=0)
  assert tiny.images.shape == (6, 16, 16, 3)


def test_mean_colour_does_not_separate_the_classes(cells):
  """A nearest-class-mean classifier on per-image mean RGB stays far from perfect."""
  mean_rgb = cells.images.reshape(len(cells), -1, 3).mean(1)
  train = np.arange(len(cells)) % 2 == 0
  centroids = np.stack([mean_rgb[train & (cells.labels == c)].mean(0) for c in range(cells.num_classes)])
  distances = ((mean_rgb[~train, None] - centroids[None]) ** 2).sum(-1)
  accuracy = np.mean(distances.argmin(1) == cells.labels[~train])
  assert accuracy < 0.6


def _mean_eccentricity(image: np.ndarray) -> float:
  """Mean eccentricity of the objects that stand out from the background colour."""
  pixels = image.astype(np.float32) / 255
  background = np.median(pixels.reshape(-1, 3), axis=0)
  foreground = np.abs(pixels - background).sum(-1) > 0.15
  objects = [p for p in measure.regionprops(measure.label(foreground)) if p.area >= 8]
  return float(np.mean([p.eccentricity for p in objects])) if objects else 0.0


def test_shape_differs_between_classes(cells):
  eccentricity = np.array([_mean_eccentricity(image) for image in cells.images])
  per_class = {name: eccentricity[cells.labels == c].mean() for c, name in enumerate(CLASS_NAMES)}
  assert per_class["elongated"] > per_class["normal"] + 0.08


def test_load_dataset_synthetic():
  config = ml_collections.ConfigDict(
    dict(
      source="synthetic",
      root="",
      image_size=16,
      channels=1,
      sixteen_bit="full_range",
      group_regex=None,
      group_csv=None,
      synthetic=ml_collections.ConfigDict(dict(images_per_class=2, seed=4)),
    )
  )
  dataset = load_dataset(config)
  np.testing.assert_array_equal(dataset.images, make_synthetic_cells(2, 16, seed=4, channels=1).images)
  config.group_regex = r"synthetic/(\w+)/"  # Groups work on synthetic ids too: one per class here.
  assert load_dataset(config).groups.tolist() == np.repeat(np.arange(6), 2).tolist()


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(images_per_class=0), "images_per_class is 0"),
    (dict(image_size=4), "image_size is 4"),
    (dict(channels=0), "channels is 0"),
  ],
)
def test_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    make_synthetic_cells(**{**dict(images_per_class=1, image_size=16, seed=0), **kwargs})
