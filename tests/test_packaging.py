"""Packaging and first contact: what is installed, what launch.sh installs for each command, the
entry points from a plain checkout, a Python without venv, and the first command on a fresh
machine (data downloaded with kagglehub, TensorBoard files written)."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers import REPO, cli_env, read_tensorboard, write_kaggle_folder, write_npz


def pyproject():
  return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_only_the_library_is_packaged():
  from setuptools import find_packages
  include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
  packages = find_packages(where=str(REPO), include=include)
  assert "hw2jax" in packages and "hw2jax.data" in packages
  assert not [p for p in packages if p.split(".")[0] in ("experiments", "benchmarks", "tests")]


def test_build_system_can_read_the_spdx_license():
  requires = pyproject()["build-system"]["requires"]
  assert requires == ["setuptools>=77"] and pyproject()["project"]["license"] == "MIT"


def canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str) -> set[str]:
  """The distributions pyproject.toml names itself: its dependencies and those of `extras`
  (`hw2jax[tfds]` inside an extra counts as the tfds extra's)."""
  project = pyproject()["project"]
  todo = list(project["dependencies"]) + [r for e in extras
                                          for r in project["optional-dependencies"][e]]
  names = set()
  while todo:
    req = Requirement(todo.pop())
    if canonical(req.name) == "hw2jax":
      todo += [r for e in req.extras for r in project["optional-dependencies"][e]]
    else:
      names.add(canonical(req.name))
  return names


def brought_by(*extras: str) -> set[str]:
  """What installing hw2jax with `extras` from pyproject.toml alone brings: the declared
  distributions and, recursively, the requirements of each as installed here (markers evaluated
  for the extras asked), so what another package happens to pull in (torch's filelock) is not
  counted unless something declared asks for it."""
  project = pyproject()["project"]
  todo = [Requirement(r) for r in project["dependencies"]]
  todo += [Requirement(r) for e in extras for r in project["optional-dependencies"][e]]
  seen, names = set(), {"hw2jax"}
  while todo:
    req = todo.pop()
    key = (canonical(req.name), frozenset(req.extras))
    if key in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
      continue
    seen.add(key)
    if key[0] == "hw2jax":
      todo += [Requirement(r) for e in req.extras for r in project["optional-dependencies"][e]]
      continue
    try:
      requires = metadata.distribution(req.name).requires or []
    except metadata.PackageNotFoundError:   # not for this platform or Python
      continue
    names.add(key[0])
    for line in requires:
      sub = Requirement(line)
      if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
        todo.append(sub)
  return names


# Who may import what: the library and the CLIs the runtime, the benchmarks PyTorch too, the
# suite its extras; two library modules read optional formats (TFDS; PyTorch's .pt files).
IMPORTERS = {"hw2jax": (), "experiments": (), "benchmarks": ("bench",),
             "tests": ("test", "bench")}
OPTIONAL_MODULES = {"hw2jax/data/tfds.py": ("tfds",),
                    "hw2jax/recipes/torch_files.py": ("bench",)}
OURS = {"hw2jax", "experiments", "benchmarks", "tests", "helpers", "conftest", "__future__"}


def third_party_imports(path):
  """The top-level names `path` imports (anywhere in it, lazy imports too), less ours and the
  standard library's."""
  tops = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      tops |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      tops.add(node.module.split(".")[0])
  return tops - OURS - set(sys.stdlib_module_names)


def test_every_third_party_import_is_declared():
  """Each package imported by the library, the CLIs, the benchmarks or the suite is named in
  pyproject.toml by the extra its importer installs, not merely pulled in by another package
  (the suite's `packaging` and `setuptools` came with pytest and with Python 3.11's venv)."""
  owners = metadata.packages_distributions()
  missing = []
  for folder, extras in IMPORTERS.items():
    for path in sorted((REPO / folder).rglob("*.py")):
      relative = path.relative_to(REPO).as_posix()
      allowed = declared(*extras, *OPTIONAL_MODULES.get(relative, ()))
      for top in sorted(third_party_imports(path)):
        dists = {canonical(d) for d in owners.get(top, [top])}
        if not dists & allowed:
          missing.append(f"{relative} imports {top} ({', '.join(sorted(dists))})")
  assert not missing, "undeclared imports:\n" + "\n".join(missing)


# Runs in a fresh interpreter before anything else: a distribution that pyproject.toml does not
# bring (argv[1]) cannot be imported, as in a venv made from pyproject.toml alone.
ONLY_DECLARED = """
import importlib.abc, importlib.metadata, json, re, sys
allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()

class Undeclared(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    dists = owners.get(name.partition(".")[0], [])
    if dists and not any(re.sub(r"[-_.]+", "-", d).lower() in allowed for d in dists):
      raise ModuleNotFoundError(f"No module named {name!r} (from {dists})", name=name)
    return None

sys.meta_path.insert(0, Undeclared())
sys.argv[1:] = sys.argv[2:]
"""

# The library's settings and the suite's (inherited from conftest through the environment, as
# every CLI subprocess of the suite gets them), then a compilation, which opens JAX's cache.
SETTINGS_AS_ERRORS = """
import pkgutil, warnings
import hw2jax
for module in pkgutil.walk_packages(hw2jax.__path__, "hw2jax."):
  if module.name != "hw2jax.recipes.torch_files":         # the bench extra's
    __import__(module.name)
warnings.simplefilter("error")
import jax
from hw2jax import cache
cache.enable_compilation_cache()
print(float(jax.jit(lambda x: x * 2.0 + 1.0)(3.0)), jax.config.jax_compilation_cache_max_size)
"""


def only_declared(code: str, extras: tuple[str, ...], tmp_path, *args):
  return subprocess.run(
      [sys.executable, "-c", ONLY_DECLARED + code, json.dumps(sorted(brought_by(*extras))),
       *args], cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_the_settings_warn_of_nothing_with_only_what_pyproject_brings(tmp_path):
  """In an interpreter that can import only what pyproject.toml's runtime and test extra bring
  (not PyTorch, whose filelock once hid a missing dependency), the library imports, and its
  settings and the suite's, warnings turned into errors, compile without a word on stderr."""
  proc = only_declared(SETTINGS_AS_ERRORS, ("test",), tmp_path)
  assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
  assert proc.stdout.split() == ["7.0", str(4 << 30)]


def test_the_suite_collects_with_only_what_pyproject_brings(tmp_path):
  """The same interpreter collects the whole suite: the PyTorch tests skip, nothing errors."""
  proc = only_declared("import pytest; sys.exit(pytest.main())", ("test",), tmp_path,
                       "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider", "-rs")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  summary = proc.stdout.strip().splitlines()[-1]
  assert re.fullmatch(r"\d+ tests collected in [\d.]+s", summary), summary
  assert "could not import 'torch': No module named 'torch'" in proc.stdout


def test_a_package_pyproject_does_not_bring_cannot_be_imported_there(tmp_path):
  """The check above can fail: with the runtime alone, the test extra's pytest is refused."""
  proc = only_declared("import pytest", (), tmp_path)
  assert proc.returncode == 1 and "No module named 'pytest'" in proc.stderr


def test_the_installed_ml_dtypes_is_below_the_slow_0_7():
  """pyproject keeps ml_dtypes below 0.7 (1.1 s of every start, BUILD.md); the environment
  the suite runs in holds to it, so its timings are what a user's install gets."""
  (pin,) = [Requirement(r) for r in pyproject()["project"]["dependencies"]
            if r.startswith("ml_dtypes")]
  assert "0.6.0" in pin.specifier and "0.7.0" not in pin.specifier
  assert metadata.version("ml_dtypes") in pin.specifier


def test_xdist_runs_a_group_on_one_worker(tmp_path):
  """The suite's module fixtures of a run's life rely on `xdist_group` (pyproject's pytest
  ceiling, BUILD.md): two grouped tests must run on one worker, with two workers to choose."""
  (tmp_path / "test_group.py").write_text(
      "import os, pytest\n"
      + "".join(f"@pytest.mark.xdist_group('life')\ndef test_{n}():\n"
                f"  open('{n}', 'w').write(os.environ['PYTEST_XDIST_WORKER'])\n"
                for n in "ab")
      + "def test_c():\n  pass\ndef test_d():\n  pass\n")
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
                         "-p", "no:cacheprovider", "-o", "addopts=", "test_group.py"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text()


def test_the_entry_points_run_from_a_plain_checkout(tmp_path):
  """`python -m experiments.cnn` works from the checkout's root without PYTHONPATH."""
  env = {k: v for k, v in cli_env(tmp_path).items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-m", "experiments.cnn", "--help"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
  assert "--download" in proc.stdout and "--[no]tensorboard" in proc.stdout


def _launch_copy(tmp_path):
  """launch.sh with what it reads (pyproject, experiment names) in a folder without .venv."""
  copy = tmp_path / "checkout"
  copy.mkdir()
  for name in ("launch.sh", "pyproject.toml", "README.md"):
    shutil.copy(REPO / name, copy / name)
  shutil.copytree(REPO / "experiments", copy / "experiments")
  return copy


def test_launch_sh_says_in_one_line_when_python_has_no_venv(tmp_path):
  fake = tmp_path / "python3-without-venv"
  fake.write_text("#!/bin/bash\n"
                  "if [[ \"$*\" == *\"import ensurepip, venv\"* ]]; then exit 1; fi\n"
                  f"exec {sys.executable} \"$@\"\n")
  fake.chmod(0o755)
  copy = _launch_copy(tmp_path)
  env = {**os.environ, "PYTHON": str(fake), "HW2JAX_EXTRA": "cpu"}
  proc = subprocess.run(["bash", "launch.sh", "cnn", "--lr=0.01"], cwd=copy, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "no venv module" in lines[0] and "python3-venv" in lines[0], lines
  assert not (copy / ".venv").exists()


@pytest.mark.slow
def test_launch_sh_reads_and_writes_relative_paths_in_the_callers_folder(tmp_path):
  """`cd work && <checkout>/launch.sh cnn --data_path=mine.npz --workdir=myrun`: the data is
  work/mine.npz and the run lands in work/myrun (and without --workdir in work/runs/), never in
  the checkout. The interpreter is this one (HW2JAX_SKIP_INSTALL), without the checkout on
  PYTHONPATH: launch.sh puts it there."""
  work = tmp_path / "work"
  work.mkdir()
  write_npz(work / "mine.npz", n_train=24, n_val=12, n_test=12)
  env = {k: v for k, v in cli_env(tmp_path).items() if k != "PYTHONPATH"}
  env.update(HW2JAX_SKIP_INSTALL="1", PYTHON=sys.executable)
  before = set(REPO.iterdir())
  for workdir in (["--workdir=myrun"], []):
    proc = subprocess.run(["bash", str(REPO / "launch.sh"), "cnn", "--data_path=mine.npz",
                           *workdir, "--epochs=1", "--channels=4,8,16", "--notensorboard"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  summary = json.loads((work / "myrun" / "summary.json").read_text())
  assert summary["data"]["source"] == "npz mine.npz" and not (REPO / "mine.npz").exists()
  assert (work / "runs/cnn/vanilla-lr0.01-ch4_8_16/summary.json").is_file()
  assert set(REPO.iterdir()) == before


@pytest.mark.slow
def test_an_activated_venv_runs_the_experiments_from_any_folder(tmp_path):
  """README: once launch.sh has made .venv, `source .venv/bin/activate` and then `python -m
  experiments.hopfield --check` work from any folder. The venv is real; its pip is a stand-in
  that installs nothing, and it sees this environment's packages instead."""
  import sysconfig
  copy = _launch_copy(tmp_path)
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", copy / ".venv"], check=True)
  python = copy / ".venv" / "bin" / "python"
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        capture_output=True, text=True, check=True).stdout.strip()
  (Path(site) / "pip").mkdir()
  (Path(site) / "pip" / "__init__.py").write_text("")
  (Path(site) / "pip" / "__main__.py").write_text("")
  (Path(site) / "this-environment.pth").write_text(
      f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
  env = {k: v for k, v in cli_env(tmp_path).items() if k != "PYTHONPATH"}
  proc = subprocess.run(["bash", "launch.sh", "install"], cwd=copy,
                        env={**env, "HW2JAX_EXTRA": "cpu"}, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  proc = subprocess.run(["bash", "-c", f"source {copy}/.venv/bin/activate && "
                         "python -m experiments.hopfield --check --workdir=out"],
                        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "Q1.3 beta=1/sqrt(D), K=V=X: step = attention" in proc.stdout


CPU_TORCH = "torch --index-url https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("command, has_torch, cpu, gpu", [
    (["cnn", "--lr=0.01"], True, [""], ["[gpu]"]),
    (["install"], False, [""], ["[gpu]"]),
    (["test", "-x"], False, [CPU_TORCH, "[test,bench]"], ["torch", "[gpu,test,bench]"]),
    (["test", "-x"], True, ["[test,bench]"], ["[gpu,test,bench]"]),
    (["bench", "cnn_speed"], True, ["[bench]"], ["[gpu,bench]"]),
    (["bench", "cnn_speed"], False, [CPU_TORCH, "[bench]"], ["torch", "[gpu,bench]"]),
    (["cnn", "--from_torch=m.pt"], False, ["", CPU_TORCH], ["[gpu]", "torch"]),
    (["p2g", "--to_torch", "m.pt"], False, ["", CPU_TORCH], ["[gpu]", "torch"]),
    (["p2g", "--to_torch=m.pt"], True, [""], ["[gpu]"]),
])
def test_launch_sh_installs_only_what_the_command_needs(tmp_path, command, has_torch, cpu, gpu):
  """An experiment installs the runtime (and the machine's jax extra) only; `bench` adds the
  PyTorch one, `test` the test extra and PyTorch (the parity tests); PyTorch comes where a
  command reads or writes PyTorch checkpoints, as the CPU build from PyTorch's CPU index
  unless there is an NVIDIA GPU (PyPI's Linux torch is the ~3 GB CUDA build), and before the
  bench extra so pip keeps it. pip is replaced by a recorder; `import torch` succeeds or not as
  `has_torch` says."""
  copy = _launch_copy(tmp_path)
  (copy / "benchmarks").mkdir()
  (copy / "benchmarks" / "cnn_speed.py").write_text('if __name__ == "__main__":\n  pass\n')
  venv = copy / ".venv" / "bin"
  venv.mkdir(parents=True)
  log = tmp_path / "calls.txt"
  (venv / "python").write_text(
      "#!/bin/bash\n"
      f"echo \"$*\" >> {log}\n"
      f"[[ \"$*\" == *'import torch'* ]] && exit {0 if has_torch else 1}\n"
      "exit 0\n")
  (venv / "python").chmod(0o755)

  def installs(extra):
    proc = subprocess.run(["bash", "launch.sh", *command], cwd=copy,
                          env={**os.environ, "HW2JAX_EXTRA": extra}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split("install -q ", 1)[1].replace("--timeout 60 --retries 2 ", "")
             for line in log.read_text().splitlines()
             if "pip install" in line and "--upgrade pip" not in line]
    log.unlink()
    return [c[len(f"-e {copy}"):] if c.startswith("-e ") else c for c in calls]

  assert installs("cpu") == cpu
  assert installs("gpu") == gpu


def test_ci_runs_the_readmes_test_command_and_nothing_else():
  """.ci/run installs nothing itself: on a bare machine its one command is the README's, so
  whatever the suite needs comes from what that command installs."""
  lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()[1:]
           if line.strip() and not line.lstrip().startswith("#")]
  assert lines == ["set -euo pipefail", 'cd "$(dirname "${BASH_SOURCE[0]}")/.."',
                   "./launch.sh test"]
  readme = (REPO / "README.md").read_text()
  assert "```bash\n./launch.sh cnn --lr=0.01" in readme and "\n./launch.sh test " in readme


def test_launch_sh_in_a_notebook_installs_once_per_interpreter_environment(tmp_path):
  """Two kernels of one Python version but different environments (sys.prefix) each get the
  install; the same one again skips it (the stamp is keyed on the environment)."""
  copy = _launch_copy(tmp_path)
  log = tmp_path / "calls.txt"
  pythons = []
  for name in ("env_a", "env_b"):
    fake = tmp_path / name
    fake.write_text("#!/bin/bash\n"
                    f"echo \"{name} $*\" >> {log}\n"
                    f"[[ \"$*\" == *sys.prefix* ]] && echo '3.11.7 /opt/{name}'\n"
                    "exit 0\n")
    fake.chmod(0o755)
    pythons.append(fake)
  env = {**os.environ, "HW2JAX_EXTRA": "cpu", "COLAB_RELEASE_TAG": "test",
         "HW2JAX_CACHE": str(tmp_path / "cache")}
  for python in (*pythons, pythons[0]):
    proc = subprocess.run(["bash", "launch.sh", "install"], cwd=copy,
                          env={**env, "PYTHON": str(python)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
  installs = [line.split()[0] for line in log.read_text().splitlines()
              if "pip install -q -e" in line]
  assert installs == ["env_a", "env_b"]


FAKE_KAGGLEHUB = '''\
"""A stand-in for kagglehub (tests have no network): 'downloads' a fixture folder into the cache."""
import os, pathlib, shutil

def dataset_download(handle, **kwargs):
  source = pathlib.Path(os.environ["FAKE_KAGGLE_SOURCE"])
  target = pathlib.Path(os.environ["KAGGLEHUB_CACHE"]) / "datasets" / handle / "versions" / "2"
  if not target.exists():
    shutil.copytree(source, target)
  return str(target)
'''


@pytest.mark.slow
def test_the_first_command_on_a_fresh_machine_downloads_converts_trains_and_logs(tmp_path):
  """`experiments.cnn --lr=0.01 --epochs=1` with no data anywhere: kagglehub (a fake one on
  PYTHONPATH) downloads it, it is converted, one epoch trains, tb/ holds the events."""
  fake = tmp_path / "fake_modules" / "kagglehub"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text(FAKE_KAGGLEHUB)
  write_kaggle_folder(tmp_path / "kaggle_source")
  env = cli_env(tmp_path)
  env.update(PYTHONPATH=f"{tmp_path / 'fake_modules'}{os.pathsep}{env['PYTHONPATH']}",
             FAKE_KAGGLE_SOURCE=str(tmp_path / "kaggle_source"), HW2JAX_DOWNLOAD="auto",
             KAGGLEHUB_CACHE=str(tmp_path / "kagglehub"))
  work = tmp_path / "home"
  work.mkdir()
  cmd = [sys.executable, "-m", "experiments.cnn", "--lr=0.01", "--epochs=1",
         "--channels=4,8,16"]
  proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "downloading the Kaggle dataset puneet6060/intel-image-classification" in proc.stdout
  assert "converting" in proc.stdout
  run = work / "runs/cnn/vanilla-lr0.01-ch4_8_16"
  assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
          ] == [1]
  assert [step for step, _ in read_tensorboard(run / "tb")["val_accuracy"]] == [1]
  again = subprocess.run(cmd, cwd=work, env={**env, "HW2JAX_DOWNLOAD": "never"},
                         capture_output=True, text=True, timeout=600)
  assert again.returncode != 0 and "no Intel image data found" in again.stderr
  # The download is kagglehub's cache: with downloads allowed the second run needs no network.
  cached = subprocess.run(cmd, cwd=work, env={**env, "FAKE_KAGGLE_SOURCE": "/nonexistent"},
                          capture_output=True, text=True, timeout=600)
  assert cached.returncode == 0 and "using cached conversion" in cached.stdout
