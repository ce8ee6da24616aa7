"""CellNet pretraining (python -m jaxcell.pretrain): the objectives' losses, a run per objective, resume after a
crash to the same weights, 8 devices agreeing with 1, and transfer of the weights into a study."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cellnet
from jaxcell import config as config_lib
from jaxcell import models
from jaxcell import study, validation
from jaxcell.convert import pretrained, weights_file
from jaxcell.pretraining import backbone, objectives, probe, run
from jaxcell.workdir import records
from jaxcell.workdir import results as results_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_nt_xent_matches_its_definition():
  z = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
  loss, accuracy = objectives.nt_xent_loss(jnp.asarray(z), 0.5)
  u = z / np.linalg.norm(z, axis=1, keepdims=True)
  sim = u @ u.T / 0.5
  expected = []
  for i in range(6):
    j = (i + 3) % 6
    others = [k for k in range(6) if k != i]
    expected.append(-sim[i, j] + np.log(np.sum(np.exp(sim[i, others]))))
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
  aligned, accuracy = objectives.nt_xent_loss(jnp.asarray(np.concatenate([np.eye(3), np.eye(3)])), 0.1)
  assert float(accuracy) == 1.0 and float(aligned) < 1e-3  # Identical partners, orthogonal others: solved.


def test_channel_identity_takes_one_channel_and_names_it():
  images = jnp.asarray(np.arange(4 * 2 * 2 * 5).reshape(4, 2, 2, 5))
  picked, labels = objectives.channel_identity_batch(jax.random.key(0), images)
  assert picked.shape == (4, 2, 2, 1)
  for i in range(4):
    np.testing.assert_array_equal(picked[i, ..., 0], images[i, ..., int(labels[i])])


def test_the_held_out_split_is_stratified_and_disjoint():
  labels = np.repeat(np.arange(3), 10)
  train, held = probe.holdout_split(labels, 0.2, seed=0)
  assert np.bincount(labels[held]).tolist() == [2, 2, 2] and not set(train) & set(held)
  assert len(train) + len(held) == 30


def _smoke(objective="channel_identity"):
  return cellnet.get_config(f"smoke,objective={objective}")


@pytest.mark.parametrize("objective", config_lib.PRETRAIN_OBJECTIVES)
def test_each_objective_pretrains_probes_and_exports_weights(tmp_path, objective):
  record = run.run_pretraining(_smoke(objective), str(tmp_path))
  assert [p["step"] for p in record["probe"]] == [0, 4, 6] and record["probe"][0]["chance"] > 0
  assert all(np.isfinite(entry["loss"]) for entry in record["loss"])
  assert records.read_pretrain(str(tmp_path))["objective"] == objective
  assert os.listdir(tmp_path / "tensorboard")
  loaded = pretrained.load_pretrained(f"cellnet:{tmp_path}", "resnet18")
  channels = 1 if objective == "channel_identity" else 5
  assert loaded.flat[("params", "conv1", "kernel")].shape[2] == channels
  assert loaded.metadata["objective"] == objective and len(loaded.metadata["normalization"]["mean"]) == channels
  for study_channels in (1, 3, 4):  # The trunk transfers into a model of any input channel count; the head is new.
    c = _smoke(objective)
    model = models.build_model(c.model, 3)
    fresh = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, study_channels)), train=False)
    overlaid = loaded.overlay(fresh)
    kernel = overlaid["params"]["conv1"]["kernel"]
    assert kernel.shape[2] == study_channels and overlaid["params"]["fc"]["kernel"].shape[-1] == 3
    source = loaded.flat[("params", "conv1", "kernel")]
    np.testing.assert_allclose(np.asarray(kernel).sum(axis=2), source.sum(axis=2), rtol=1e-5, atol=1e-6)


def test_a_pretraining_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
  steps = ["--config.pretrain.num_steps=60", "--config.pretrain.probe_every_steps=20"]
  command = [sys.executable, "-m", "jaxcell.pretrain", "--config", "configs/cellnet.py:smoke", *steps]
  killed = tmp_path / "killed"
  with open(tmp_path / "first.log", "w") as log:
    proc = subprocess.Popen([*command, "--workdir", str(killed)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    checkpoints = killed / "checkpoints" / "pretrain"
    deadline = time.time() + 240
    while not (checkpoints.is_dir() and any(name.isdigit() and int(name) >= 4 for name in os.listdir(checkpoints))):
      assert time.time() < deadline and proc.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
      time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  assert not (killed / "cellnet.npz").exists()  # Killed before the end.
  done = subprocess.run([*command, "--workdir", str(killed)], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "Resuming" in (killed / "log.txt").read_text()

  c = _smoke()
  c.pretrain.num_steps, c.pretrain.probe_every_steps = 60, 20
  record = run.run_pretraining(c, str(tmp_path / "straight"))  # The same run, never interrupted.
  resumed = records.read_pretrain(str(killed))
  assert [p["step"] for p in resumed["probe"]] == [p["step"] for p in record["probe"]] == [0, 20, 40, 60]
  a, _ = weights_file.load_weights(str(tmp_path / "straight" / "cellnet.npz"))
  b, _ = weights_file.load_weights(str(killed / "cellnet.npz"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_bf16_compute_keeps_float32_parameters():
  c = _smoke()
  assert backbone.compute_dtype(c) == "float32"  # 'auto' on CPU: model.dtype.
  c.pretrain.compute_dtype = "bfloat16"
  model = backbone.build_model(c, 8)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1)), train=False)
  assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
  assert model.apply(variables, jnp.zeros((2, 32, 32, 1)), train=False).shape == (2, 5)


def test_bad_pretraining_configs_are_refused_before_compute(tmp_path):
  c = _smoke()
  c.data.channels = 1
  with pytest.raises(ValueError, match="channel_identity' needs multi-channel images"):
    validation.check_pretrain_config(c)
  c = _smoke()
  c.pretrain.objective = "byol"
  with pytest.raises(ValueError, match="pretrain.objective='byol'"):
    validation.check_pretrain_config(c)
  c = _smoke()
  c.pretrain.learning_rte = 0.1
  with pytest.raises(ValueError, match="unknown field pretrain.learning_rte"):
    validation.check_pretrain_config(c)


def test_every_pretraining_field_has_a_rule():
  rules = {**validation.RULES, **validation.PRETRAIN_RULES}
  assert set(validation.leaves(config_lib.pretrain_config())) <= set(rules)


_DEVICES_SCRIPT = textwrap.dedent(
  """
  import json, jax, numpy as np
  from configs import cellnet
  from jaxcell.data import loading
  from jaxcell.pretraining import backbone, steps
  from jaxcell.training import augment, mesh as mesh_lib, trainer

  out = {}
  for objective in ("channel_identity", "self_supervised"):
    c = cellnet.get_config("smoke,objective=" + objective)
    data = loading.load_dataset(c.data)
    for n in (1, 8):
      mesh = steps.data_mesh(jax.devices()[:n])
      model = backbone.build_model(c, data.num_classes)
      setup = steps.Setup(model, steps.make_optimizer(c.pretrain), objective, 8,
                          augment.AugmentConfig.from_config(c.augment), 0.1, steps.batch_sharding(mesh))
      mean, std = backbone.input_normalisation(objective, data.images)
      device_data = mesh_lib.put_replicated(trainer.DeviceData(data.images, data.labels, mean, std), mesh)
      idx = mesh_lib.put_replicated(np.arange(len(data.labels), dtype=np.int32), mesh)
      key = mesh_lib.put_replicated(np.asarray(jax.random.key_data(jax.random.key(3))), mesh)
      channels = 1 if objective == "channel_identity" else 5
      state = mesh_lib.put_replicated(jax.device_get(steps.init_state(setup, jax.random.key(1), (32, 32, channels))), mesh)
      _, metrics = steps.compile_chunk(setup, 3, mesh)(state, key, device_data, idx)
      out[f"{objective}/{n}"] = np.asarray(metrics["loss"]).tolist()
  print(json.dumps(out))
  """
)


def test_eight_devices_give_the_losses_of_one():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  done = subprocess.run(
    [sys.executable, "-c", _DEVICES_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-3000:]
  losses = json.loads(done.stdout.strip().splitlines()[-1])
  for objective in ("channel_identity", "self_supervised"):
    one, eight = losses[f"{objective}/1"], losses[f"{objective}/8"]
    assert len(one) == 3 and np.all(np.isfinite(one))
    np.testing.assert_allclose(eight, one, rtol=2e-4, atol=2e-5)


def test_cellnet_transfer_compares_cellnet_imagenet_and_scratch_on_matched_lanes(tmp_path):
  from configs import cellnet_transfer

  weights = str(tmp_path / "cellnet")
  run.run_pretraining(_smoke(), weights)
  c = cellnet_transfer.get_config(f"cellnet={weights},smoke")
  s = study.run_study(c, str(tmp_path / "study"))
  arm = s.arms["cellnet"]
  assert arm.pretrained.metadata["objective"] == "channel_identity"
  np.testing.assert_allclose(arm.data.mean, np.repeat(arm.pretrained.metadata["normalization"]["mean"], 3))
  with open(tmp_path / "study" / "comparisons.md") as f:
    comparisons = f.read()
  assert "cellnet" in comparisons and "scratch" in comparisons and "imagenet_probe" in comparisons
  rows = results_lib.read_rows(tmp_path / "study" / "results.csv")
  lanes = {arm: sorted((r["fold"], r["n_per_class"] or 0) for r in rows if r["arm"] == arm) for arm in s.arms}
  assert lanes["cellnet"] == lanes["scratch"] == lanes["imagenet_probe"]  # Matched lanes: paired comparisons.
  with pytest.raises(ValueError, match="needs cellnet="):
    cellnet_transfer.get_config("smoke")
  c.arms.cellnet.transfer.weights = f"cellnet:{tmp_path / 'nowhere'}"
  with pytest.raises(FileNotFoundError, match="run python -m jaxcell.pretrain"):
    study.run_study(c, str(tmp_path / "study2"))
