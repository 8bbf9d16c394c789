"""experiments/colab.ipynb: valid nbformat 4 JSON whose cells, run by a Jupyter kernel without
hw2jax (as on Kaggle/Colab; quick settings, fixture data), install it, find the checkout and
produce REPORT.md; a failed install or report stops "Run all"."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, write_npz

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


def definitions(notebook, **names) -> dict:
  """The notebook's imports and functions (no cell run), in a namespace with `names` added."""
  tree = ast.parse("\n".join(code_cells(notebook)))
  tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
  namespace = dict(names)
  exec(compile(tree, "colab.ipynb", "exec"), namespace)
  return namespace


def test_installed_means_this_interpreter_imports_jax_and_hw2jax_of_this_checkout(
    notebook, tmp_path, monkeypatch):
  """A kernel has its current folder (the checkout) on sys.path: the checkout's own hw2jax/
  must not pass for an installed hw2jax, nor one installed from another checkout."""
  monkeypatch.chdir(REPO)
  bare = tmp_path / "python-without-site-packages"
  bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
  bare.chmod(0o755)
  check = definitions(notebook, repo=REPO)["hw2jax_installed"]
  assert check(sys.executable)
  assert not check(str(bare))
  assert not definitions(notebook, repo=tmp_path)["hw2jax_installed"](sys.executable)


def test_a_failed_report_stops_run_all(notebook, tmp_path, capsys):
  """The report cell raises (a notebook's "Run all" stops) with the exit code and last lines
  when the report exits non-zero: the REPORT.md cell after it never reads a missing file."""
  cell = report_cell(notebook, "[sys.executable, '-c', 'import sys; print(\"boom\"); sys.exit(3)']")
  namespace = definitions(notebook, repo=tmp_path, PLATFORM="gpu", QUICK=False, CPU_OK=False)
  with pytest.raises(SystemExit) as stop:
    exec(cell, namespace)
  assert "exit code 3" in str(stop.value) and "boom" in str(stop.value)
  assert "boom" in capsys.readouterr().out                # shown as it came


def report_cell(notebook, command: str):
  """The report cell, compiled, with `command` (a Python expression) as the report to run."""
  (source,) = [s for s in code_cells(notebook) if '"experiments.report"' in s]
  tree = ast.parse(source)
  (assign,) = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "CMD"]
  assign.value = ast.parse(command, mode="eval").body
  return compile(ast.fix_missing_locations(tree), "report cell", "exec")


def test_on_a_cpu_the_full_report_stops_and_says_how_long_it_would_take(notebook, tmp_path,
                                                                         capsys):
  """"Run all" on a CPU runtime with QUICK = False does not start hours of training unasked:
  the cell stops naming the hours and the two settings; QUICK or CPU_OK runs the report."""
  cell = report_cell(notebook, "[sys.executable, '-c', 'print(\"report ran\")']")
  for platform, quick, cpu_ok, runs in [("cpu", False, False, False), ("cpu", True, False, True),
                                        ("cpu", False, True, True), ("tpu", False, False, True)]:
    namespace = definitions(notebook, repo=tmp_path, PLATFORM=platform, QUICK=quick,
                            CPU_OK=cpu_ok)
    if runs:
      exec(cell, namespace)
      assert "report ran" in capsys.readouterr().out
    else:
      with pytest.raises(SystemExit) as stop:
        exec(cell, namespace)
      assert "many hours" in str(stop.value) and "QUICK = True" in str(stop.value) \
          and "CPU_OK = True" in str(stop.value)


def test_the_intro_tells_kaggle_users_to_set_the_repository(notebook):
  """A Kaggle notebook is not inside a checkout: its intro says to set REPO_URL, and the
  settings cell has it and the CPU switch."""
  intro = "".join(notebook["cells"][0]["source"])
  kaggle = intro.split("**Kaggle**")[1].split("**Colab**")[0]
  assert "set `REPO_URL`" in kaggle and "CPU_OK = True" in intro
  assert "CPU_OK = False" in code_cells(notebook)[0]


def settings(source: str, **values) -> str:
  """The settings cell with some of its NAME = value lines replaced."""
  for name, value in values.items():
    source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
    assert n == 1, name
  return source


def copy_checkout(target: Path) -> Path:
  """The working tree's files as a fresh clone has them (tracked and untracked, not ignored:
  no .venv, no runs/), uncommitted edits included, which `git clone` of REPO would miss."""
  listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                          capture_output=True, text=True, check=True, timeout=60).stdout
  for name in filter(None, listed.split("\0")):
    source = REPO / name
    if source.is_file():                     # a tracked file deleted in the work tree: skip it
      (target / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, target / name)
  return target


