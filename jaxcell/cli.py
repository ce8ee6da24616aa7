"""The `jaxcell` command: `jaxcell run|predict|pretrain|convert|bench ...`, the same programs as
`python -m jaxcell.main`, `python -m jaxcell.predict`, `python -m jaxcell.pretrain`, `python -m jaxcell.convert` and
`python -m jaxcell.bench`, with the same flags."""

from __future__ import annotations

import sys

USAGE = """usage: jaxcell COMMAND [flags]

commands:
  run      run or resume a study       (python -m jaxcell.main: --config FILE[:arg] --workdir DIR [--dry_run])
  predict  score new images            (python -m jaxcell.predict: --workdir DIR --images PATH...)
  pretrain pretrain a CellNet          (python -m jaxcell.pretrain: --config configs/cellnet.py[:arg] --workdir DIR)
  convert  convert pretrained weights  (python -m jaxcell.convert: --arch NAME --input FILE --output FILE.npz)
  bench    benchmark the lane engine   (python -m jaxcell.bench)

`jaxcell COMMAND --help` lists a command's flags."""


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  program = f"jaxcell {command}"
  if command == "run":
    from absl import app  # pylint: disable=import-outside-toplevel

    from jaxcell import main as study_main  # pylint: disable=import-outside-toplevel

    app.run(study_main.main, argv=[program, *rest], flags_parser=study_main.parse_flags)
    return 0
  if command == "pretrain":
    from absl import app  # pylint: disable=import-outside-toplevel

    from jaxcell import command_line  # pylint: disable=import-outside-toplevel
    from jaxcell import pretrain  # pylint: disable=import-outside-toplevel

    app.run(pretrain.main, argv=[program, *rest], flags_parser=lambda a: command_line.parse_flags(a, program))
    return 0
  if command == "predict":
    from jaxcell import predict  # pylint: disable=import-outside-toplevel

    return predict.main(rest)
  if command == "convert":
    from jaxcell.convert import __main__ as convert  # pylint: disable=import-outside-toplevel

    return convert.main(rest)
  if command == "bench":
    from absl import app  # pylint: disable=import-outside-toplevel

    from jaxcell.bench import __main__ as bench  # pylint: disable=import-outside-toplevel

    app.run(bench.main, argv=[program, *rest])
    return 0
  print(f"jaxcell: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
