"""Runs a jaxcell study.

  python -m jaxcell.main --config configs/demo.py --workdir runs/demo
  python -m jaxcell.main --config configs/demo.py:smoke --workdir runs/smoke --config.train.learning_rate=3e-4

Everything the study writes lands in --workdir; re-running the same command resumes it. The console shows one
progress line or bar per stage and the warnings; log.txt in the workdir has every log line (per-lane losses
included, also in TensorBoard). --verbose puts the whole log, and TensorFlow's and XLA's start-up messages, on the
console too.
"""

import logging as std_logging
import os
import sys

from jaxcell import command_line

command_line.quiet_tensorflow()  # Before TensorFlow loads (a tensorflow-datasets source).

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxcell import dry_run, study  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Study config file (configs/*.py[:args]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for every output of the study (created if missing).")
flags.DEFINE_bool(
  "dry_run",
  False,
  "Check the config and the data and print the plan (splits, arms, lanes, steps, training path, "
  "memory and time estimates) without training or writing anything.",
)
flags.DEFINE_bool("verbose", False, "The whole log on the console (INFO lines, TensorFlow/XLA start-up messages).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  return command_line.parse_flags(argv, "jaxcell")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.verbose:  # The console: warnings and the progress lines; log.txt keeps everything.
    logging.get_absl_handler().setLevel(std_logging.WARNING)  # A Python level (absl's own WARNING is -1).
  try:
    if FLAGS.dry_run:
      print(dry_run.plan_study(FLAGS.config, FLAGS.workdir), flush=True)
      return
    study.run_study(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError) as e:  # Bad input or config: say what to fix, no traceback.
    logging.error("%s", e)
    raise SystemExit(f"jaxcell: {e}") from None
  except jax.errors.JaxRuntimeError as e:
    if not jax.distributed.is_initialized():
      raise
    _peer_failed(e)


def _peer_failed(error: Exception) -> None:
  """Another process of a multi-process job died (killed, preempted): say so and stop now. A normal exit would
  hang in, then abort from, the distributed runtime's shutdown, which waits for the dead process."""
  first_line = (str(error).strip().splitlines() or [""])[0][:300]
  message = (
    f"jaxcell: process {jax.process_index()} of {jax.process_count()} stops: the multi-process job failed "
    f"({first_line}), most likely because another process died or was preempted. Re-run the same command on every "
    "host: the study resumes from its last checkpoint."
  )
  logging.error("%s", message)
  logging.flush()
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  os._exit(3)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