@pytest.mark.slow
def test_run_all_in_a_fresh_kernel_installs_hw2jax_and_writes_the_report(tmp_path, monkeypatch):
  """What Kaggle and Colab do: "Run all" of the notebook inside a clone, in a kernel whose
  interpreter has neither hw2jax nor jax (a fresh venv with ipykernel only). The install cell
  must see that, even though the checkout's own hw2jax/ folder is importable from its cwd, and
  install the runtime into that interpreter with launch.sh; the report then runs in it."""
  import nbclient     # the test extra
  import nbformat
  clone = copy_checkout(tmp_path / "clone")
  home = tmp_path / "home"
  home.mkdir()
  # pip's own cache (found before HOME moves) keeps reruns quick; nothing else of the user's.
  pip_cache = os.environ.get("PIP_CACHE_DIR") or subprocess.run(
      [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True,
      timeout=120).stdout.strip() or str(home / ".cache" / "pip")
  for name in [k for k in os.environ if k.startswith(("KAGGLE_", "COLAB_", "JUPYTER"))] + [
      "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHON", "HW2JAX_EXTRA"]:
    monkeypatch.delenv(name, raising=False)
  venv = tmp_path / "kernel-venv"
  python = venv / "bin" / "python"
  monkeypatch.setenv("PATH", f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
  for name, value in {"HOME": home, "XDG_CACHE_HOME": home / ".cache",
                      "XDG_CONFIG_HOME": home / ".config", "XDG_DATA_HOME": home / ".local/share",
                      "HW2JAX_CACHE": tmp_path / "cache", "PIP_CACHE_DIR": pip_cache,
                      "JUPYTER_PATH": tmp_path / "jupyter",
                      "JUPYTER_DATA_DIR": tmp_path / "jupyter",
                      "JUPYTER_CONFIG_DIR": tmp_path / "jupyter-config",
                      "JUPYTER_RUNTIME_DIR": tmp_path / "jupyter-runtime",
                      "IPYTHONDIR": tmp_path / "ipython", "MPLCONFIGDIR": tmp_path / "mpl",
                      "JAX_PLATFORMS": "cpu"}.items():
    monkeypatch.setenv(name, str(value))

  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
  pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "ipykernel"],
                       capture_output=True, text=True, timeout=600)
  assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
  for module in ("hw2jax", "jax"):                # the kernel starts without them
    missing = subprocess.run([str(python), "-c", f"import {module}"], cwd=tmp_path,
                             capture_output=True, timeout=120)
    assert missing.returncode != 0, module
  spec = tmp_path / "jupyter" / "kernels" / "fresh-venv"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "fresh venv", "language": "python"}))

  intel = write_npz(tmp_path / "intel.npz", n_train=48, n_val=12, n_test=12)
  workdir = tmp_path / "report"
  path = clone / "experiments" / "colab.ipynb"
  nb = nbformat.read(path, as_version=4)
  (first,) = [c for c in nb.cells if c.cell_type == "code"][:1]
  first.source = settings(first.source, QUICK=True, PARTS="q2", WORKDIR=str(workdir),
                          EXTRA_ARGS=f"--intel_data_path={intel} --layout=hwc")
  client = nbclient.NotebookClient(nb, kernel_name="fresh-venv", timeout=900,
                                   startup_timeout=120,
                                   resources={"metadata": {"path": str(path.parent)}})
  try:
    client.execute()
  finally:
    nbformat.write(nb, tmp_path / "executed.ipynb")    # the outputs, to read when it fails
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
  assert f"repository: {clone}" in outputs and "launch.sh: installing hw2jax" in outputs, outputs
  assert "exit code 0" in outputs and "TensorBoard: run `tensorboard --logdir" in outputs
  report = (workdir / "REPORT.md").read_text()
  assert "QUICK RUN" in report and "### Table 2.1" in report and "Complete: every table" in report
  assert (tmp_path / "report.zip").is_file()
  assert list((workdir / "q2").rglob("tb/events.out.tfevents.*"))
  probe = subprocess.run([str(python), "-c", "import hw2jax, jax; print(hw2jax.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert probe.returncode == 0, probe.stderr[-2000:]
  assert Path(probe.stdout.strip()).resolve().is_relative_to(clone.resolve())
