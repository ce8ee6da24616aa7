"""Tests for the benchmark's PyTorch reference (jaxcell.bench.torch_reference) and peak probe (jaxcell.bench.peak).

Torch is an optional extra: its tests skip, with the reason, when it is not installed. Everything that
trains uses width 0.125 and 32-px images.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxcell.bench import flops
from jaxcell.bench.peak import host_cpu, measure_matmul_peak, peak_memory_bytes

TORCHVISION_RESNET18_PARAMS = 11_689_512  # torchvision.models.resnet18(num_classes=1000)
TORCHVISION_RESNET18_MACS = 1.814e9  # torchvision's documented 1.81 GFLOPS (multiply-accumulates), 224 px


@pytest.fixture
def ref():
  pytest.importorskip("torch", reason="the PyTorch reference needs the optional extra: pip install -e '.[torch]'")
  return importlib.import_module("jaxcell.bench.torch_reference")


def tiny_dataset(num_images: int = 24, size: int = 32, num_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_images, size, size, 3), dtype=np.uint8)
  labels = np.arange(num_images) % num_classes
  return images, labels


# ------------------------------------------------------------------------------------------- model


def test_resnet18_matches_torchvision_parameter_count_and_names(ref):
  model = ref.build_resnet18(1000)
  assert sum(p.numel() for p in model.parameters()) == TORCHVISION_RESNET18_PARAMS
  keys = set(model.state_dict())
  for key in (
    "conv1.weight",
    "bn1.running_var",
    "layer1.0.conv2.weight",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.running_mean",
    "layer4.1.bn2.bias",
    "fc.weight",
    "fc.bias",
  ):
    assert key in keys
  assert "layer1.0.downsample.0.weight" not in keys  # torchvision's layer1 has no projection shortcut.


def test_bionic_head_and_width_multiplier(ref):
  model = ref.build_resnet18(5, width=0.5, head="bionic_mlp", head_hidden=32, in_channels=1)
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert shapes["conv1.weight"] == (32, 1, 7, 7)
  assert shapes["layer4.0.conv1.weight"] == (256, 128, 3, 3)
  assert shapes["fc.0.weight"] == (32, 256)
  assert shapes["fc.2.running_mean"] == (32,)
  assert shapes["fc.3.weight"] == (5, 32)
  with pytest.raises(ValueError, match="head must be one of"):
    ref.build_resnet18(5, head="mlp")


def test_torchvision_init(ref):
  model = ref.build_resnet18(10, width=0.25)
  weight = model.layer3[0].conv1.weight
  fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]
  assert weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
  assert bool((model.bn1.weight == 1).all()) and bool((model.bn1.bias == 0).all())


# ------------------------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("head", ["linear", "bionic_mlp"])
def test_analytic_macs_equal_macs_counted_on_the_torch_model(ref, head):
  import torch

  counted: dict[str, int] = {}

  def count(name):
    def hook(module, inputs, output):
      if isinstance(module, torch.nn.Conv2d):
        per_output = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        counted[name] = output[0].numel() * per_output
      else:
        counted[name] = module.in_features * module.out_features

    return hook

  model = ref.build_resnet18(7, width=0.25, head=head, head_hidden=16).eval()
  for name, module in model.named_modules():
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
      module.register_forward_hook(count(name))
  with torch.no_grad():
    model(torch.zeros(2, 3, 48, 48))
  analytic = flops.resnet18_layer_macs(48, 0.25, num_classes=7, head=head, head_hidden=16)
  assert {name: macs for name, macs, _ in analytic} == counted


def test_flops_per_image_at_224():  # Analytic, no torch needed.
  forward = flops.flops_per_image_resnet18(224, 1.0, False, forward_only=True)
  assert forward == pytest.approx(2 * TORCHVISION_RESNET18_MACS, rel=0.01)
  full = flops.flops_per_image_resnet18(224, 1.0, False)
  frozen = flops.flops_per_image_resnet18(224, 1.0, True)
  # Full fine-tune is ~3x forward (less: the stem needs no input gradient); frozen is ~the forward alone.
  assert 2.9 * forward < full < 3 * forward
  assert forward < frozen < 1.01 * forward
  assert frozen < 0.4 * full


# ---------------------------------------------------------------------------------------- training


def test_augment_applies_one_symmetry_of_the_square_per_image(ref):
  import torch

  x = torch.arange(4 * 2 * 5 * 5, dtype=torch.float32).reshape(4, 2, 5, 5)
  out = ref._augment(x.clone(), torch.Generator().manual_seed(1))
  for image, augmented in zip(x, out):
    symmetries = [torch.rot90(flipped, k, dims=(1, 2)) for flipped in (image, image.flip(2)) for k in range(4)]
    assert any(torch.equal(augmented, s) for s in symmetries)


@pytest.mark.parametrize("frozen_trunk", [True, False])
def test_train_models_sequentially(ref, frozen_trunk):
  import torch

  images, labels = tiny_dataset()
  result = ref.train_models_sequentially(
    images,
    labels,
    num_models=2,
    steps=3,
    batch_size=4,
    width=0.125,
    frozen_trunk=frozen_trunk,
    threads=1,
    return_models=True,
  )
  assert result["lane_steps"] == 6 and result["timed_lane_steps"] == 5
  assert result["seconds"] > 0 and result["warmup_seconds"] > 0
  assert result["images_per_s"] == pytest.approx(4 * result["lane_steps_per_s"])
  assert result["threads"] == 1 and result["torch_version"] == torch.__version__
  assert len(result["models"]) == 2

  model, initial = result["models"][-1], result["initial_states"][-1]
  changed = {name: not torch.equal(param.detach(), initial[name]) for name, param in model.named_parameters()}
  assert changed["fc.weight"] and changed["fc.bias"]
  trunk = [changed[name] for name in changed if not name.startswith("fc.")]
  assert not any(trunk) if frozen_trunk else all(trunk)
  # Frozen or not, BN layers ran in train mode and tracked the target data's statistics.
  assert not torch.equal(model.bn1.running_mean, initial["bn1.running_mean"])


def test_fixed_bn_trunk_keeps_its_statistics(ref):
  import torch

  images, labels = tiny_dataset()
  result = ref.train_models_sequentially(
    images,
    labels,
    num_models=1,
    steps=3,
    batch_size=4,
    width=0.125,
    frozen_trunk=True,
    threads=1,
    return_models=True,
    trunk_bn="running",
    head="bionic_mlp",
  )
  model, initial = result["models"][0], result["initial_states"][0]
  assert torch.equal(model.bn1.running_mean, initial["bn1.running_mean"])  # The trunk's BN stays fixed ...
  assert not torch.equal(model.fc[2].running_mean, initial["fc.2.running_mean"])  # ... the head's BN trains.


def test_cached_feature_benchmark_case_runs():
  """The benchmark's cached-feature path on a tiny case (no torch): the whole job is timed and reported."""
  from jaxcell.bench import study_bench

  case = study_bench.Case(
    32, True, lanes=3, batch_size=4, width=0.125, steps=1, trunk_bn="running", cached_steps=3, cached_views=2
  )
  result = study_bench.run_case(case, matmul_peak_gflops=100.0, with_torch=False)
  j = result["jaxcell"]
  assert j["strategy"] == "cached features (2 views)" and j["gflops"] is None
  assert j["lane_steps_per_s"] > 0 and j["feature_seconds"] > 0 and j["head_seconds"] > 0
  assert result["jaxcell_loop"]["lane_steps_per_s"] > 0 and result["torch"] is None


