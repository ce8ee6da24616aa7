"""data.source='tfds': tensorflow-datasets read into the same Dataset as a folder, offline.

Two kinds of fake: `tfds.testing.mock_data` stands in for the registered 'malaria' (no download), and a tiny
builder defined here is really prepared in a temporary folder, so split specs, tfds ids and errors are tfds's own.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxcell import config as config_lib
from jaxcell.data import decode, loading, tfds_source
from jaxcell.data.tfds_source import TfdsError, read_tfds


class TinyCells(tfds.core.GeneratorBasedBuilder):
  """Six greyscale 'cells' per class, of varying sizes, stored in a train and a test split."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(None, None, 1)), "label": tfds.features.ClassLabel(names=["b", "a"])}
      ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0), "test": self._generate_examples(100)}

  def _generate_examples(self, offset):
    for i in range(12):
      side = 9 + i
      yield i, {"image": np.full((side, side + 3, 1), offset + 10 * i, np.uint8), "label": i % 2}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  TinyCells(data_dir=data_dir).download_and_prepare()
  return data_dir


def test_a_prepared_dataset_reads_like_a_folder(tiny_dir):
  ds = read_tfds("tiny_cells", "train", tiny_dir, 8, 3)
  assert ds.images.shape == (12, 8, 8, 3) and ds.images.dtype == np.uint8
  assert ds.class_names == ("b", "a")  # The label feature's order, not sorted.
  assert sorted(ds.labels.tolist()) == [0] * 6 + [1] * 6
  assert len(set(ds.paths)) == 12 and all(p.startswith("tfds:tiny_cells/train/") for p in ds.paths)
  # Each image is its example converted like a file: greyscale replicated to RGB, resized to 8 px.
  by_value = {int(image[0, 0, 0]): label for image, label in zip(ds.images, ds.labels)}
  assert by_value == {10 * i: i % 2 for i in range(12)}
  again = read_tfds("tiny_cells", "train", tiny_dir, 8, 3)
  assert again.paths == ds.paths and np.array_equal(again.images, ds.images)  # Stable order and ids.


def test_split_specs_are_tfds_own(tiny_dir):
  assert len(read_tfds("tiny_cells", "train[:50%]", tiny_dir, 8, 1)) == 6
  both = read_tfds("tiny_cells", "train+test", tiny_dir, 8, 1)
  assert len(both) == 24 and both.images.shape[-1] == 1
  with pytest.raises(TfdsError, match=r"tfds_split='validation' is not a split of tfds tiny_cells.*'test', 'train'"):
    read_tfds("tiny_cells", "validation", tiny_dir, 8, 3)
  with pytest.raises(TfdsError, match=r"no example of class\(es\) \['a'\]"):
    read_tfds("tiny_cells", "train[:1]", tiny_dir, 8, 3)


def test_the_cache_is_read_instead_of_the_records(tiny_dir, tmp_path, monkeypatch):
  first = read_tfds("tiny_cells", "test", tiny_dir, 8, 3, cache_dir=str(tmp_path))
  assert os.path.exists(first.cache_path)
  monkeypatch.setattr(tfds_source, "_examples", lambda *a: pytest.fail("decoded again"))
  second = read_tfds("tiny_cells", "test", tiny_dir, 8, 3, cache_dir=str(tmp_path))
  assert second.paths == first.paths and np.array_equal(second.images, first.images)
  monkeypatch.undo()
  other = tmp_path / "other"
  read_tfds("tiny_cells", "test", tiny_dir, 8, 3, cache_dir=str(other), write_cache=False)
  assert not other.exists()  # A study validates before it writes anything.


def test_an_unprepared_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(TfdsError, match=rf"not prepared in {tmp_path}.*`tfds build malaria --data_dir {tmp_path}`"):
    read_tfds("malaria", "train", str(tmp_path), 8, 3)


def test_a_manual_download_dataset_names_the_manual_folder(tmp_path):
  # patch_camelyon downloads itself; curated_breast_imaging_ddsm is one tfds cannot download.
  with pytest.raises(TfdsError, match=rf"manual download first, into {tmp_path}/downloads/manual"):
    read_tfds("curated_breast_imaging_ddsm", "train", str(tmp_path), 8, 3)


def test_an_unknown_name_gets_a_did_you_mean(tmp_path):
  with pytest.raises(
    TfdsError, match=r"tfds_name='malria' is not a tensorflow-datasets dataset. Did you mean.*malaria"
  ):
    read_tfds("malria", "train", str(tmp_path), 8, 3)


def test_a_bad_example_is_a_listed_skip_and_a_corrupt_record_a_clear_error(tmp_path):
  def examples(self, split, **kwargs):
    images = [np.zeros((5, 6, 3), np.uint8), np.zeros((5, 6, 7), np.uint8), np.ones((4, 4, 3), np.uint8)]

    def generate():
      for image, label in zip(images, [0, 0, 1]):
        yield {"image": image, "label": label}

    spec = {"image": tf.TensorSpec((None, None, None), tf.uint8), "label": tf.TensorSpec((), tf.int64)}
    return tf.data.Dataset.from_generator(generate, output_signature=spec)

  with tfds.testing.mock_data(as_dataset_fn=examples):
    ds = read_tfds("malaria", "train", str(tmp_path), 8, 3)
  assert len(ds) == 2 and ds.paths == ("tfds:malaria/train/00000000", "tfds:malaria/train/00000002")
  assert [s.path for s in ds.skipped] == [
    "tfds:malaria/train/00000001"
  ] and "7 channels, but data.channels is 3" in ds.skipped[0].reason

  def truncated(self, split, **kwargs):
    def generate():
      yield {"image": np.zeros((5, 5, 3), np.uint8), "label": 0}
      raise tf.errors.DataLossError(None, None, "truncated record at 4096")

    spec = {"image": tf.TensorSpec((None, None, 3), tf.uint8), "label": tf.TensorSpec((), tf.int64)}
    return tf.data.Dataset.from_generator(generate, output_signature=spec)

  with tfds.testing.mock_data(as_dataset_fn=truncated):
    with pytest.raises(TfdsError, match=r"failed after 1 examples.*`tfds build malaria --overwrite`"):
      read_tfds("malaria", "train", str(tmp_path), 8, 3)


def test_malaria_through_load_dataset_with_mock_data(tmp_path):
  c = config_lib.base_config()
  c.data.source, c.data.tfds_name, c.data.tfds_data_dir, c.data.image_size = "tfds", "malaria", str(tmp_path), 16
  with tfds.testing.mock_data(num_examples=20):
    ds = loading.load_dataset(c.data)
  assert ds.class_names == ("parasitized", "uninfected") and ds.images.shape == (20, 16, 16, 3)
  assert loading.source_text(c.data) == "tfds malaria[train]"
  with tfds.testing.mock_data(num_examples=20):
    first = tfds.as_numpy(
      tfds.builder("malaria", data_dir=str(tmp_path)).as_dataset(split="train", shuffle_files=False)
    )
    expected = decode.from_array(next(iter(first))["image"], 16, 3, "full_range")
  np.testing.assert_array_equal(ds.images[0], expected)
