"""experiments/colab.ipynb: valid nbformat 4 JSON, code that compiles, commands that exist."""

import ast
import json
import re

import pytest

from conftest import REPO

NOTEBOOK = REPO / "experiments" / "colab.ipynb"


@pytest.fixture(scope="module")
def notebook():
  return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def code_cells(nb):
  return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_is_nbformat_4(notebook):
  assert notebook["nbformat"] == 4 and notebook["cells"]
  for cell in notebook["cells"]:
    assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None
  try:
    import nbformat
  except ImportError:
    return
  nbformat.validate(nbformat.reads(NOTEBOOK.read_text(encoding="utf-8"), as_version=4))


def test_code_cells_compile(notebook):
  for i, source in enumerate(code_cells(notebook)):
    python = "\n".join(line for line in source.splitlines()
                       if not line.lstrip().startswith(("!", "%")))
    ast.parse(python, filename=f"colab.ipynb code cell {i}")


def test_the_commands_it_runs_exist(notebook):
  sources = code_cells(notebook)
  shell = [line.strip()[1:] for s in sources for line in s.splitlines()
           if line.lstrip().startswith("!")]
  assert "bash launch.sh install" in shell
  launch = (REPO / "launch.sh").read_text()
  assert re.search(r"^\s*install\)", launch, re.M), "launch.sh has no install command"
  text = "\n".join(sources)
  assert '"-m", "experiments.report"' in text and (REPO / "experiments/report.py").is_file()
  defined = set(re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"',
                           (REPO / "experiments/report.py").read_text()))
  (report_cell,) = [s for s in sources if "experiments.report" in s]
  used = set(re.findall(r"--(\w+)", report_cell))
  assert used and used <= defined, used - defined
  assert "/kaggle/input/intel-image-classification" in text
  assert "jax.devices()" in text and "REPORT.md" in text
