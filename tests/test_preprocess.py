"""BioNIC's pre-processing as a data stage: each method against scikit-image called directly, the per-arm study
(matched lanes, cached, normalised after pre-processing), prediction with the arm's pre-processing, and bad values."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from skimage import exposure, feature, filters, morphology, transform

from jaxcell import arms as arms_lib
from jaxcell import config as config_lib
from jaxcell import predict as predict_lib
from jaxcell import study, validation
from jaxcell.data import preprocess

P = preprocess.Params()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
  """A real biomedical image shipped with scikit-image (immunohistochemistry), as uint8 RGB 64 x 64."""
  rgb = transform.resize(skdata.immunohistochemistry()[:256, :256], (64, 64), anti_aliasing=True)
  return np.round(rgb * 255).astype(np.uint8)


def _grey(x):
  return np.round(x[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


def _three(x):
  return np.repeat(x[..., None], 3, axis=-1)


def test_none_is_the_identity(image):
  assert preprocess.apply_one(image, P) is image


def test_erode_is_an_opening_per_channel(image):
  want = np.stack([morphology.opening(image[..., c], morphology.footprint_rectangle((5, 5))) for c in range(3)], -1)
  np.testing.assert_array_equal(preprocess.apply_one(image, preprocess.Params("erode")), want)


def test_tophat_otsu_and_tophat_mean(image):
  top = np.stack(
    [morphology.white_tophat(image[..., c], morphology.footprint_rectangle((10, 10))) for c in range(3)], -1
  )
  g = _grey(top)
  otsu = _three((g > filters.threshold_otsu(g)).astype(np.uint8) * 255)
  np.testing.assert_array_equal(preprocess.apply_one(image, preprocess.Params("tophat_otsu")), otsu)
  local = g.astype(float) > filters.threshold_local(g.astype(float), 7, method="mean", offset=5.0)
  np.testing.assert_array_equal(preprocess.apply_one(image, preprocess.Params("tophat_mean")), _three(local * 255))


def test_sobel_after_threshold(image):
  g = _grey(image)
  mask = (g > filters.threshold_otsu(g)).astype(np.uint8) * 255
  edges = np.abs(filters.sobel_v(mask.astype(float)))
  want = _three(np.round(edges * 255 / edges.max()).astype(np.uint8))
  np.testing.assert_array_equal(preprocess.apply_one(image, preprocess.Params("sobel_otsu")), want)
  out = preprocess.apply_one(image, preprocess.Params("sobel_mean"))
  assert out.shape == image.shape and out.dtype == np.uint8 and out.max() == 255


def test_clahe_and_lbp(image):
  g = _grey(image)
  clahe = exposure.equalize_adapthist(g, kernel_size=(8, 8), clip_limit=2 / 256)
  np.testing.assert_array_equal(preprocess.apply_one(image, preprocess.Params("clahe")), _three(np.round(clahe * 255)))
  params = preprocess.Params("lbp", lbp_points=8, lbp_radius=2.0)
  codes = feature.local_binary_pattern(g, 8, 2.0, method="uniform")
  np.testing.assert_array_equal(preprocess.apply_one(image, params), _three(codes.astype(np.uint8)))


def test_greyscale_images_keep_one_channel(image):
  grey = image[..., :1]
  for method in preprocess.METHODS:
    out = preprocess.apply_one(grey, preprocess.Params(method, lbp_points=8, lbp_radius=2.0))
    assert out.shape == grey.shape and out.dtype == np.uint8, method


def test_the_cache_is_keyed_by_images_and_parameters(image, tmp_path):
  images = np.stack([image, image[::-1]])
  first = preprocess.apply(images, preprocess.Params("erode"), str(tmp_path))
  assert len(os.listdir(tmp_path)) == 1
  np.testing.assert_array_equal(preprocess.apply(images, preprocess.Params("erode"), str(tmp_path)), first)
  preprocess.apply(images, preprocess.Params("erode", opening_size=3), str(tmp_path))
  preprocess.apply(images[:1], preprocess.Params("erode"), str(tmp_path))
  assert len(os.listdir(tmp_path)) == 3


@pytest.mark.parametrize(
  "method,field,value,message",
  [
    ("none", "preprocess", "gaussian", "data.preprocess='gaussian'; use one of"),
    ("none", "preprocess_threshold_block", 6, "an odd integer >= 3"),
    ("lbp", "preprocess_lbp_radius", 40.0, "below half of data.image_size"),
    ("tophat_otsu", "preprocess_tophat_size", 100, "larger than data.image_size"),
    ("none", "preprocess_clahe_clip_limit", 0.0, "data.preprocess_clahe_clip_limit=0.0"),
  ],
)
def test_bad_preprocess_values_are_refused(method, field, value, message):
  c = config_lib.base_config()
  c.data.preprocess = method
  c.data[field] = value
  with pytest.raises(ValueError, match=message):
    validation.check_config(c)


def test_size_parameters_only_count_for_the_method_that_uses_them():
  c = config_lib.base_config()
  c.data.image_size = 8  # Smaller than the default top-hat (10) and LBP radius (10): fine without those methods.
  validation.check_config(c)
  c.data.preprocess = "erode"
  c.data.preprocess_opening_size = 9
  with pytest.raises(ValueError, match=r"preprocess_opening_size=9 is larger than data.image_size=8 \(erode\)"):
    validation.check_config(c)


def test_arms_may_set_the_preprocessing_but_not_the_data():
  c = config_lib.base_config()
  c.arms = {"plain": {}, "clahe": {"data": {"preprocess": "clahe", "preprocess_clahe_tiles": 4}}}
  assert arms_lib.arm_configs(c)["clahe"].data.preprocess == "clahe"
  c.arms = {"other": {"data": {"root": "/elsewhere"}}}
  with pytest.raises(
    ValueError, match=r"only data.image_size, data.resize, data.normalization and data.preprocess\* may differ"
  ):
    arms_lib.arm_configs(c)


def test_a_study_compares_preprocessing_variants_on_matched_lanes(tmp_path, monkeypatch):
  c = config_lib.shrink_for_smoke(config_lib.base_config())
  c.data.synthetic.images_per_class = 12
  c.protocol.num_folds = 2
  c.engine.compilation_cache = ""
  c.arms = {"none": {}, "erode": {"data": {"preprocess": "erode", "preprocess_opening_size": 3}}}
  workdir = tmp_path / "w"
  s = study.run_study(c, str(workdir))
  expected = preprocess.apply(s.dataset.images, preprocess.Params("erode", opening_size=3))
  np.testing.assert_array_equal(np.asarray(s.arms["erode"].data.images), expected)
  np.testing.assert_array_equal(np.asarray(s.arms["none"].data.images), s.dataset.images)
  means = json.load(open(workdir / "study.json"))["arms"]
  assert means["none"]["mean"] != means["erode"]["mean"]  # Normalised after pre-processing.
  assert any(name.startswith("jaxcell-preprocess-erode-") for name in os.listdir(workdir / "cache"))
  lanes = {arm: [(l.seed, l.repeat, l.fold) for l in s.lanes if l.arm == arm] for arm in s.arms}
  assert lanes["none"] == lanes["erode"]  # Matched, so the comparison is paired.
  assert json.load(open(workdir / "analysis.json"))["comparisons"]["baseline"] == "none"

  # Prediction applies the arm's own pre-processing to new images.
  Image.fromarray(s.dataset.images[0]).save(tmp_path / "new.png")
  seen = []
  real_apply = preprocess.apply
  monkeypatch.setattr(preprocess, "apply", lambda images, p, *a: seen.append(p) or real_apply(images, p, *a))
  predict_lib.predict_new_images(str(workdir), [str(tmp_path / "new.png")], arm="erode")
  assert [(p.method, p.opening_size) for p in seen] == [("erode", 3)]
