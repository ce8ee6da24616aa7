"""`python -m jaxcell.bench --modes study`: whole studies, cold and warm, beside the PyTorch whole-study reference."""

from __future__ import annotations

import os

import pytest

from jaxcell.bench import whole_study


def test_stages_count_compile_apart_from_training_and_the_rest_as_other():
  record = {
    "main": {"strategy": "vmap"},
    "_stage_seconds": {"read images": 2.0, "autotune": 10.0, "compile": 5.0, "train": 25.0, "evaluate": 3.0,
                       "reports": 1.0, "total": 46.0},
  }  # fmt: skip
  stages = whole_study.jaxcell_stages(record, wall_seconds=50.0)
  assert stages == {"decode": 2.0, "autotune": 10.0, "compile": 5.0, "train": 20.0, "evaluate": 3.0, "report": 1.0,
                    "other": 9.0}  # fmt: skip
  assert list(stages) == list(whole_study.STAGES)


def test_the_images_are_written_once_as_png_files(tmp_path):
  root = whole_study.write_images(str(tmp_path / "images"), images_per_class=2, image_size=32)
  classes = sorted(os.listdir(root))
  assert len(classes) == 6 and all(len(os.listdir(os.path.join(root, c))) == 2 for c in classes)
  stamp = os.path.getmtime(os.path.join(root, classes[0]))
  assert whole_study.write_images(root, 2, 32) == root and os.path.getmtime(os.path.join(root, classes[0])) == stamp


def test_a_tiny_whole_study_runs_cold_warm_and_in_pytorch(tmp_path):
  pytest.importorskip("torch", reason="the PyTorch whole-study reference needs the 'torch' extra")
  study = whole_study.Study("tiny", "model=ResNet_all", whole_study.TorchStudy("resnet18", True, False, 32, 4))
  result = whole_study.run_study(study, str(tmp_path), epochs=1, repeats=1, images_per_class=10, warm_runs=1,
                                 with_torch=True)  # fmt: skip
  cold, warm = result["jaxcell"]
  torch_run = result["torch"]
  for run in (cold, warm, torch_run):
    assert "error" not in run, run
    assert run["wall_seconds"] > 0 and run["peak_memory_gb"] > 0.1 and run["workdir_mb"] > 0
    assert run["stage_seconds"]["train"] > 0 and run["stage_seconds"]["decode"] > 0
  assert cold["chosen_by"] == "autotune" and cold["stage_seconds"]["autotune"] > 0
  assert warm["chosen_by"] == "autotune cache" and warm["stage_seconds"]["autotune"] == 0.0, "decided once"
  assert warm["strategy"] == cold["strategy"]
  assert 0.0 <= cold["holdout_balanced_accuracy"] <= 1.0 and 0.0 <= torch_run["holdout_balanced_accuracy"] <= 1.0
  assert set(result["wall_vs_torch"]) == {"cold", "warm1"} and result["wall_vs_torch"]["cold"] > 0
  assert os.path.isfile(tmp_path / "torch-tiny" / "results.csv") and os.path.isfile(
    tmp_path / "torch-tiny" / "boxplot.png"
  )
  rows = whole_study.table([result]).splitlines()
  assert len(rows) == 2 + 3 and rows[2].startswith("| tiny | cold |") and rows[4].startswith("| tiny | torch |")
