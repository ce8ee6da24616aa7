"""`python -m jaxcell.bench` as a command: flags, cases, the JSON it writes after every case, and a real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jaxcell.bench import __main__ as bench_main
from jaxcell.bench import study_bench

HOST = {"model": "AMD EPYC", "cores": 2, "vector_isa": "avx512"}
PEAK = {"gflops": 100.0, "size": 512, "dtype": "float32", "backend": "cpu", "device_kind": "cpu", "host_cpu": HOST}


def _bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxcell.bench", *args], capture_output=True, text=True, timeout=timeout)


def test_cases_cover_every_size_and_mode():
  cases = bench_main.make_cases([32, 64], ["frozen", "full", "cached"], lanes=3, batch_size=4, width=0.5)
  assert [(c.image_size, c.frozen_trunk, c.trunk_bn) for c in cases] == [
    (32, True, "batch"),
    (32, False, "batch"),
    (32, True, "running"),
    (64, True, "batch"),
    (64, False, "batch"),
    (64, True, "running"),
  ]
  assert {(c.lanes, c.batch_size, c.width) for c in cases} == {(3, 4, 0.5)}


def _fake_result(case, gflops):
  row = {
    "lane_steps_per_s": 1.0,
    "images_per_s": 8.0,
    "gflops": gflops,
    "fraction_of_matmul_peak": 0.5,
    "compile_seconds": 1.0,
  }
  return {"case": case.name, "jaxcell": {"strategy": "vmap", **row}, "jaxcell_loop": dict(row), "torch": None}


def test_results_are_written_after_every_case_and_survive_a_failure(tmp_path, monkeypatch):
  cases = bench_main.make_cases([32], ["full", "cached", "frozen"])
  calls = []

  def run_case(case, peak_gflops, **options):
    calls.append(case.name)
    if len(calls) == 3:
      raise RuntimeError("machine lost")
    return _fake_result(case, None if case.trunk_bn == "running" else 400.0)

  monkeypatch.setattr(study_bench, "run_case", run_case)
  monkeypatch.setattr(study_bench, "nominal_peak_tflops", lambda: 1.0)  # 1 TFLOP/s: MFU = 400 / 1000.
  out = tmp_path / "bench.json"
  with pytest.raises(RuntimeError, match="machine lost"):
    bench_main.run_cases(cases, PEAK, str(out), with_torch=False)
  report = json.loads(out.read_text())
  assert [r["case"] for r in report["results"]] == [c.name for c in cases[:2]]
  full, cached = (r["jaxcell"] for r in report["results"])
  assert full["mfu_vs_nominal_bf16"] == pytest.approx(0.4)
  assert "mfu_vs_nominal_bf16" not in cached  # Cached features: no model FLOPs, so no MFU is made up.
  assert report["matmul_peak"] == PEAK and report["nominal_bf16_tflops"] == 1.0


@pytest.mark.parametrize(
  "flag, message",
  [("--modes=full,fast", "--modes takes"), ("--sizes=16", "--sizes takes"), ("--strategy=fastest", "mapN")],
)
def test_bad_flags_are_refused_with_the_reason(flag, message, tmp_path):
  done = _bench(flag, f"--out={tmp_path / 'b.json'}", timeout=120)
  assert done.returncode != 0 and message in done.stdout + done.stderr
  assert not (tmp_path / "b.json").exists()


def test_tiny_benchmark_runs_end_to_end(tmp_path):
  """Two cases of a width-1/8 ResNet-18 at 32 px: every row is measured, the JSON holds both, torch included
  when installed (on the CPU here, in float32)."""
  out = tmp_path / "bench.json"
  done = _bench(
    "--sizes=32",
    "--modes=full,cached",
    "--lanes=2",
    "--batch_size=4",
    "--steps=1",
    "--repeats=1",
    "--width=0.125",
    "--strategy=vmap",
    f"--out={out}",
  )
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(out.read_text())
  results = report["results"]
  assert report["matmul_peak"]["host_cpu"]["cores"] >= 1 and "host CPU:" in done.stdout
  assert [r["case"] for r in results] == ["32px full fine-tune", "32px frozen trunk, fixed BN (cached features)"]
  for r in results:
    assert r["jaxcell"]["lane_steps_per_s"] > 0 and r["width"] == 0.125
  full = results[0]
  assert full["jaxcell"]["strategy"] == "vmap" and full["jaxcell"]["gflops"] > 0
  try:
    import torch
  except ImportError:
    assert full["torch"] is None
  else:
    assert full["torch"]["device"] == "cpu" and full["torch"]["dtype"] == "float32"
    assert full["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert full["jaxcell"]["speedup_vs_torch"] > 0
  assert "| 32px full fine-tune | vmap |" in done.stdout and f"Written to {out}" in done.stdout


def test_the_pretrain_mode_times_jaxcell_beside_pytorch(tmp_path):
  out = tmp_path / "bench.json"
  done = _bench(
    "--modes", "pretrain", "--sizes", "32", "--width", "0.125", "--steps", "2", "--repeats", "1",
    "--pretrain_batch", "8", "--out", str(out),
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-2000:]
  (result,) = json.loads(out.read_text())["pretrain"]
  assert result["jaxcell"]["images_per_s"] > 0 and result["torch"]["images_per_s"] > 0
  assert result["jaxcell"]["speedup_vs_torch"] == pytest.approx(
    result["jaxcell"]["images_per_s"] / result["torch"]["images_per_s"]
  )
  assert "| pretrain channel_identity 32px batch 8 | float32 |" in done.stdout
