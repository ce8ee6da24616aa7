"""python -m jaxcell.bench: the study benchmark, printed as a table and saved as JSON.

  python -m jaxcell.bench                                  # 64 and 128 px, frozen trunk and full fine-tune
  python -m jaxcell.bench --sizes 64 --modes full --steps 2 --out bench.json
  python -m jaxcell.bench --modes cached                   # frozen trunk with fixed BN: the cached-feature path
  python -m jaxcell.bench --dtype bfloat16                 # on GPU/TPU: bf16 with MFU
  python -m jaxcell.bench --modes pretrain --sizes 64      # CellNet pretraining step vs a PyTorch step
  python -m jaxcell.bench --modes study                    # whole studies, data to report, cold and warm caches
  python -m jaxcell.bench --modes study --studies ResNet_all --study_epochs 1

The PyTorch reference needs the optional extra (`pip install -e '.[torch]'`); without it the table
shows jaxcell's figures only and says so.
"""

import json
import logging

import jax
import jax.numpy as jnp
from absl import app, flags

from jaxcell.bench import peak, pretrain_bench, study_bench, whole_study
from jaxcell.training import engine

MODES = ("frozen", "full", "cached", "pretrain", "study")

flags.DEFINE_list("sizes", ["64", "128"], "Image sizes in pixels (>= 32).")
flags.DEFINE_list(
  "modes",
  ["frozen", "full"],
  "'frozen' (BioNIC ResNet_all: trunk BN on batch statistics), 'full' (fine-tune everything) and/or 'cached' "
  "(frozen trunk with fixed BN statistics: jaxcell trains every head on cached features); 'pretrain' (one "
  "model's data-parallel CellNet pretraining step, channel identity, vs a PyTorch step); 'study' (whole studies, "
  "data to report, cold and warm caches, vs a PyTorch whole study: --studies).",
)
flags.DEFINE_list(
  "model",
  ["resnet18"],
  "Per-step modes' models: resnet18 and/or efficientnet_lite0 (random init: the same work as its weights).",
)
flags.DEFINE_list(
  "studies", list(whole_study.STUDIES), f"The 'study' mode's studies: {', '.join(whole_study.STUDIES)}."
)
flags.DEFINE_integer("study_epochs", 4, "'study' mode: BioNIC epochs per model.", lower_bound=1)
flags.DEFINE_integer("study_repeats", 1, "'study' mode: cross-validation repeats (5 folds each).", lower_bound=1)
flags.DEFINE_integer("study_images_per_class", 120, "'study' mode: demo-cell images per class (6 classes).")
flags.DEFINE_integer("study_warm_runs", 2, "'study' mode: jaxcell runs on the caches of its cold run.", lower_bound=0)
flags.DEFINE_string("scratch", "bench_studies", "'study' mode: where images, workdirs and caches go.")
flags.DEFINE_integer("pretrain_batch", 64, "Global batch of the 'pretrain' mode.", lower_bound=2)
flags.DEFINE_integer("lanes", 20, "Models trained (BioNIC: 5 folds x 4 repeats).", lower_bound=1)
flags.DEFINE_integer("batch_size", 8, "Images per step per model (BioNIC: 8).", lower_bound=2)
flags.DEFINE_float("width", 1.0, "ResNet-18 width multiplier: 1.0 is the real network; less for a quick smoke run.")
flags.DEFINE_integer("steps", 4, "Timed steps per model after compilation.", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timings of each side, interleaved; medians are reported.", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
flags.DEFINE_string("strategy", "auto", "jaxcell's strategy: 'auto' (autotune, recorded) or a fixed one, e.g. 'vmap'.")
flags.DEFINE_string("out", "bench.json", "Where to write the JSON results (rewritten after every case).")
flags.register_validator(
  "sizes", lambda sizes: bool(sizes) and all(s.isdigit() and int(s) >= 32 for s in sizes), "--sizes takes sizes >= 32"
)
flags.register_validator(
  "modes", lambda modes: bool(modes) and set(modes) <= set(MODES), f"--modes takes one or more of {', '.join(MODES)}"
)
flags.register_validator("width", lambda width: width > 0, "--width must be > 0")
flags.register_validator(
  "studies", lambda names: bool(names) and set(names) <= set(whole_study.STUDIES),
  f"--studies takes one or more of {', '.join(whole_study.STUDIES)}",
)  # fmt: skip
flags.register_validator(
  "model", lambda names: bool(names) and set(names) <= set(study_bench.MODELS),
  f"--model takes one or more of {', '.join(study_bench.MODELS)}",
)  # fmt: skip
FLAGS = flags.FLAGS


def _table(results, peak_info) -> str:
  host = peak_info["host_cpu"]
  lines = [
    f"Device: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}); "
    f"matmul peak {peak_info['gflops']:.1f} GFLOP/s ({peak_info['dtype']}, n={peak_info['size']}); "
    f"host CPU: {host['model']}, {host['cores']} cores, {host['vector_isa']}",
    "",
    f"Rates of jaxcell and its loop are for a study's {study_bench.STUDY_CHUNK_STEPS}-step chunks: per-step and per-chunk"
    " seconds are measured (chunks of --steps and twice as many); the PyTorch loop has no chunks.",
    "",
    "| case | jaxcell strategy | jaxcell lane-steps/s | loop lane-steps/s | torch lane-steps/s | jaxcell / torch"
    " | loop / torch | jaxcell images/s | GFLOP/s (% of matmul peak) | jaxcell s per step + per chunk | compile s |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    j, loop, t = r["jaxcell"], r["jaxcell_loop"], r["torch"]
    torch_rate = f"{t['lane_steps_per_s']:.2f}" if t else "n/a"
    ratio = lambda x: f"{x['speedup_vs_torch']:.2f}x" if t else "n/a"
    split = f"{j['step_seconds']:.2f} + {j['chunk_seconds']:.2f}" if "step_seconds" in j else "n/a (whole job)"
    loop_rate = f"{loop['lane_steps_per_s']:.2f}" + (" (same program)" if loop.get("same_program_as_jaxcell") else "")
    lines.append(
      f"| {r['case']} | {j['strategy']} | {j['lane_steps_per_s']:.2f} | {loop_rate} | "
      f"{torch_rate} | {ratio(j)} | {ratio(loop)} | {j['images_per_s']:.0f} | "
      f"{_gflops(j)} | {split} | {'n/a' if j['compile_seconds'] is None else format(j['compile_seconds'], '.0f')} |"
    )
  return "\n".join(lines)


def _gflops(r) -> str:
  if r["gflops"] is None:
    return "n/a (cached features)" if "feature_seconds" in r else "n/a (no FLOP count)"
  return f"{r['gflops']:.1f} ({100 * r['fraction_of_matmul_peak']:.0f}%)"


def make_cases(sizes: list[int], modes: list[str], models=("resnet18",), **common) -> list[study_bench.Case]:
  """One case per model, size and mode; `common` holds the Case fields every case shares (lanes, batch_size...)."""
  return [
    study_bench.Case(
      image_size=size,
      frozen_trunk=mode in ("frozen", "cached"),
      trunk_bn="running" if mode == "cached" else "batch",
      model=model,
      **common,
    )
    for model in models
    for size in sizes
    for mode in modes
  ]


def run_cases(cases: list[study_bench.Case], peak_info: dict, out: str, **run_case_options) -> list[dict]:
  """Runs every case, printing its row and rewriting `out` after each one, so a run stopped part-way (a time
  limit, a lost machine) keeps what it measured."""
  nominal = study_bench.nominal_peak_tflops()
  results = []
  for case in cases:
    logging.info("Benchmarking %s", case.name)
    result = study_bench.run_case(case, peak_info["gflops"], **run_case_options)
    if nominal and result["jaxcell"]["gflops"] is not None:
      result["jaxcell"]["mfu_vs_nominal_bf16"] = result["jaxcell"]["gflops"] / (nominal * 1e3)
    results.append(result)
    print(_table(results[-1:], peak_info).splitlines()[-1], flush=True)
    with open(out, "w") as f:
      json.dump(
        {"matmul_peak": peak_info, "nominal_bf16_tflops": nominal, "results": results}, f, indent=2, default=str
      )
  return results


def _pretrain_results(peak_info: dict) -> list[dict]:
  results = []
  for size in FLAGS.sizes:
    logging.info("Benchmarking pretraining at %s px", size)
    results.append(
      pretrain_bench.run_pretrain_case(
        int(size), FLAGS.pretrain_batch, FLAGS.width, FLAGS.steps, FLAGS.repeats, FLAGS.dtype, peak_info["gflops"],
        with_torch=FLAGS.torch,
      )
    )  # fmt: skip
    with open(FLAGS.out, "w") as f:
      json.dump({"matmul_peak": peak_info, "pretrain": results}, f, indent=2, default=str)
  return results


def _pretrain_table(results: list[dict], peak_info: dict) -> str:
  host = peak_info["host_cpu"]
  lines = [
    f"Device: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}); matmul peak "
    f"{peak_info['gflops']:.1f} GFLOP/s; host CPU: {host['model']}, {host['cores']} cores, {host['vector_isa']}",
    "",
    "| case | dtype | jaxcell images/s | torch images/s | jaxcell / torch | GFLOP/s (% of matmul peak) | compile s |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in results:
    j, t = r["jaxcell"], r["torch"]
    lines.append(
      f"| {r['case']} | {r['dtype']} | {j['images_per_s']:.0f} | {t['images_per_s']:.0f} | "
      f"{j['speedup_vs_torch']:.2f}x | {j['gflops']:.1f} ({100 * j['fraction_of_matmul_peak']:.0f}%) | "
      f"{j['compile_seconds']:.0f} |"
      if t
      else f"| {r['case']} | {r['dtype']} | {j['images_per_s']:.0f} | n/a | n/a | {j['gflops']:.1f} "
      f"({100 * j['fraction_of_matmul_peak']:.0f}%) | {j['compile_seconds']:.0f} |"
    )
  return "\n".join(lines)


def _study_results(peak_info: dict) -> list[dict]:
  results = []
  for name in FLAGS.studies:
    logging.info("Whole study %s (cold, %d warm, torch)", name, FLAGS.study_warm_runs)
    results.append(
      whole_study.run_study(
        whole_study.STUDIES[name], FLAGS.scratch, FLAGS.study_epochs, FLAGS.study_repeats,
        FLAGS.study_images_per_class, FLAGS.study_warm_runs, FLAGS.torch,
      )
    )  # fmt: skip
    print(whole_study.table(results[-1:]), flush=True)
    with open(FLAGS.out, "w") as f:
      json.dump({"matmul_peak": peak_info, "studies": results}, f, indent=2, default=str)
  return results


def _studies_table(results: list[dict], peak_info: dict) -> str:
  host = peak_info["host_cpu"]
  return (
    f"Host CPU: {host['model']}, {host['cores']} cores, {host['vector_isa']}; {jax.device_count()} x "
    f"{jax.devices()[0].device_kind} ({jax.default_backend()}). Seconds per stage; jaxcell's train excludes its "
    "compile; 'other' is start-up, splits and checkpoints.\n\n" + whole_study.table(results)
  )


def main(argv):
  del argv
  logging.getLogger("jax").setLevel(logging.WARNING)
  try:
    strategy = None if FLAGS.strategy == "auto" else engine.Strategy.parse(FLAGS.strategy)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  peak_info = peak.measure_matmul_peak(dtype=jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32)
  if "study" in FLAGS.modes:
    print(_studies_table(_study_results(peak_info), peak_info))
  if "pretrain" in FLAGS.modes:
    print(_pretrain_table(_pretrain_results(peak_info), peak_info))
  study_modes = [m for m in FLAGS.modes if m not in ("pretrain", "study")]
  if not study_modes:
    return
  cases = make_cases(
    [int(size) for size in FLAGS.sizes],
    study_modes,
    FLAGS.model,
    lanes=FLAGS.lanes,
    batch_size=FLAGS.batch_size,
    width=FLAGS.width,
    steps=FLAGS.steps,
    dtype=FLAGS.dtype,
  )
  results = run_cases(cases, peak_info, FLAGS.out, with_torch=FLAGS.torch, strategy=strategy, repeats=FLAGS.repeats)
  print(_table(results, peak_info))
  print(f"\nWritten to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
