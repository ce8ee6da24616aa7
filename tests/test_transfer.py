"""Transfer set-ups end to end: arms, presets, converted weights, the frozen-feature path, purification, prediction."""

import csv
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcell import arms as arms_lib
from jaxcell import config as config_lib
from jaxcell import models
from jaxcell import predict as predict_lib
from jaxcell import study
from jaxcell.convert import weights_file
from jaxcell.convert import pretrained
from jaxcell.training import engine_setup
from jaxcell.training import lanes as lanes_lib

WIDTH = 0.125


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _tiny_weights(path, channels=3, architecture="resnet18"):
  """A 'converted' file for a tiny ResNet-18: random weights standing in for ImageNet's."""
  model = models.build_model({"name": "resnet18", "width": WIDTH, "head": "linear"}, 10)
  init = engine_setup.make_init(model, (32, 32, channels))
  variables = jax.tree.map(np.asarray, init(jax.random.key(123, impl="rbg")))
  variables["batch_stats"]["bn1"]["mean"] = np.full_like(variables["batch_stats"]["bn1"]["mean"], 0.25)
  meta = {
    "architecture": architecture,
    "source": "test",
    "num_classes": 10,
    "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
  }
  weights_file.save_weights(path, variables, meta)
  return variables


def _config(**arms):
  c = config_lib.base_config()
  config_lib.shrink_for_smoke(c)
  c.data.synthetic.images_per_class = 12
  c.model.width = WIDTH
  c.train.num_steps = 3
  c.train.batch_size = 4
  c.augment.rotation_degrees, c.augment.hflip, c.augment.vflip = 0.0, False, False
  c.arms = arms
  return c


def test_presets_fill_the_bionic_set_ups():
  c = _config(
    all={"transfer": {"preset": "resnet_all"}},
    lower={"transfer": {"preset": "resnet_lower"}},
    probe={"transfer": {"preset": "linear_probe"}},
  )
  arms = arms_lib.arm_configs(c)
  assert (arms["all"].model.head, arms["all"].train.frozen) == ("bionic_mlp", "^(?!fc/)")
  assert arms["lower"].model.stages == 2
  assert (arms["probe"].model.head, arms["probe"].model.trunk_bn) == ("linear", "running")
  c.arms = {"vgg": {"transfer": {"preset": "vgg_lower"}}}
  with pytest.raises(ValueError, match="VGG set-up but model.name='resnet18'"):
    arms_lib.arm_configs(c)
  c.arms = {"bad": {"protocol": {"num_folds": 3}}}
  with pytest.raises(ValueError, match="arms may override"):
    arms_lib.arm_configs(c)
  c.arms = {"bad": {"data": {"channels": 1}}}  # Arms may change the input size, never the images' channels.
  with pytest.raises(ValueError, match="shares the study's data"):
    arms_lib.arm_configs(c)
  c.arms = {"x_lsr": {}}
  with pytest.raises(ValueError, match="_lsr"):
    arms_lib.arm_configs(c)


def test_overlay_takes_the_trunk_and_keeps_a_new_head(tmp_path):
  path = str(tmp_path / "w.npz")
  saved = _tiny_weights(path)
  loaded = pretrained.load_pretrained(path, "resnet18")
  model = models.build_model({"name": "resnet18", "width": WIDTH, "head": "bionic_mlp"}, 4)
  init = engine_setup.make_init(model, (32, 32, 3), loaded)
  variables = init(jax.random.key(0, impl="rbg"))
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], saved["params"]["conv1"]["kernel"])
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["mean"], 0.25)
  assert variables["params"]["fc"]["3"]["kernel"].shape[-1] == 4  # A new 4-class BioNIC head.
  assert loaded.unused(variables) == ["params/fc/bias", "params/fc/kernel"]  # The file's 10-class head.
  # A one-channel model sums the stem over the input channels.
  grey = engine_setup.make_init(model, (32, 32, 1), loaded)(jax.random.key(0, impl="rbg"))
  np.testing.assert_allclose(
    grey["params"]["conv1"]["kernel"][:, :, 0], saved["params"]["conv1"]["kernel"].sum(2), rtol=1e-6
  )
  with pytest.raises(weights_file.ConversionError, match="holds 'resnet18' weights but model.name='resnet34'"):
    pretrained.load_pretrained(path, "resnet34")
  wide = models.build_model({"name": "resnet18", "width": 0.25}, 4)
  with pytest.raises(weights_file.ConversionError, match=r"bn1/mean: model \(16,\) vs file \(8,\)"):
    engine_setup.make_init(wide, (32, 32, 3), loaded)(jax.random.key(0, impl="rbg"))


