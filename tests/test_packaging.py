"""Packaging and first contact: what is installed, what launch.sh installs for each command, the
entry points from a plain checkout, a Python without venv, and the first command on a fresh
machine (data downloaded with kagglehub, TensorBoard files written)."""

import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from helpers import REPO, cli_env, read_tensorboard, write_kaggle_folder


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


def test_every_third_party_import_of_the_library_is_declared():
  """scipy (Q1's Lambert W), kagglehub, tensorboardX ... each import of hw2jax/ is a
  dependency (runtime, or the tfds extra for hw2jax.data.tfds); torch only in
  hw2jax.experiments.torch_checkpoints (--from_torch / --to_torch), from the bench extra."""
  import ast
  extras = pyproject()["project"]["optional-dependencies"]
  runtime = " ".join(pyproject()["project"]["dependencies"] + extras["tfds"]).lower()
  with_bench = runtime + " " + " ".join(extras["bench"]).lower()
  names = {"PIL": "pillow", "absl": "absl-py", "tensorboardX": "tensorboardx",
           "orbax": "orbax-checkpoint", "tensorflow_datasets": "tensorflow-datasets",
           "array_record": "array-record"}
  stdlib = set(sys.stdlib_module_names)
  for path in (REPO / "hw2jax").rglob("*.py"):
    declared = with_bench if path.name == "torch_checkpoints.py" else runtime
    for node in ast.walk(ast.parse(path.read_text())):
      modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
      for module in modules:
        top = module.split(".")[0]
        if top in stdlib or top == "hw2jax":
          continue
        assert names.get(top, top).lower() in declared, (path.name, module)


def test_the_entry_points_run_from_a_plain_checkout(tmp_path):
  """`python -m experiments.cnn` works from the checkout's root without PYTHONPATH."""
  env = {k: v for k, v in cli_env(tmp_path).items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-m", "experiments.cnn", "--help"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr  # absl: 1
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


@pytest.mark.parametrize("command, extras", [
    (["cnn", "--lr=0.01"], ""), (["install"], ""), (["test", "-x"], "test"),
    (["bench", "cnn_speed"], "bench")])
def test_launch_sh_installs_only_what_the_command_needs(tmp_path, command, extras):
  """An experiment installs the runtime (and the machine's jax extra) only; `test` adds the
  test extra, `bench` the PyTorch one. pip is replaced by a recorder."""
  copy = _launch_copy(tmp_path)
  (copy / "benchmarks").mkdir()
  (copy / "benchmarks" / "cnn_speed.py").write_text("")
  venv = copy / ".venv" / "bin"
  venv.mkdir(parents=True)
  log = tmp_path / "calls.txt"
  (venv / "python").write_text(
      "#!/bin/bash\n"
      f"echo \"$*\" >> {log}\n"
      "exit 0\n")
  (venv / "python").chmod(0o755)
  env = {**os.environ, "HW2JAX_EXTRA": "cpu"}
  proc = subprocess.run(["bash", "launch.sh", *command], cwd=copy, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  installs = [line for line in log.read_text().splitlines() if "pip install" in line
              and "--upgrade pip" not in line]
  target = f".[{extras}]" if extras else "."
  assert len(installs) == 1 and installs[0].endswith(f"-e {target}"), installs
  gpu = subprocess.run(["bash", "launch.sh", *command], cwd=copy,
                       env={**env, "HW2JAX_EXTRA": "gpu"}, capture_output=True, text=True)
  assert gpu.returncode == 0, gpu.stderr
  last = [line for line in log.read_text().splitlines() if "pip install" in line
          and "--upgrade pip" not in line][-1]
  assert last.endswith(f"-e .[gpu{',' + extras if extras else ''}]"), last


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
  assert "converting" in proc.stdout and "epoch   1/1" in proc.stdout
  run = work / "runs/cnn/vanilla-lr0.01-ch4_8_16"
  assert [step for step, _ in read_tensorboard(run / "tb")["val_accuracy"]] == [1]
  again = subprocess.run(cmd, cwd=work, env={**env, "HW2JAX_DOWNLOAD": "never"},
                         capture_output=True, text=True, timeout=600)
  assert again.returncode != 0 and "no Intel image data found" in again.stderr
  # The download is kagglehub's cache: with downloads allowed the second run needs no network.
  cached = subprocess.run(cmd, cwd=work, env={**env, "FAKE_KAGGLE_SOURCE": "/nonexistent"},
                          capture_output=True, text=True, timeout=600)
  assert cached.returncode == 0 and "using cached conversion" in cached.stdout
