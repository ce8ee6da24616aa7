"""The BioNIC catalogue (jaxcell/bionic.py, configs/bionic*.py): each experiment resolves to the arms and settings
the reference lists, and each runs as a study (smoke-sized)."""

import csv
import importlib.util
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxcell import arms as arms_lib
from jaxcell import bionic, study
from jaxcell.data import preprocess
from jaxcell.reporting import preprocess_examples

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config_file(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config


def test_dataset_settings_follow_the_reference():
  cho = config_file("bionic")("root=/data/CHO,dataset=CHO_images")
  assert (cho.model.name, cho.transfer.preset, cho.train.num_epochs, cho.train.learning_rate) == (
    "vgg16",
    "vgg_all",
    15,
    1e-3,
  )
  assert cho.data.preprocess_threshold_offset == 50.0 and cho.data.root == "/data/CHO"
  wbc = config_file("bionic")("root=/d,dataset=blood_WBC")
  assert (wbc.model.name, wbc.train.num_epochs, wbc.train.learning_rate) == ("cnn_all", 30, 1e-2)
  own = config_file("bionic")("root=/d,dataset=blood_WBC,epochs=3,lr=0.5,model=ResNet_lower")
  assert (own.model.name, own.transfer.preset, own.train.num_epochs, own.train.learning_rate) == (
    "resnet18",
    "resnet_lower",
    3,
    0.5,
  )
  malaria = config_file("bionic")("tfds=malaria,tfds_split=train[:10%]")
  assert (malaria.data.source, malaria.data.tfds_name, malaria.data.tfds_split) == ("tfds", "malaria", "train[:10%]")
  assert malaria.protocol.max_per_class == 500 and malaria.model.name == "cnn_all"  # BioNIC's malaria set-up.
  plain = config_file("bionic")("root=/d")
  assert (plain.model.name, plain.train.num_epochs, plain.data.source) == ("resnet18", 8, "folder")


@pytest.mark.parametrize(
  "config, arms",
  [
    ("bionic_preprocess", bionic.PREPROCESS_ARMS),
    ("bionic_augment", tuple(bionic.AUGMENT_ARMS)),
  ],
)
def test_study_configs_have_their_arms_in_order(config, arms):
  resolved = arms_lib.arm_configs(config_file(config)("root=/d,dataset=CHO_images"))
  assert tuple(resolved) == arms  # The first is the baseline of every paired comparison.
  assert all(c.model.name == "vgg16" and c.transfer.preset == "vgg_all" for c in resolved.values())
  if config == "bionic_preprocess":
    assert [c.data.preprocess for c in resolved.values()] == list(arms)
  else:
    assert resolved["none"].augment.rotation_degrees == 0 and not resolved["none"].augment.hflip
    assert resolved["bionic"].augment.rotation_degrees == 90 and resolved["bionic"].augment.vflip
    assert tuple(resolved["crop"].augment.crop_scale) == (0.5, 1.0) and resolved["all"].augment.brightness == 0.2


def test_blog1_arms_are_bionics_six_set_ups_with_weights_per_family():
  c = config_file("bionic")("root=/d,experiment=blog1,resnet18_weights=r.npz,vgg16_weights=v.npz")
  resolved = arms_lib.arm_configs(c)
  got = {name: (a.model.name, a.transfer.preset, a.transfer.weights, a.train.frozen) for name, a in resolved.items()}
  assert got == {
    "Vgg_all": ("vgg16", "vgg_all", "v.npz", "^features_"),
    "Vgg_lower": ("vgg16", "vgg_lower", "v.npz", "^features_"),
    "ResNet_all": ("resnet18", "resnet_all", "r.npz", "^(?!fc/)"),
    "ResNet_lower": ("resnet18", "resnet_lower", "r.npz", "^(?!fc/)"),
    "CNN_all": ("cnn_all", "", "", ""),
    "CNN_flat": ("cnn_flat", "", "", ""),
  }
  assert resolved["Vgg_lower"].model.vgg_features == 14 and resolved["ResNet_lower"].model.stages == 2


@pytest.mark.parametrize(
  "arg, message",
  [
    ("experiment=cellnet", "needs cellnet=<workdir>"),
    ("experiment=blog9", "experiment='blog9'; use one of"),
    ("dataset=CHO", "dataset='CHO' is not one of BioNIC's datasets"),
    ("root=/d,tfds=malaria", "not both"),
    ("epoch=3", "Unknown config argument 'epoch'"),
  ],
)
def test_bad_arguments_are_refused_clearly(arg, message):
  with pytest.raises(ValueError, match=message):
    config_file("bionic")(arg)


def _tiny(c):
  c.data.synthetic.images_per_class = 12
  c.train.num_steps = 2
  c.train.batch_size = 4
  return c


@pytest.mark.parametrize("config, arg", [("bionic", "smoke,experiment=blog1"), ("bionic_augment", "smoke")])
def test_each_experiment_runs_as_a_study(tmp_path, config, arg):
  c = _tiny(config_file(config)(arg))
  study.run_study(c, str(tmp_path))
  _check_arms_and_comparisons(tmp_path, c)


def _check_arms_and_comparisons(workdir, c):
  with open(workdir / "results.csv", newline="") as f:
    arms = {row["arm"] for row in csv.DictReader(f) if row["status"] == "ok"}
  assert set(c.arms.keys()) <= arms
  first = next(iter(arms_lib.arm_configs(c)))
  assert f"| {first} (A) vs " in (workdir / "comparisons.md").read_text()
  report = (workdir / "report.html").read_text()
  assert "The answer, in short" in report and f"{first} vs " in report.split("The answer, in short")[1][:2000]


def test_the_preprocess_study_runs_on_tfds_malaria(tmp_path, monkeypatch):
  """The pre-processing experiment on tfds's malaria (mock data in place of the download), like a folder."""
  c = _tiny(config_file("bionic_preprocess")(f"tfds=malaria,tfds_data_dir={tmp_path / 'tfds'},smoke,model=resnet18"))
  c.protocol.max_per_class = None
  drawn = {}
  real_plot = preprocess_examples.plot_preprocess_examples
  monkeypatch.setattr(
    preprocess_examples, "plot_preprocess_examples", lambda images, *a: drawn.update(images) or real_plot(images, *a)
  )
  with tfds.testing.mock_data(num_examples=24):
    s = study.run_study(c, str(tmp_path / "run"))
  # One example per class and variant, drawn from the pixels the arm trained on: preprocess.apply_one of the image.
  assert list(drawn) == list(bionic.PREPROCESS_ARMS)
  picks = preprocess_examples.example_indices(s.dataset.labels, s.splits.holdout, 2)
  assert sorted(s.dataset.labels[picks].tolist()) == [0, 1] and set(picks) <= set(s.splits.holdout.tolist())
  for name, images in drawn.items():
    params = preprocess.params_from_config(s.arms[name].config.data)
    expected = [preprocess.apply_one(s.dataset.images[i], params) for i in picks]
    np.testing.assert_array_equal(images, np.stack(expected), err_msg=name)
  assert (tmp_path / "run" / "preprocess_examples.png").stat().st_size > 0
  assert "Pre-processing variants" in (tmp_path / "run" / "report.html").read_text()
  assert s.dataset.class_names == ("parasitized", "uninfected")
  assert "tfds malaria[train]" in (tmp_path / "run" / "summary.md").read_text()
  with open(tmp_path / "run" / "splits.csv", newline="") as f:
    assert all(row["path"].startswith("tfds:malaria/train/") for row in csv.DictReader(f))
  _check_arms_and_comparisons(tmp_path / "run", c)


def test_examples_are_drawn_once_per_variant_and_only_when_an_arm_preprocesses():
  assert preprocess_examples.variant_rows({"a": "none", "b": "none"}) == {}
  rows = preprocess_examples.variant_rows({"base": "none", "x": "clahe", "y": "clahe", "z": "lbp"})
  assert rows == {"base": "none", "x": "clahe", "z": "lbp"}
  labels = np.array([0, 0, 1, 1, 2])
  assert preprocess_examples.example_indices(labels, np.array([1, 3]), 3) == [1, 3, 4]  # Class 2: not in holdout.


def test_center_crop_follows_torchvision_rounding_and_pads_small_images():
  from jaxcell.data import decode

  image = np.arange(7 * 6, dtype=np.uint8).reshape(7, 6)
  crop = decode.center_crop(image, 4)
  # torchvision: top = round((7 - 4) / 2) = 2 (round half to even), left = round((6 - 4) / 2) = 1.
  np.testing.assert_array_equal(crop[..., 0], image[2:6, 1:5])
  padded = decode.center_crop(np.full((3, 5, 3), 9, np.uint8), 8)
  assert padded.shape == (8, 8, 3)
  rows, cols = np.nonzero(padded[..., 0])
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 4, 1, 5)  # (8 - 3) // 2 = 2 and (8 - 5) // 2 = 1.


