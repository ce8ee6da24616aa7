"""The package's layer order, read from the code's own imports: no module imports a higher layer, and no import
cycle exists anywhere (lazy imports inside functions count too). A failure names the offending file and line."""

from __future__ import annotations

import ast
import pathlib
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxcell"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = (
  (
    "jaxcell.config",
    "jaxcell.bionic",
    "jaxcell.progress",
    "jaxcell.command_line",
    "jaxcell.host_memory",
  ),  # Config, catalogue, progress, host memory.
  ("jaxcell.data",),  # Images, datasets and splits.
  ("jaxcell.models",),  # Flax networks.
  ("jaxcell.convert",),  # Checkpoints -> Flax weights for the models; loading them into a model.
  ("jaxcell.evaluation",),  # Metrics.
  ("jaxcell.workdir",),  # Every file of a study's workdir: names, one writer and one reader each.
  ("jaxcell.analysis",),  # Ensembles, triage, calibration, purification, comparisons: numbers from predictions.
  ("jaxcell.validation",),  # Every config field checked before anything runs.
  ("jaxcell.training",),  # The two training paths and the lane engine.
  ("jaxcell.arms",),  # Arm configs and their preparation.
  ("jaxcell.reporting",),  # summary.md, plots, report.html: read-only over the workdir records.
  ("jaxcell.study", "jaxcell.predict", "jaxcell.bench", "jaxcell.pretraining"),  # Programs.
  ("jaxcell.dry_run",),  # The plan of a study without running it (uses study's checks and bench's matmul rate).
  ("jaxcell.main", "jaxcell.api", "jaxcell.cli", "jaxcell.pretrain"),  # The command lines and the Python API.
)


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def is_module(name: str) -> bool:
  path = PACKAGE.parent.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: pathlib.Path) -> list[tuple[str, int]]:
  """(imported jaxcell module, line) of every import in the file; `from pkg import mod` names the module."""
  found = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("jaxcell")]
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxcell") and not node.level:
      for alias in node.names:
        target = f"{node.module}.{alias.name}"
        found.append((target if is_module(target) else node.module, node.lineno))
  return found


def layer_of(module: str) -> int:
  for index, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return index
  if module == "jaxcell":
    return len(LAYERS) - 1  # The package's __init__: exposes the Python API (imported lazily), nothing below uses it.
  raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}.")


def import_graph() -> dict[str, list[tuple[str, str]]]:
  """{module: [(imported module, 'file:line')]} over every module of the package."""
  graph = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    where = path.relative_to(PACKAGE.parent)
    graph[module_name(path)] = [(target, f"{where}:{line}") for target, line in imports(path)]
  return graph


def upward_imports(graph) -> list[str]:
  return [
    f"{where}: {module} (layer {LAYERS[layer_of(module)]}) imports {target} (layer {LAYERS[layer_of(target)]})"
    for module, targets in graph.items()
    for target, where in targets
    if layer_of(target) > layer_of(module)
  ]


def import_cycles(graph) -> list[str]:
  state: dict[str, str] = {}  # 'open' while on the depth-first stack, 'done' after.
  cycles = []

  def visit(module: str, trail: list[tuple[str, str]]) -> None:
    state[module] = "open"
    for target, where in graph.get(module, []):
      if state.get(target) == "open":
        start = next(i for i, (step, _) in enumerate(trail) if step == target)
        cycles.append(" -> ".join(f"{step} ({at})" for step, at in [*trail[start:], (target, where)]))
      elif target not in state:
        visit(target, [*trail, (target, where)])
    state[module] = "done"

  for module in graph:
    if module not in state:
      visit(module, [(module, "start")])
  return cycles


def test_every_module_is_in_a_layer():
  for module in import_graph():
    layer_of(module)


def test_no_module_imports_a_higher_layer():
  upward = upward_imports(import_graph())
  assert not upward, "Imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycles():
  cycles = import_cycles(import_graph())
  assert not cycles, "Import cycles:\n" + "\n".join(cycles)


def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
  """On a small fake package, the checks see an upward import and a cycle through a lazy import."""
  package = tmp_path / "jaxcell"
  (package / "data").mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "data" / "__init__.py").write_text("")
  (package / "data" / "a.py").write_text("from jaxcell.data import b\n")
  (package / "data" / "b.py").write_text("def f():\n  from jaxcell.data import a\n  from jaxcell import study\n")
  (package / "study.py").write_text("")
  monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
  graph = import_graph()
  assert upward_imports(graph) == [
    "jaxcell/data/b.py:3: jaxcell.data.b (layer ('jaxcell.data',)) imports jaxcell.study "
    "(layer ('jaxcell.study', 'jaxcell.predict', 'jaxcell.bench', 'jaxcell.pretraining'))"
  ]
  assert import_cycles(graph) == [
    "jaxcell.data.a (start) -> jaxcell.data.b (jaxcell/data/a.py:1) -> jaxcell.data.a (jaxcell/data/b.py:2)"
  ]
