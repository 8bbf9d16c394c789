"""The layout holds: imports go one way between the library's layers, never in a circle; no
module reaches for another's private names; only the CLI edge reads absl flags; no module grows
past what a reader takes in."""

import ast
import re
from pathlib import Path

import pytest

from helpers import REPO

LIBRARY = REPO / "hw2jax"
MAX_LINES = 450
# What each folder (or top-level module) may import from the library, beside its own folder.
# Below everything: errors, cache, malloc, files, records, markdown, metrics (they import nothing
# of ours but errors and one another). models and data are side by side; train knows no model;
# recipes no report.
BASE = {"hw2jax.errors", "hw2jax.cache", "hw2jax.malloc", "hw2jax.files", "hw2jax.records",
        "hw2jax.markdown", "hw2jax.metrics", "hw2jax"}
ALLOWED = {
    "base": BASE,
    "models": BASE,
    "data": BASE,
    "train": BASE,
    "plots": BASE | {"train"},
    "cli": BASE | {"train"},
    "recipes": BASE | {"models", "data", "train", "plots"},
    "report": BASE | {"models", "data", "train", "plots", "recipes"},
}


def module_name(path: Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> str:
  if name in BASE:
    return "base"
  return name.split(".")[1]


def library_modules() -> dict[str, Path]:
  return {module_name(p): p for p in LIBRARY.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, list[str]]]:
  """(module, names taken from it) of every import in the file, function-level ones too."""
  out = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out += [(a.name, []) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      out.append((node.module, [a.name for a in node.names]))
  return out


def hw2jax_targets(path: Path, known: set[str]) -> set[str]:
  """The library modules a file imports (`from hw2jax.x import y` names module x.y if it is
  one, else x)."""
  targets = set()
  for module, names in imports(path):
    if not module.startswith("hw2jax"):
      continue
    subs = {f"{module}.{n}" for n in names} & known
    targets |= subs or {module}
  return targets


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
  modules = library_modules()
  return {name: hw2jax_targets(path, set(modules)) - {name} for name, path in modules.items()}


def test_there_is_no_import_cycle(graph):
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)


def test_imports_go_one_way_between_layers(graph):
  wrong = []
  for name, targets in graph.items():
    here = layer(name)
    for target in targets:
      there = layer(target)
      if there != here and there not in ALLOWED[here] and target not in ALLOWED[here]:
        wrong.append(f"{name} -> {target}")
  assert not wrong, wrong


@pytest.mark.parametrize("root", ["hw2jax", "tests", "experiments", "benchmarks"])
def test_every_import_names_its_module_absolutely(root):
  """The layer, cycle and private-name checks read absolute names: a relative import
  (`from .checkpoints import _disk_full`, `from ..recipes import cnn`) would slip past
  them, so there is none."""
  relative = [f"{path.relative_to(REPO)}:{node.lineno}"
              for path in (REPO / root).rglob("*.py")
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.ImportFrom) and node.level > 0]
  assert not relative, relative


@pytest.mark.parametrize("root", ["hw2jax", "tests", "experiments", "benchmarks"])
def test_no_module_takes_another_modules_private_names(root):
  """Neither `from hw2jax.x import _name` nor `x._name` on an imported library module."""
  wrong = []
  for path in (REPO / root).rglob("*.py"):
    tree = ast.parse(path.read_text())
    aliases = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hw2jax"):
        aliases |= {a.asname or a.name for a in node.names}
        wrong += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                  if a.name.startswith("_")]
      elif isinstance(node, ast.Import):
        aliases |= {a.asname or a.name.split(".")[0] for a in node.names
                    if a.name.startswith("hw2jax")}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not wrong, wrong


def test_only_the_cli_edge_reads_absl_flags():
  readers = [module_name(p) for p in LIBRARY.rglob("*.py")
             if any(m == "absl.flags" or (m == "absl" and "flags" in names)
                    for m, names in imports(p))]
  assert readers == ["hw2jax.cli"], readers


def test_no_library_module_is_longer_than_a_reader_takes_in():
  long = {module_name(p): n for p in LIBRARY.rglob("*.py")
          if (n := len(p.read_text().splitlines())) >= MAX_LINES}
  assert not long, long


def fenced_block_after(doc: str, heading: str) -> str:
  """The first fenced block after `heading` in the doc: its map of the layout."""
  text = (REPO / doc).read_text().split(heading, 1)[1]
  return text.split("```", 2)[1]


@pytest.mark.parametrize("doc, heading", [("README.md", "## Layout"),
                                          ("ARCHITECTURE.md", "# Architecture")])
def test_the_docs_layout_names_every_library_module(doc, heading):
  """A module added to the library is added to the map a reader finds it by (sweep.py was
  missing from both)."""
  block = fenced_block_after(doc, heading)
  words = set(re.findall(r"\w+", block))
  missing = [module_name(p) for p in sorted(LIBRARY.rglob("*.py"))
             if p.stem != "__init__" and p.stem not in words]
  assert not missing, f"{doc} does not name {missing}"