def test_benchmark_reports_medians_of_interleaved_repeats():
  """Each side is timed `repeats` times in turn and reports the median (no torch here)."""
  import numpy as np

  from jaxcell.bench import study_bench
  from jaxcell.training import engine

  case = study_bench.Case(32, False, lanes=2, batch_size=4, width=0.125, steps=1)
  result = study_bench.run_case(case, 100.0, with_torch=False, strategy=engine.Strategy("vmap"), repeats=3)
  for key in ("jaxcell", "jaxcell_loop"):
    r = result[key]
    assert len(r["seconds"]) == 3 and all(len(pair) == 2 for pair in r["seconds"]) and r["compile_seconds"] >= 0
    short, long = np.median(r["seconds"], axis=0)
    assert r["measured_lane_steps_per_s"] == pytest.approx(case.lanes * case.steps / short)
    assert r["step_seconds"] > 0 and r["chunk_seconds"] >= 0
    # A study's chunk: the measured per-chunk cost once, the per-step cost chunk_steps times.
    study_chunk = r["chunk_seconds"] + r["chunk_steps"] * r["step_seconds"]
    assert r["lane_steps_per_s"] == pytest.approx(case.lanes * r["chunk_steps"] / study_chunk)
  assert result["jaxcell"]["strategy"] == "vmap" and result["torch"] is None
  with pytest.raises(ValueError, match="repeats"):
    study_bench.run_case(case, 100.0, with_torch=False, repeats=0)


