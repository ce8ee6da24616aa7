"""engine.autotune_cache: a set-up autotuned once runs the same strategy on later runs, without timing again."""

import types

import numpy as np

from jaxcell import config as config_lib
from jaxcell.training import autotune, autotune_cache, engine, engine_setup


def fake_batch(lanes=4, padded=4, image=(32, 32, 3)):
  return engine.LaneBatch(  # Only what the decision's key reads is filled in.
    states=types.SimpleNamespace(step=np.zeros(padded, np.int32)),
    frozen=None,
    raw_keys=None,
    data=types.SimpleNamespace(images=np.zeros((10, *image), np.uint8)),
    lanes=None,
    num_lanes=lanes,
  )


MESH = types.SimpleNamespace(shape={"lanes": 1, "data": 1})


def test_the_key_follows_what_the_timing_depends_on():
  c = config_lib.base_config()
  key = autotune_cache.decision_key(c, (32, 32, 3), 4, 4, MESH.shape)
  assert key == autotune_cache.decision_key(config_lib.base_config(), (32, 32, 3), 4, 4, MESH.shape)
  assert key != autotune_cache.decision_key(c, (64, 64, 3), 4, 4, MESH.shape)
  assert key != autotune_cache.decision_key(c, (32, 32, 3), 5, 8, MESH.shape)
  wider = config_lib.base_config()
  wider.model.width = 0.5
  assert key != autotune_cache.decision_key(wider, (32, 32, 3), 4, 4, MESH.shape)
  longer = config_lib.base_config()
  longer.train.num_steps = 999  # The budget does not change which strategy is fastest per step.
  assert key == autotune_cache.decision_key(longer, (32, 32, 3), 4, 4, MESH.shape)


def test_a_decision_is_timed_once_then_read_back(tmp_path, monkeypatch):
  c = config_lib.base_config()
  c.engine.strategy = "auto"
  c.engine.autotune_cache = str(tmp_path / "cache")
  timed = []

  def fake_autotune(config, num_classes, batch, mesh, rebuild_states=None):
    timed.append(1)
    return engine.Strategy.parse("map2"), [autotune.Trial("map2", 1.0, 0.5, 0.1), autotune.Trial("vmap", error="x")]

  monkeypatch.setattr(engine_setup, "_autotune", fake_autotune)
  first = engine_setup.choose_strategy(c, 6, fake_batch(), MESH)
  again = engine_setup.choose_strategy(c, 6, fake_batch(), MESH)
  assert timed == [1]  # Timed once.
  assert first[0].name == again[0].name == "map2" and (first[2], again[2]) == ("autotune", "autotune cache")
  # The evidence, for engine.json (NaN timings of the trial that failed survive the round trip as NaN).
  assert [(t["strategy"], t["error"]) for t in again[1]] == [("map2", ""), ("vmap", "x")]
  assert again[1][0]["step_seconds"] == 0.5 and np.isnan(again[1][1]["step_seconds"])
  engine_setup.choose_strategy(c, 6, fake_batch(lanes=3), MESH)  # Another set-up: timed anew.
  assert timed == [1, 1]
  c.engine.autotune_cache = ""  # Off: every run times the candidates.
  engine_setup.choose_strategy(c, 6, fake_batch(), MESH)
  assert timed == [1, 1, 1]


def test_an_unreadable_entry_is_ignored(tmp_path):
  key = "k" * 24
  (tmp_path / f"autotune-{key}.json").write_text("{not json")
  assert autotune_cache.load(str(tmp_path), key) is None
  autotune_cache.save(str(tmp_path), key, "loop", [])
  assert autotune_cache.load(str(tmp_path), key) == {"strategy": "loop", "trials": []}
