"""python -m jaxcell.bench: the study benchmark, printed as a table and saved as JSON.

  python -m jaxcell.bench                                  # 64 and 128 px, frozen trunk and full fine-tune
  python -m jaxcell.bench --sizes 64 --modes full --steps 2 --out bench.json
  python -m jaxcell.bench --modes cached                   # frozen trunk with fixed BN: the cached-feature path
  python -m jaxcell.bench --dtype bfloat16                 # on GPU/TPU: bf16 with MFU

The PyTorch reference needs the optional extra (`pip install -e '.[torch]'`); without it the table
shows jaxcell's figures only and says so.
"""

import json
import logging

import jax
import jax.numpy as jnp
from absl import app, flags

from jaxcell.bench import peak, study_bench
from jaxcell.training import engine

flags.DEFINE_list("sizes", ["64", "128"], "Image sizes.")
flags.DEFINE_list(
  "modes",
  ["frozen", "full"],
  "'frozen' (BioNIC ResNet_all: trunk BN on batch statistics), 'full' (fine-tune everything) and/or 'cached' "
  "(frozen trunk with fixed BN statistics: jaxcell trains every head on cached features).",
)
flags.DEFINE_integer("lanes", 20, "Models trained (BioNIC: 5 folds x 4 repeats).")
flags.DEFINE_integer("batch_size", 8, "Images per step per model (BioNIC: 8).")
flags.DEFINE_integer("steps", 4, "Timed steps per model after compilation.")
flags.DEFINE_integer("repeats", 3, "Timings of each side, interleaved; medians are reported.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
flags.DEFINE_string("strategy", "auto", "jaxcell's strategy: 'auto' (autotune, recorded) or a fixed one, e.g. 'vmap'.")
flags.DEFINE_string("out", "bench.json", "Where to write the JSON results.")
FLAGS = flags.FLAGS


def _table(results, peak_info) -> str:
  lines = [
    f"Device: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}); "
    f"matmul peak {peak_info['gflops']:.1f} GFLOP/s ({peak_info['dtype']}, n={peak_info['size']})",
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
    return "n/a (cached features)"
  return f"{r['gflops']:.1f} ({100 * r['fraction_of_matmul_peak']:.0f}%)"


def main(argv):
  del argv
  logging.getLogger("jax").setLevel(logging.WARNING)
  dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
  peak_info = peak.measure_matmul_peak(dtype=dtype)
  results = []
  for size in map(int, FLAGS.sizes):
    for mode in FLAGS.modes:
      case = study_bench.Case(
        image_size=size,
        frozen_trunk=(mode in ("frozen", "cached")),
        trunk_bn="running" if mode == "cached" else "batch",
        lanes=FLAGS.lanes,
        batch_size=FLAGS.batch_size,
        steps=FLAGS.steps,
        dtype=FLAGS.dtype,
      )
      logging.info("Benchmarking %s", case.name)
      strategy = None if FLAGS.strategy == "auto" else engine.Strategy.parse(FLAGS.strategy)
      results.append(
        study_bench.run_case(
          case, peak_info["gflops"], with_torch=FLAGS.torch, strategy=strategy, repeats=FLAGS.repeats
        )
      )
      print(_table(results[-1:], peak_info).splitlines()[-1], flush=True)
  nominal = study_bench.nominal_peak_tflops()
  for r in results:
    if nominal:
      r["jaxcell"]["mfu_vs_nominal_bf16"] = r["jaxcell"]["gflops"] / (nominal * 1e3)
  report = {"matmul_peak": peak_info, "nominal_bf16_tflops": nominal, "results": results}
  with open(FLAGS.out, "w") as f:
    json.dump(report, f, indent=2, default=str)
  print(_table(results, peak_info))
  print(f"\nWritten to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