def test_benchmark_pools_the_timings_when_jaxcell_runs_the_loop():
  """jaxcell's choice 'loop' is the loop row's program: one figure for both, from both sides' timings."""
  from jaxcell.bench import __main__ as bench_main
  from jaxcell.bench import study_bench
  from jaxcell.training import engine

  case = study_bench.Case(32, False, lanes=2, batch_size=4, width=0.125, steps=1)
  result = study_bench.run_case(case, 100.0, with_torch=False, strategy=engine.Strategy("loop"), repeats=2)
  j, loop = result["jaxcell"], result["jaxcell_loop"]
  assert len(j["seconds"]) == 4 and j["seconds"] == loop["seconds"], "2 repeats x 2 sides, pooled"
  assert j["lane_steps_per_s"] == loop["lane_steps_per_s"] and loop["same_program_as_jaxcell"]
  peak_info = {"gflops": 100.0, "dtype": "float32", "size": 512, "host_cpu": host_cpu()}
  row = bench_main._table([result], peak_info).splitlines()[-1]
  assert f"| {loop['lane_steps_per_s']:.2f} (same program) |" in row
  other = study_bench.run_case(case, 100.0, with_torch=False, strategy=engine.Strategy("vmap"), repeats=1)
  assert not other["jaxcell_loop"]["same_program_as_jaxcell"] and len(other["jaxcell"]["seconds"]) == 1


def test_rates_split_chunk_timings_into_per_step_and_per_chunk_seconds():
  from jaxcell.bench import study_bench

  case = study_bench.Case(32, False, lanes=10, steps=4)
  # 2 s per chunk + 0.5 s per step: chunks of 4 and 8 steps take 4 s and 6 s (medians of three).
  r = study_bench._rates(case, [(4.0, 6.0), (4.2, 5.9), (3.9, 6.3)])
  assert r["step_seconds"] == pytest.approx(0.5) and r["chunk_seconds"] == pytest.approx(2.0)
  assert r["measured_lane_steps_per_s"] == pytest.approx(10 * 4 / 4.0)
  assert r["lane_steps_per_s"] == pytest.approx(10 * 50 / (2.0 + 50 * 0.5)) and r["chunk_steps"] == 50
  # Noise that makes the longer chunk more than twice the shorter: no negative per-chunk cost.
  noisy = study_bench._rates(case, [(1.0, 3.0)])
  assert noisy["chunk_seconds"] == 0.0 and noisy["step_seconds"] == pytest.approx(3.0 / 8)


def test_bfloat16_benchmark_case_runs_on_cpu():
  """The --dtype bfloat16 path (for GPU/TPU MFU) compiles and trains here too; bf16 losses stay finite."""
  from jaxcell.bench import study_bench
  from jaxcell.training import engine

  case = study_bench.Case(32, False, lanes=2, batch_size=4, width=0.125, steps=1, dtype="bfloat16")
  result = study_bench.run_case(case, 100.0, with_torch=False, strategy=engine.Strategy("vmap"), repeats=1)
  assert result["dtype"] == "bfloat16" and result["jaxcell"]["lane_steps_per_s"] > 0
  assert study_bench.nominal_peak_tflops() is None, "no nominal bf16 peak for a CPU: MFU is not invented"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reference_forward_runs_in_the_benchmark_dtype(ref, dtype, monkeypatch):
  import torch

  seen = []
  cross_entropy = ref.F.cross_entropy
  monkeypatch.setattr(
    ref.F, "cross_entropy", lambda logits, *a, **k: seen.append(logits.dtype) or cross_entropy(logits, *a, **k)
  )
  images, labels = tiny_dataset()
  result = ref.train_models_sequentially(
    images,
    labels,
    num_models=1,
    steps=2,
    batch_size=4,
    width=0.125,
    frozen_trunk=False,
    dtype=dtype,
    threads=1,
    return_models=True,
  )
  assert seen == [torch.bfloat16 if dtype == "bfloat16" else torch.float32] * 2
  assert result["dtype"] == dtype and result["device"] == "cpu"  # No GPU here: the default device is the CPU.
  assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in result["models"][0].parameters())
  with pytest.raises(ValueError, match="dtype"):
    ref.train_models_sequentially(images, labels, num_models=1, steps=2, batch_size=4, frozen_trunk=True, dtype="fp16")


