"""Tests for the image-folder reader on real files of every supported (and unsupported) kind."""

import csv
import os

import ml_collections
import numpy as np
import pytest
import tifffile
from PIL import Image

from jaxcell.data import cache, folder
from jaxcell.data.loading import load_dataset
from jaxcell.workdir.records import write_skipped_report
from jaxcell.data.folder import read_image_folder

RGB = (200, 100, 50)


def _constant(colour, size=(12, 10)) -> np.ndarray:
  return np.broadcast_to(np.array(colour, np.uint8), (size[1], size[0], len(colour))).copy()


def _save(path, image_or_array, **kwargs) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = image_or_array if isinstance(image_or_array, Image.Image) else Image.fromarray(image_or_array)
  image.save(path, **kwargs)


def _save_tiff(path, array, **kwargs) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tifffile.imwrite(path, array, **kwargs)


def _write_mixed_folder(root) -> None:
  """Two classes of good images in many formats, plus one bad file of every kind."""
  rng = np.random.default_rng(0)
  _save(f"{root}/beta/rgb.png", _constant(RGB))
  _save(f"{root}/beta/photo.jpg", _constant(RGB, (16, 16)), quality=95)
  _save(f"{root}/beta/grey.png", _constant((77,))[..., 0])
  _save(f"{root}/alpha/rgba.png", _constant(RGB + (128,)))
  palette = Image.new("P", (9, 7))
  palette.putpalette([10, 20, 30] + [0] * 765)
  _save(f"{root}/alpha/palette.png", palette)
  _save_tiff(f"{root}/alpha/eight.tif", _constant(RGB))
  _save_tiff(f"{root}/alpha/sixteen.tif", np.full((6, 6), 257 * 40, np.uint16))
  _save(f"{root}/alpha/nested/deeper/image.bmp", _constant(RGB))
  # Bad files.
  with open(f"{root}/alpha/corrupt.png", "wb") as f:
    f.write(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
  open(f"{root}/alpha/empty.png", "wb").close()
  _save(f"{root}/beta/whole.jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), quality=95)
  with open(f"{root}/beta/whole.jpg", "rb") as f:
    data = f.read()
  with open(f"{root}/beta/truncated.jpg", "wb") as f:
    f.write(data[: len(data) // 2])
  os.remove(f"{root}/beta/whole.jpg")
  with open(f"{root}/beta/notes.txt", "w") as f:
    f.write("not an image")
  _save(f"{root}/beta/.hidden.png", _constant(RGB))
  _save(f"{root}/beta/cmyk.jpg", Image.new("CMYK", (8, 8), (0, 50, 100, 0)))
  _save_tiff(
    f"{root}/beta/stack.tif", np.zeros((3, 5, 5), np.uint8), photometric="minisblack", metadata={"axes": "ZYX"}
  )


def _reasons(dataset) -> dict[str, str]:
  return {s.path: s.reason for s in dataset.skipped}


def test_mixed_folder_reads_every_format_and_reports_every_bad_file(tmp_path):
  _write_mixed_folder(tmp_path)
  dataset = read_image_folder(str(tmp_path), image_size=8, channels=3)

  assert dataset.class_names == ("alpha", "beta")
  assert dataset.paths == (
    "alpha/eight.tif",
    "alpha/nested/deeper/image.bmp",
    "alpha/palette.png",
    "alpha/rgba.png",
    "alpha/sixteen.tif",
    "beta/grey.png",
    "beta/photo.jpg",
    "beta/rgb.png",
  )
  assert dataset.labels.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
  assert dataset.labels.dtype == np.int32
  assert dataset.images.shape == (8, 8, 8, 3) and dataset.images.dtype == np.uint8
  assert dataset.class_counts.tolist() == [5, 3] and len(dataset) == 8
  assert dataset.groups is None and dataset.given_split is None

  # Constant images stay constant through the resize, so each conversion can be checked exactly.
  by_path = dict(zip(dataset.paths, dataset.images))
  expected = {
    "alpha/eight.tif": RGB,
    "alpha/nested/deeper/image.bmp": RGB,
    "alpha/palette.png": (10, 20, 30),
    "alpha/rgba.png": (100, 50, 25),  # Composited over black: round(c * 128 / 255).
    "alpha/sixteen.tif": (40, 40, 40),  # 257 * 40 / 257.
    "beta/grey.png": (77, 77, 77),  # Replicated to 3 channels.
    "beta/rgb.png": RGB,
  }
  for path, colour in expected.items():
    assert np.all(by_path[path] == np.array(colour, np.uint8)), path
  assert np.all(np.abs(by_path["beta/photo.jpg"].astype(int) - RGB) <= 3)  # JPEG is lossy.

  reasons = _reasons(dataset)
  assert set(reasons) == {
    "alpha/corrupt.png",
    "alpha/empty.png",
    "beta/truncated.jpg",
    "beta/notes.txt",
    "beta/stack.tif",
    "beta/.hidden.png",
    "beta/cmyk.jpg",
  }
  assert "cannot identify image file" in reasons["alpha/corrupt.png"]
  assert reasons["alpha/empty.png"] == "zero-byte file"
  assert "truncated" in reasons["beta/truncated.jpg"]
  assert "not an image file extension (.txt)" in reasons["beta/notes.txt"]
  assert "TIFF with axes Z=3, Y=5, X=5" in reasons["beta/stack.tif"] and "Z-stack" in reasons["beta/stack.tif"]
  assert reasons["beta/.hidden.png"] == "hidden file"
  assert "unsupported mode 'CMYK'" in reasons["beta/cmyk.jpg"]


def test_skipped_report_csv(tmp_path):
  _write_mixed_folder(tmp_path / "data")
  dataset = read_image_folder(str(tmp_path / "data"), image_size=8, channels=3)
  write_skipped_report(dataset.skipped, str(tmp_path / "skipped.csv"))
  with open(tmp_path / "skipped.csv", newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["path", "reason"]
  assert sorted(row[0] for row in rows[1:]) == sorted(s.path for s in dataset.skipped)
  write_skipped_report((), str(tmp_path / "none.csv"))
  with open(tmp_path / "none.csv", newline="") as f:
    assert list(csv.reader(f)) == [["path", "reason"]]


def test_channels_one_uses_luminance_and_keeps_greyscale(tmp_path):
  _save(f"{tmp_path}/a/rgb.png", _constant(RGB))
  _save(f"{tmp_path}/b/grey.png", _constant((77,))[..., 0])
  _save(f"{tmp_path}/b/rgba.png", _constant(RGB + (255,)))
  dataset = read_image_folder(str(tmp_path), image_size=5, channels=1)
  assert dataset.images.shape == (3, 5, 5, 1)
  luminance = np.asarray(Image.fromarray(_constant(RGB)).convert("L"))[0, 0]
  assert luminance == 124  # (200 * 299 + 100 * 587 + 50 * 114) / 1000, rounded by PIL.
  by_path = dict(zip(dataset.paths, dataset.images))
  assert np.all(by_path["a/rgb.png"] == luminance)
  assert np.all(by_path["b/grey.png"] == 77)
  assert np.all(by_path["b/rgba.png"] == luminance)  # Opaque alpha changes nothing.


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_modes(tmp_path, channels):
  ramp = np.linspace(1000, 51400, 36).reshape(6, 6).astype(np.uint16)
  _save_tiff(f"{tmp_path}/a/ramp.tif", ramp)
  _save(f"{tmp_path}/b/ramp16.png", ramp)  # Pillow writes and reads this as mode I;16.
  _save_tiff(f"{tmp_path}/b/float.tif", ramp.astype(np.float32) / 7.0)

  full = read_image_folder(str(tmp_path), image_size=6, channels=channels, sixteen_bit="full_range")
  stretched = read_image_folder(str(tmp_path), image_size=6, channels=channels, sixteen_bit="per_image")
  by_path_full = dict(zip(full.paths, full.images))
  by_path_stretched = dict(zip(stretched.paths, stretched.images))
  expected_full = np.round(ramp / 257.0).astype(np.uint8)
  expected_stretched = np.round((ramp - 1000.0) * 255 / 50400).astype(np.uint8)
  for path in ("a/ramp.tif", "b/ramp16.png"):
    for c in range(channels):
      np.testing.assert_array_equal(by_path_full[path][..., c], expected_full)
      np.testing.assert_array_equal(by_path_stretched[path][..., c], expected_stretched)
  # Float images are always stretched to their own range.
  for by_path in (by_path_full, by_path_stretched):
    np.testing.assert_array_equal(by_path["b/float.tif"][..., 0], expected_stretched)


def test_sixteen_bit_rgba_tiff_is_composited_then_scaled(tmp_path):
  rgba = np.zeros((4, 4, 4), np.uint16)
  rgba[..., :3] = [65535, 25700, 0]
  rgba[..., 3] = 32768  # About half transparent.
  _save_tiff(f"{tmp_path}/a/rgba16.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
  _save(f"{tmp_path}/b/x.png", _constant(RGB))
  dataset = read_image_folder(str(tmp_path), image_size=4, channels=3)
  expected = np.round(np.round(np.array([65535, 25700, 0]) * 32768 / 65535) / 257)
  assert np.all(dataset.images[0] == expected.astype(np.uint8))


def test_resize_is_pil_bilinear_and_not_aspect_preserving(tmp_path):
  array = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
  _save(f"{tmp_path}/a/x.png", array)
  _save(f"{tmp_path}/b/y.png", array)
  dataset = read_image_folder(str(tmp_path), image_size=16, channels=3)
  expected = np.asarray(Image.fromarray(array).resize((16, 16), Image.BILINEAR))
  np.testing.assert_array_equal(dataset.images[0], expected)


def test_train_test_holdout_layout(tmp_path):
  for split, class_name, name in [
    ("train", "a", "1"),
    ("train", "a", "2"),
    ("train", "b", "3"),
    ("test", "a", "4"),
    ("test", "b", "5"),
    ("holdout", "c", "6"),
  ]:
    _save(f"{tmp_path}/{split}/{class_name}/{name}.png", _constant(RGB))
  dataset = read_image_folder(str(tmp_path), image_size=4, channels=3)
  assert dataset.class_names == ("a", "b", "c")  # Union over the splits.
  assert dataset.paths == (
    "holdout/c/6.png",
    "test/a/4.png",
    "test/b/5.png",
    "train/a/1.png",
    "train/a/2.png",
    "train/b/3.png",
  )
  assert dataset.labels.tolist() == [2, 0, 1, 0, 0, 1]
  assert dataset.given_split.tolist() == ["holdout", "test", "test", "train", "train", "train"]


def _config(data_root, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    dict(
      source="folder",
      root=str(data_root),
      image_size=4,
      channels=3,
      sixteen_bit="full_range",
      group_regex=None,
      group_csv=None,
      synthetic=ml_collections.ConfigDict(dict(images_per_class=2, seed=0)),
    )
  )
  config.update(overrides)
  return config


def _write_slides(root) -> None:
  for class_name, slide, index in [("a", "s2", 0), ("a", "s1", 1), ("b", "s1", 2), ("b", "s3", 3)]:
    _save(f"{root}/{class_name}/{slide}_{index}.png", _constant(RGB))


def test_groups_from_regex_and_csv(tmp_path):
  _write_slides(tmp_path / "data")
  dataset = load_dataset(_config(tmp_path / "data", group_regex=r"/(s\d+)_"))
  assert dataset.paths == ("a/s1_1.png", "a/s2_0.png", "b/s1_2.png", "b/s3_3.png")
  assert dataset.groups.tolist() == [0, 1, 0, 2] and dataset.groups.dtype == np.int32

  with open(tmp_path / "groups.csv", "w") as f:
    f.write("path,group\na/s1_1.png,zeta\na/s2_0.png,eta\nb/s1_2.png,zeta\nb/s3_3.png,theta\n")
  dataset = load_dataset(_config(tmp_path / "data", group_csv=str(tmp_path / "groups.csv")))
  assert dataset.groups.tolist() == [2, 0, 2, 1]  # eta < theta < zeta.


def test_images_without_group_are_an_error(tmp_path):
  _write_slides(tmp_path / "data")
  with pytest.raises(ValueError, match=r"2 images have no group .*'a/s2_0.png', 'b/s3_3.png'"):
    load_dataset(_config(tmp_path / "data", group_regex=r"s1"))
  with open(tmp_path / "groups.csv", "w") as f:
    f.write("path,group\na/s1_1.png,x\na/s2_0.png,x\nb/s1_2.png,y\n")
  with pytest.raises(ValueError, match=r"1 images have no group .*'b/s3_3.png'"):
    load_dataset(_config(tmp_path / "data", group_csv=str(tmp_path / "groups.csv")))


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(source="tfds"), r"data.source is 'tfds'"),
    (dict(channels=0), r"data.channels is 0; use 1 \(greyscale\), 3 \(RGB\) or"),
    (dict(image_size=0), r"data.image_size is 0"),
    (dict(sixteen_bit="clip"), r"data.sixteen_bit is 'clip'"),
    (dict(root=""), r"data.root is empty"),
  ],
)
def test_config_errors(tmp_path, overrides, message):
  _write_slides(tmp_path)
  with pytest.raises(ValueError, match=message):
    load_dataset(_config(tmp_path, **overrides))


def test_cache_hit_does_not_decode_and_keeps_skipped(tmp_path, monkeypatch):
  _write_mixed_folder(tmp_path / "data")
  calls = []
  real_decode = folder.decode_image

  def counting_decode(*args):
    calls.append(args[0])
    return real_decode(*args)

  monkeypatch.setattr(folder, "decode_image", counting_decode)
  cache_dir = tmp_path / "cache"
  first = read_image_folder(str(tmp_path / "data"), 8, 3, cache_dir=str(cache_dir))
  assert len(calls) == 13 and len(os.listdir(cache_dir)) == 1
  assert os.listdir(cache_dir)[0].endswith(".npz")

  calls.clear()
  second = read_image_folder(str(tmp_path / "data"), 8, 3, cache_dir=str(cache_dir))
  assert calls == []
  np.testing.assert_array_equal(second.images, first.images)
  np.testing.assert_array_equal(second.labels, first.labels)
  assert second.labels.dtype == np.int32
  assert (second.paths, second.class_names, second.skipped) == (first.paths, first.class_names, first.skipped)

  # Another size, or a changed file, is a new cache entry.
  read_image_folder(str(tmp_path / "data"), 4, 3, cache_dir=str(cache_dir))
  assert len(calls) == 13 and len(os.listdir(cache_dir)) == 2
  calls.clear()
  _save(f"{tmp_path}/data/beta/rgb.png", _constant((1, 2, 3)))
  os.utime(f"{tmp_path}/data/beta/rgb.png", ns=(1, 1))
  changed = read_image_folder(str(tmp_path / "data"), 8, 3, cache_dir=str(cache_dir))
  assert len(calls) == 13
  assert np.all(changed.images[changed.paths.index("beta/rgb.png")] == [1, 2, 3])


def test_given_split_survives_the_cache(tmp_path):
  for split, class_name in [("train", "a"), ("train", "b"), ("test", "a")]:
    _save(f"{tmp_path}/data/{split}/{class_name}/x.png", _constant(RGB))
  first = read_image_folder(str(tmp_path / "data"), 4, 3, cache_dir=str(tmp_path / "cache"))
  second = read_image_folder(str(tmp_path / "data"), 4, 3, cache_dir=str(tmp_path / "cache"))
  assert second.given_split.tolist() == first.given_split.tolist() == ["test", "train", "train"]


def test_error_for_empty_class_folder(tmp_path):
  _save(f"{tmp_path}/a/x.png", _constant(RGB))
  os.makedirs(tmp_path / "b")
  with open(tmp_path / "b" / "readme.txt", "w") as f:
    f.write("no images here")
  with pytest.raises(ValueError, match=r"Class folder '.*/b' contains no image file"):
    read_image_folder(str(tmp_path), 4, 3)


def test_error_for_class_with_only_unreadable_images(tmp_path):
  _save(f"{tmp_path}/a/x.png", _constant(RGB))
  os.makedirs(tmp_path / "b")
  open(tmp_path / "b" / "empty.png", "wb").close()
  with pytest.raises(ValueError, match=r"Class 'b' .* has no readable image"):
    read_image_folder(str(tmp_path), 4, 3)


def test_error_for_empty_root_and_single_class(tmp_path):
  with pytest.raises(ValueError, match=r"No class folders .* Expected root/<class>/<image>"):
    read_image_folder(str(tmp_path), 4, 3)
  with pytest.raises(ValueError, match=r"does not exist"):
    read_image_folder(str(tmp_path / "missing"), 4, 3)
  _save(f"{tmp_path}/only/x.png", _constant(RGB))
  with pytest.raises(ValueError, match=r"classification needs at least 2"):
    read_image_folder(str(tmp_path), 4, 3)


def test_error_when_nothing_is_readable(tmp_path):
  for class_name in ("a", "b"):
    os.makedirs(tmp_path / class_name)
    open(tmp_path / class_name / "empty.png", "wb").close()
  with pytest.raises(ValueError, match=r"No readable image .*2 files skipped"):
    read_image_folder(str(tmp_path), 4, 3)


def test_a_deferred_cache_write_keys_the_state_that_was_read(tmp_path, monkeypatch):
  """A study reads without writing, validates, then saves the cache: a file changed in between must not be cached
  under its new state (the decoded images are of the old one)."""
  _write_mixed_folder(tmp_path / "data")
  cache_dir = tmp_path / "cache"
  first = read_image_folder(str(tmp_path / "data"), 8, 3, cache_dir=str(cache_dir), write_cache=False)
  assert not cache_dir.exists() and first.cache_path.startswith(str(cache_dir))
  _save(f"{tmp_path}/data/beta/rgb.png", _constant((1, 2, 3)))  # Changed after the read.
  cache.save(first)
  assert os.listdir(cache_dir) == [os.path.basename(first.cache_path)]
  calls = []
  real_decode = folder.decode_image
  monkeypatch.setattr(folder, "decode_image", lambda *a: calls.append(a[0]) or real_decode(*a))
  second = read_image_folder(str(tmp_path / "data"), 8, 3, cache_dir=str(cache_dir))
  assert calls and second.cache_path != first.cache_path  # The changed folder is decoded again.
  assert second.images[second.paths.index("beta/rgb.png")][0, 0].tolist() == [1, 2, 3]
