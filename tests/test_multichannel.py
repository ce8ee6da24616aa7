"""N-channel microscopy: multi-channel TIFF / OME-TIFF, per-channel files grouped by a pattern, the skips they can
cause, ImageNet stems adapted to N channels, colour composites, and a whole N-channel study with prediction."""

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from jaxcell import config as config_lib
from jaxcell import predict, study, validation
from jaxcell.convert import pretrained
from jaxcell.data import channel_files, decode, normalization
from jaxcell.data.folder import read_image_folder
from jaxcell.reporting import composite

RNG = np.random.default_rng(0)
PLANES = RNG.integers(0, 65535, (5, 20, 24), dtype=np.uint16)  # 5 channels, 16-bit, 20 x 24 px.


def _alone(plane, size=16):
  """One channel decoded on its own as a greyscale image: what channel c of the N-channel image must equal."""
  return decode.from_array(plane, size, 1, "full_range")[..., 0]


@pytest.mark.parametrize(
  "layout",
  [
    dict(data=PLANES, metadata={"axes": "CYX"}),  # OME-TIFF style channel axis.
    dict(data=PLANES, photometric="minisblack", metadata=None),  # A plain multi-page TIFF: pages are channels.
    dict(data=np.moveaxis(PLANES, 0, -1), photometric="minisblack", planarconfig="contig"),  # Samples per pixel.
    dict(data=PLANES[None], imagej=True, metadata={"axes": "ZCYX"}),  # ImageJ hyperstack with one Z plane.
  ],
)
def test_multi_channel_tiffs_decode_channel_by_channel(tmp_path, layout):
  path = str(tmp_path / "site.ome.tif")
  data = layout.pop("data")
  tifffile.imwrite(path, data, **layout)
  image = decode.decode_image(path, 16, 5, "full_range")
  assert image.shape == (16, 16, 5) and image.dtype == np.uint8
  for c in range(5):
    np.testing.assert_array_equal(image[..., c], _alone(PLANES[c]))
  assert decode.describe(path) == {"height": 20, "width": 24, "channels": 5, "bits": 16}


def test_tiffs_that_are_not_one_multi_channel_plane_are_refused_with_the_reason(tmp_path):
  tifffile.imwrite(tmp_path / "z.tif", PLANES, metadata={"axes": "ZYX"})
  _, reason = decode.decode_or_reason(str(tmp_path / "z.tif"), 16, 5, "full_range")
  assert "Z=5" in reason and "Z-stack" in reason
  tifffile.imwrite(tmp_path / "c.tif", PLANES, metadata={"axes": "CYX"})
  _, reason = decode.decode_or_reason(str(tmp_path / "c.tif"), 16, 4, "full_range")
  assert reason.startswith("5 channels, but data.channels is 4") and "data.channels=5" in reason


def _write_rxrx(root, sizes=None):
  """RxRx-style per-channel PNGs: root/<class>/<well>_s<site>_w<channel>.png, 4 channels, 8- or 16-bit."""
  truth = {}
  for cls, brightness in (("control", 40), ("treated", 160)):
    os.makedirs(root / cls, exist_ok=True)
    for site in range(1, 4):
      planes = RNG.integers(0, brightness, (4, 12, 12)).astype(np.uint8)
      for w in range(1, 5):
        Image.fromarray(planes[w - 1]).save(root / cls / f"B02_s{site}_w{w}.png")
      truth[f"{cls}/B02_s{site}_w{{channel}}.png"] = planes
  return truth


def test_channel_files_are_grouped_into_images_in_channel_order(tmp_path):
  truth = _write_rxrx(tmp_path)
  dataset = read_image_folder(str(tmp_path), 12, 4, channel_pattern="{well}_s{site}_w{channel}.png")
  assert set(dataset.paths) == set(truth) and dataset.images.shape == (6, 12, 12, 4)
  for path, image in zip(dataset.paths, dataset.images):
    np.testing.assert_array_equal(image, np.moveaxis(truth[path], 0, -1))
  assert not dataset.skipped


def test_channel_numbers_sort_as_numbers():
  candidates = [(f"a/x_w{w}.png", "a", None) for w in (10, 2, 1)]
  images, files_of, skipped = channel_files.group(candidates, "{site}_w{channel}.png", 3)
  assert files_of["a/x_w{channel}.png"] == ["a/x_w1.png", "a/x_w2.png", "a/x_w10.png"] and not skipped


def test_bad_channel_files_are_listed_skips_naming_file_and_reason(tmp_path):
  _write_rxrx(tmp_path)
  os.remove(tmp_path / "control" / "B02_s1_w3.png")  # A missing channel.
  Image.fromarray(np.zeros((9, 12), np.uint8)).save(tmp_path / "control" / "B02_s2_w4.png")  # A mis-sized one.
  Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "treated" / "B02_s3_w2.png")  # RGB, not a channel.
  Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "treated" / "thumbnail.png")  # Not in the pattern.
  dataset = read_image_folder(str(tmp_path), 12, 4, channel_pattern="{well}_s{site}_w{channel}.png")
  reasons = {s.path: s.reason for s in dataset.skipped}
  assert sorted(dataset.paths) == ["control/B02_s3_w{channel}.png", "treated/B02_s1_w{channel}.png",
                                   "treated/B02_s2_w{channel}.png"]  # fmt: skip
  for w in (1, 2, 4):
    assert "lacks channel(s) ['3']" in reasons[f"control/B02_s1_w{w}.png"]
  assert (
    "channel file control/B02_s2_w4.png is 9x12 px, but control/B02_s2_w1.png is 12x12"
    in reasons["control/B02_s2_w{channel}.png"]
  )
  assert "treated/B02_s3_w2.png has 3 channels" in reasons["treated/B02_s3_w{channel}.png"]
  assert "does not match data.channel_pattern" in reasons["treated/thumbnail.png"]