@pytest.fixture(scope="module")
def transfer_study(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("transfer")
  weights = str(tmp / "w.npz")
  saved = _tiny_weights(weights)
  c = _config(
    probe={"transfer": {"weights": weights, "preset": "linear_probe"}, "data": {"normalization": "weights"}},
    scratch={},
  )
  c.purify.retrain = True
  workdir = str(tmp / "run")
  s = study.run_study(c, workdir)
  return s, workdir, saved, c


def test_arms_are_trained_on_matched_lanes(transfer_study):
  s, workdir, _, _ = transfer_study
  rows = _read_csv(os.path.join(workdir, "results.csv"))
  arms = {r["arm"] for r in rows}
  assert arms == {"probe", "probe_lsr", "scratch", "probe_purified", "probe_purified_lsr"}
  ids = {a: sorted((r["seed"], r["repeat"], r["fold"], r["split"]) for r in rows if r["arm"] == a) for a in arms}
  assert all(ids[a] == ids["scratch"] for a in arms)
  engine = json.load(open(os.path.join(workdir, "engine.json")))
  assert engine["probe"]["path"] == "frozen_features" and engine["probe"]["views"] == 1
  assert engine["scratch"]["path"] == "full_model"
  assert "layers outside the head" in engine["scratch"]["why_not_cached_features"]
  chunks = engine["scratch"]["chunks"]  # How many chunks ran without / with the per-step budget check.
  assert set(chunks) == {"unmasked", "masked"} and sum(chunks.values()) >= 1
  summary = open(os.path.join(workdir, "summary.md")).read()
  assert "heads trained on cached trunk features" in summary and "Arm 'probe'" in summary
  for name in ("report.html", "ensembles.csv", "triage.csv", "purification.csv", "comparisons.md", "analysis.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  comparisons = open(os.path.join(workdir, "comparisons.md")).read()
  assert "scratch" in comparisons and "probe_lsr" in comparisons
  report = open(os.path.join(workdir, "report.html")).read()
  assert "data:image/png;base64" in report and "probe_purified" in report
  stats = json.load(open(os.path.join(workdir, "study.json")))["arms"]
  np.testing.assert_allclose(stats["probe"]["mean"], [0.5, 0.4, 0.3], rtol=1e-6)  # normalization='weights'


def test_feature_path_equals_the_full_model_path(transfer_study, tmp_path):
  """The same arm with the cache switched off trains the full model (trunk frozen): same heads, same scores."""
  _, workdir, _, c = transfer_study
  c = config_lib.ConfigDict(c.to_dict())
  c.arms = {"probe": dict(c.arms.probe.to_dict(), transfer=dict(c.arms.probe.transfer.to_dict(), feature_cache="off"))}
  c.purify.retrain = False
  off = str(tmp_path / "off")
  study.run_study(c, off)
  assert json.load(open(os.path.join(off, "engine.json")))["probe"]["path"] == "full_model"
  fast = [r for r in _read_csv(os.path.join(workdir, "predictions_holdout.csv")) if r["arm"] == "probe"]
  slow = _read_csv(os.path.join(off, "predictions_holdout.csv"))
  assert len(fast) == len(slow) > 0
  for a, b in zip(fast, slow):
    assert (a["lane"], a["path"]) == (b["lane"], b["path"])
    probs = [k for k in a if k.startswith("p_")]
    np.testing.assert_allclose([float(a[k]) for k in probs], [float(b[k]) for k in probs], atol=2e-5)


def test_purified_arm_trains_without_flagged_images(transfer_study):
  s, workdir, _, _ = transfer_study
  removed = _read_csv(os.path.join(workdir, "purification_removed.csv"))
  assert "Purification:" in open(os.path.join(workdir, "log.txt")).read()
  assert s.arms["probe_purified"].purify_from == "probe"
  flagged = {r["path"] for r in removed}
  paths = s.dataset.paths
  from jaxcell import study as study_lib

  lane_sets = {lane.index: lanes_lib.lane_indices(lane, s.splits, s.dataset.labels) for lane in s.lanes}
  plan = study_lib._plan(s, s.arms["probe_purified"], set(), lane_sets)
  for _, idx, _ in plan:
    assert not flagged & {paths[i] for i in idx}


def test_predict_new_images(transfer_study, tmp_path):
  s, workdir, _, _ = transfer_study
  folder = tmp_path / "new"
  folder.mkdir()
  for i in range(3):
    Image.fromarray(s.dataset.images[i]).save(folder / f"cell{i}.png")
  (folder / "broken.png").write_bytes(b"not an image")
  result = predict_lib.predict_new_images(workdir, [str(folder)], arm="scratch", threshold=0.5)
  assert [os.path.basename(r["path"]) for r in result["rows"]] == ["cell0.png", "cell1.png", "cell2.png"]
  assert result["num_models"] == 2 and len(result["skipped"]) == 1
  for r in result["rows"]:
    assert r["bucket"] == ("high_confidence" if float(r["confidence"]) >= 0.5 else "low_confidence")
    assert abs(sum(float(v) for k, v in r.items() if k.startswith("p_")) - 1) < 1e-4
  # The probe arm (frozen trunk from the file + trained heads) predicts too.
  assert predict_lib.predict_new_images(workdir, [str(folder / "cell0.png")], arm="probe")["num_models"] == 2
  out = tmp_path / "out.csv"
  assert predict_lib.main(["--workdir", workdir, "--images", str(folder), "--out", str(out)]) == 0
  written = _read_csv(out)  # Every input file has a row: the unreadable one with its reason (issue 13).
  assert [r["status"] for r in written] == ["scored"] * 3 + ["skipped"]
  assert os.path.basename(written[3]["path"]) == "broken.png" and "cannot identify image file" in written[3]["warning"]
  assert predict_lib.main(["--workdir", str(tmp_path), "--images", str(folder)]) == 2  # not a study
  assert predict_lib.main(["--workdir", workdir, "--images", str(tmp_path / "missing")]) == 2
  assert predict_lib.main(["--workdir", workdir, "--images", str(folder), "--arm", "nope"]) == 2


def test_bionic_config_runs_vgg_lower_on_cached_features(tmp_path):
  """configs/bionic.py:model=Vgg_lower on an image folder: features[:14] frozen (VGG16 has no BatchNorm, so the
  trunk is fixed and the heads train on cached features), BioNIC's (4096, 256) head."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    "bionic", os.path.join(os.path.dirname(__file__), "..", "configs", "bionic.py")
  )
  bionic = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bionic)
  root = tmp_path / "images"
  rng = np.random.default_rng(0)
  for cls in ("alpha", "beta", "gamma"):
    (root / cls).mkdir(parents=True)
    for i in range(8):
      Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
  c = bionic.get_config(f"root={root},model=Vgg_lower,smoke")
  c.train.batch_size = 4
  workdir = str(tmp_path / "run")
  s = study.run_study(c, workdir)
  arm = s.arms["main"]
  assert (arm.config.model.name, arm.config.model.vgg_features, arm.config.train.frozen) == ("vgg16", 14, "^features_")
  assert set(arm.frozen) == {f"features_{i}" for i in (0, 2, 5, 7, 10, 12)}  # The six convs of features[:14].
  engine = json.load(open(os.path.join(workdir, "engine.json")))
  assert engine["main"]["path"] == "frozen_features"
  assert {r["arm"] for r in _read_csv(os.path.join(workdir, "results.csv"))} == {"main", "main_lsr"}