def test_models_are_seeded_and_distinct(ref):
  import torch

  images, labels = tiny_dataset()
  runs = [
    ref.train_models_sequentially(
      images, labels, num_models=2, steps=1, batch_size=4, width=0.125, frozen_trunk=True, return_models=True
    )
    for _ in range(2)
  ]
  first, second = (run["initial_states"] for run in runs)
  assert torch.equal(first[1]["conv1.weight"], second[1]["conv1.weight"])
  assert not torch.equal(first[0]["conv1.weight"], first[1]["conv1.weight"])


def test_bad_input_is_rejected(ref):
  images, labels = tiny_dataset()
  common = {"num_models": 1, "steps": 2, "batch_size": 4, "frozen_trunk": True}
  with pytest.raises(ValueError, match="square"):
    ref.train_models_sequentially(images[:, :, :16], labels, **common)
  with pytest.raises(ValueError, match="uint8"):
    ref.train_models_sequentially(images.astype(np.float32), labels, **common)
  with pytest.raises(ValueError, match="labels"):
    ref.train_models_sequentially(images, labels[:-1], **common)
  with pytest.raises(ValueError, match="warm-up"):
    ref.train_models_sequentially(images, labels, **{**common, "steps": 1})


def test_missing_torch_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # Makes `import torch` raise ImportError.
  monkeypatch.delitem(sys.modules, "jaxcell.bench.torch_reference", raising=False)
  with pytest.raises(ImportError, match=r"pip install -e '\.\[torch\]'"):
    importlib.import_module("jaxcell.bench.torch_reference")


def test_benchmark_imports_without_tensorflow_clu_or_orbax():
  # Accelerator images ship jax, flax, optax and torch but not TensorFlow, TensorBoard or orbax (a study needs them),
  # and nothing can be installed there: the benchmark must not import them.
  script = (
    "import sys\n"
    "for name in ('tensorflow', 'tensorboard', 'tensorflow_datasets', 'clu', 'orbax'):\n"
    "  sys.modules[name] = None  # Any import of it (or of a submodule) raises ImportError.\n"
    "import jaxcell.bench.__main__, jaxcell.bench.study_bench\n"
    "print('imported')\n"
  )
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]


# -------------------------------------------------------------------------------------------- peak


def test_matmul_peak_reports_a_positive_rate():
  peak = measure_matmul_peak(seconds=0.2)
  assert peak["gflops"] > 0
  assert peak["dtype"] == "float32" and peak["size"] > 0 and peak["backend"]
  assert peak["host_cpu"] == host_cpu()
  with pytest.raises(ValueError, match="size"):
    measure_matmul_peak(size=0)


def test_peak_memory_bytes():
  memory = peak_memory_bytes()
  assert memory["bytes"] > 0 and memory["source"] in ("device", "process_max_rss")


@pytest.mark.parametrize(
  "flags, isa",
  [("fpu sse2 avx2 avx512f avx512bw", "avx512"), ("fpu sse2 avx avx2 fma", "avx2"), ("fp asimd", "unknown")],
)
def test_host_cpu_reads_model_and_widest_vector_isa(tmp_path, flags, isa):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
  assert host_cpu(str(cpuinfo)) == {"model": "AMD EPYC 9B14", "cores": os.cpu_count(), "vector_isa": isa}
  assert host_cpu(str(tmp_path / "missing"))["vector_isa"] == "unknown"  # Not Linux: no ISA is guessed.
