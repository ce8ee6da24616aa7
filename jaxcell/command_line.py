"""What jaxcell's absl programs (jaxcell.main, jaxcell.pretrain) share: a quiet start, flags errors in one line.

`quiet_tensorflow()` must run before TensorFlow is imported (a tensorflow-datasets source imports it), so this module
imports neither jax nor TensorFlow at its top.
"""

import os
import re
import sys


def quiet_tensorflow() -> None:
  """TensorFlow prints start-up chatter from C++ as it loads, before any flag is parsed: silence it unless --verbose
  is on the command line. TensorFlow 2.21 announces its oneDNN kernels whatever TF_CPP_MIN_LOG_LEVEL says; jaxcell
  runs no TensorFlow computation worth them (it only reads tfds records), so they are turned off, which also
  ends the message."""
  if not any(arg in ("--verbose", "--verbose=true", "--verbose=True") for arg in sys.argv):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def parse_flags(argv: list[str], program: str = "jaxcell") -> list[str]:
  """absl's flag parsing, with a bad --config override (unknown field, wrong type) as one line instead of a
  traceback; ml_collections' own message already carries its "did you mean"."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f"{program}: {e}\nPass --helpfull to list the flags.") from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    text = re.sub(r"\s*(\\n|\n)\s*", ". ", re.sub(r"\\?'", "", str(e))).strip('" .')
    raise SystemExit(f"{program}: unknown or invalid --config field {text}") from None