def test_a_pattern_finding_another_channel_count_is_refused_before_compute(tmp_path):
  _write_rxrx(tmp_path)
  with pytest.raises(ValueError, match=r"finds 4 channel values \['1', '2', '3', '4'\] but data.channels is 5"):
    read_image_folder(str(tmp_path), 12, 5, channel_pattern="{well}_s{site}_w{channel}.png")


def test_bad_channel_settings_are_refused_by_the_config_check():
  c = config_lib.base_config()
  for field, value, message in (
    ("channels", 0, "data.channels"),
    ("channel_pattern", "{well}_s{site}.png", "data.channel_pattern"),
  ):
    bad = config_lib.base_config()
    bad.data[field] = value
    with pytest.raises(ValueError, match=message):
      validation.check_config(bad)
  c.output.channel_colors = "blue,not-a-colour"
  with pytest.raises(ValueError, match="output.channel_colors"):
    validation.check_config(c)


def test_an_rgb_stem_adapted_to_n_channels_sees_a_grey_image_as_before():
  kernel = RNG.normal(size=(3, 3, 3, 8)).astype(np.float32)
  loaded = pretrained.Pretrained("w.npz", {"normalization": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.3]}}, {})
  for n in (1, 2, 5):
    adapted = pretrained._adapt_channels(("params", "conv1", "kernel"), kernel, (3, 3, n, 8))
    assert adapted.shape == (3, 3, n, 8)
    grey = np.full((3, 3), 0.7, np.float32)  # One patch of a uniform grey: the response must not change.
    np.testing.assert_allclose(
      np.einsum("hw,hwo->o", grey, adapted.sum(axis=2)), np.einsum("hw,hwo->o", grey, kernel.sum(axis=2)), rtol=1e-5
    )
    np.testing.assert_allclose(adapted[:, :, 0], kernel.mean(axis=2) * 3 / n, rtol=1e-6)
    mean, std = loaded.normalization(n)
    assert mean.shape == (n,) and np.allclose(mean, 0.5) and np.allclose(std, 0.7 / 3)
  assert pretrained._adapt_channels(("params", "conv1", "kernel"), kernel, (3, 3, 3, 8)) is None  # Not needed.
  mean, _ = normalization.normalization_constants("imagenet", np.zeros((1, 2, 2, 4), np.uint8))
  assert mean.shape == (4,) and np.allclose(mean, np.mean(normalization.IMAGENET_MEAN))


def test_n_channel_images_are_shown_as_colour_composites():
  image = np.zeros((2, 2, 4), np.uint8)
  image[..., 2] = 255  # Only the third channel is bright: red by default.
  assert composite.composite(image)[0, 0].tolist() == [255, 0, 0]
  assert composite.composite(image, "white,white,yellow,blue")[0, 0].tolist() == [255, 255, 0]
  grey = np.full((2, 2, 1), 9, np.uint8)
  assert composite.composite(grey).shape == (2, 2)  # Greyscale and RGB are shown as they are.
  with pytest.raises(ValueError, match="not a colour"):
    composite.parse_colors("blue,nope")


def test_an_n_channel_study_trains_reports_and_predicts(tmp_path):
  truth = _write_rxrx(tmp_path / "data")
  c = config_lib.base_config()
  config_lib.shrink_for_smoke(c)
  c.data.source, c.data.root, c.data.image_size = "folder", str(tmp_path / "data"), 12
  c.data.channels, c.data.channel_pattern = 4, "{well}_s{site}_w{channel}.png"
  c.model.name = "resnet18"
  c.protocol.holdout_fraction, c.protocol.num_folds = 0.34, 2
  c.train.num_steps, c.train.batch_size = 2, 2
  workdir = str(tmp_path / "run")
  s = study.run_study(c, workdir)
  assert s.dataset.images.shape[-1] == 4 and set(s.dataset.paths) == set(truth)
  with open(os.path.join(workdir, "report.html")) as f:
    report = f.read()
  assert 'alt="control/B02_s' in report or 'alt="treated/B02_s' in report  # Example thumbnails were drawn.

  new = tmp_path / "new"
  new.mkdir()
  for w in range(1, 5):
    Image.fromarray(truth["treated/B02_s1_w{channel}.png"][w - 1]).save(new / f"C07_s9_w{w}.png")
  Image.fromarray(np.zeros((12, 12), np.uint8)).save(new / "D01_s1_w1.png")  # An image without its other channels.
  assert predict.main(["--workdir", workdir, "--images", str(new)]) == 0
  with open(os.path.join(workdir, "predictions_new.csv")) as f:
    text = f.read()
  assert f"{new}/C07_s9_w{{channel}}.png,scored" in text
  assert "lacks channel(s) ['2', '3', '4']" in text


def test_duplicate_images_compare_every_channel_file(tmp_path):
  from jaxcell.data import duplicates

  _write_rxrx(tmp_path)
  for w in range(1, 5):  # treated site 9 is a byte copy of control site 1; control site 2 differs in one channel only.
    (tmp_path / "treated" / f"B02_s9_w{w}.png").write_bytes((tmp_path / "control" / f"B02_s1_w{w}.png").read_bytes())
  pattern = "{well}_s{site}_w{channel}.png"
  dataset = read_image_folder(str(tmp_path), 12, 4, channel_pattern=pattern)
  groups = duplicates.find_duplicates(str(tmp_path), dataset, pattern)
  assert [(g.kind, g.paths) for g in groups] == [
    ("across_classes", ("control/B02_s1_w{channel}.png", "treated/B02_s9_w{channel}.png"))
  ]
