"""Pretrains one backbone on a large image collection — a "CellNet" — for studies to transfer from.

  python -m jaxcell.pretrain --config configs/cellnet.py --workdir runs/cellnet
  python -m jaxcell.pretrain --config configs/cellnet.py:objective=self_supervised,root=/data/cells --workdir W

The workdir gets config.json, log.txt, tensorboard/, checkpoints/ (re-running the command resumes, also after
kill -9), pretrain.json (the held-out linear probe's score as training went) and cellnet.npz, which a study starts
from with `--config.transfer.weights=cellnet:W` (configs/cellnet_transfer.py compares it with ImageNet and scratch).
"""

import logging as std_logging

from jaxcell import command_line

command_line.quiet_tensorflow()  # Before TensorFlow loads (a tensorflow-datasets source).

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxcell.pretraining import run  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Pretraining config file (configs/cellnet.py[:args]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Folder for every output of the pretraining (created if missing).")
flags.DEFINE_bool("verbose", False, "The whole log on the console.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.verbose:
    logging.get_absl_handler().setLevel(std_logging.WARNING)
  try:
    run.run_pretraining(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    logging.error("%s", e)
    raise SystemExit(f"jaxcell.pretrain: {e}") from None


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: command_line.parse_flags(argv, "jaxcell.pretrain"))
