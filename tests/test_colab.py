"""experiments/colab.ipynb: valid nbformat 4 JSON whose code cells, run headless as a script on
CPU (quick settings, fixture data), install nothing, find this checkout and produce REPORT.md."""

import ast
import json
import re
import subprocess
import sys

import pytest

from helpers import REPO, cli_env, write_npz

NOTEBOOK = REPO / "experiments" / "colab.ipynb"


@pytest.fixture(scope="module")
def notebook():
  return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def code_cells(nb):
  return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_is_nbformat_4_and_plain_python(notebook):
  assert notebook["nbformat"] == 4 and notebook["cells"]
  for cell in notebook["cells"]:
    assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None
  for i, source in enumerate(code_cells(notebook)):
    ast.parse(source, filename=f"colab.ipynb code cell {i}")   # no ! or % lines: runs headless
  text = "\n".join(code_cells(notebook))
  assert "YOUR-USER" not in text and 'REPO_URL = ""' in text
  assert '"launch.sh", "install"' in text and "test" not in re.findall(r'launch\.sh", "(\w+)', text)
  assert "drive.mount" in text and '"tensorboard"' in text and "--download=auto" in text


def test_the_report_flags_it_passes_exist(notebook):
  defined = set(re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"',
                           (REPO / "experiments/report.py").read_text()))
  defined |= set(re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', (REPO / "hw2jax/cli.py").read_text()))
  (report_cell,) = [s for s in code_cells(notebook) if '"experiments.report"' in s]
  used = set(re.findall(r'"--(\w+)', report_cell))
  assert used and used <= defined, used - defined


def settings(source: str, **values) -> str:
  """The settings cell with some of its NAME = value lines replaced."""
  for name, value in values.items():
    source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
    assert n == 1, name
  return source


@pytest.mark.slow
def test_the_notebook_runs_end_to_end_on_cpu_and_writes_the_report(notebook, tmp_path):
  intel = write_npz(tmp_path / "intel.npz", n_train=48, n_val=12, n_test=12)
  cells = code_cells(notebook)
  cells[0] = settings(cells[0], QUICK=True, PARTS="q1,q2", WORKDIR=str(tmp_path / "report"),
                      EXTRA_ARGS=f"--intel_data_path={intel} --layout=hwc")
  script = tmp_path / "notebook.py"
  script.write_text("\n\n".join(cells))
  proc = subprocess.run([sys.executable, str(script)], cwd=REPO / "experiments",
                        env=cli_env(tmp_path), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert f"repository: {REPO}" in proc.stdout and "launch.sh" not in proc.stderr
  assert "exit code 0" in proc.stdout and "TensorBoard: run `tensorboard --logdir" in proc.stdout
  report = (tmp_path / "report" / "REPORT.md").read_text()
  assert "QUICK RUN" in report and "### Table 2.1" in report and "Complete: every table" in report
  assert (tmp_path / "report.zip").is_file()
  assert list((tmp_path / "report" / "q2").rglob("tb/events.out.tfevents.*"))