def test_the_image_size_study_trains_each_arm_at_its_own_size_and_predicts_with_it(tmp_path):
  from PIL import Image

  from jaxcell import predict as predict_lib

  c = _tiny(config_file("bionic")("smoke,experiment=image_size,size=24,large_size=40"))
  s = study.run_study(c, str(tmp_path / "run"))
  shapes = {name: arm.data.images.shape[1:] for name, arm in s.arms.items()}
  assert shapes == {"resize": (24, 24, 3), "center_crop": (24, 24, 3), "large": (40, 40, 3)}
  # The synthetic cells rendered at 48 px and cropped, not resized: the crop's pixels differ from the resize's.
  assert not np.array_equal(np.asarray(s.arms["resize"].data.images), np.asarray(s.arms["center_crop"].data.images))
  _check_arms_and_comparisons(tmp_path / "run", c)
  (tmp_path / "new").mkdir()
  for i, image in enumerate(s.dataset.images[:3]):
    Image.fromarray(image).save(tmp_path / "new" / f"{i}.png")
  for arm in ("large", "center_crop"):
    result = predict_lib.predict_new_images(str(tmp_path / "run"), [str(tmp_path / "new")], arm=arm)
    assert len(result["rows"]) == 3 and result["arm"] == arm
  assert "input 40 px (resize)" in (tmp_path / "run" / "summary.md").read_text()


def test_the_cellnet_experiment_pairs_imagenet_and_cellnet_starts_of_bionics_resnet_set_ups():
  from jaxcell import arms as arms_lib

  c = config_file("bionic")("experiment=cellnet,cellnet=runs/cn,resnet18_weights=r18.npz")
  arms = arms_lib.arm_configs(c)
  assert list(arms) == ["ResNet_all", "CellNet_all", "ResNet_lower", "CellNet_lower"]
  assert [arms[a].transfer.weights for a in arms] == ["r18.npz", "cellnet:runs/cn", "r18.npz", "cellnet:runs/cn"]
  assert [arms[a].transfer.preset for a in arms] == ["resnet_all", "resnet_all", "resnet_lower", "resnet_lower"]
