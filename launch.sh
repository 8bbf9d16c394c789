#!/usr/bin/env bash
# hw2jax bootstrap: installs what each command needs once (fast when already installed) and runs
#   ./launch.sh <experiment> [flags]      python -m experiments.<experiment> [flags], e.g. cnn --lr=0.01
#   ./launch.sh test [pytest args]        the test suite (adds the test extra and PyTorch)
#   ./launch.sh bench <name> [flags]      python -m benchmarks.<name> (adds the PyTorch baseline)
#   ./launch.sh install                   install the runtime only
# Commands run in the folder you call launch.sh from: relative paths (--data_path, --workdir)
# and the default runs/ and data/ are yours. The jax extra follows the machine: NVIDIA GPU ->
# gpu, TPU -> tpu, otherwise CPU (override with HW2JAX_EXTRA=gpu|tpu|cpu). PyTorch, for
# --from_torch / --to_torch and bench, comes as its CPU build on CPU machines. On Kaggle/Colab it
# installs into the running interpreter; elsewhere into <checkout>/.venv (the interpreter that
# makes it: PYTHON=...). HW2JAX_SKIP_INSTALL=1 installs nothing and runs ${PYTHON:-.venv's}.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "launch.sh: $*" >&2; exit 2; }

usage() {
  sed -n '2,12p' "$REPO/launch.sh" | sed 's/^# \{0,1\}//'
  echo "experiments: $(runnable experiments)"
}

# runnable <folder>: the modules of <folder> with a __main__ block (what python -m can run).
runnable() {
  grep -l '^if __name__ == "__main__":' "$REPO/$1"/*.py | xargs -n1 basename | sed 's/\.py$//' \
    | xargs
}

detect_extra() {
  if [[ -n "${HW2JAX_EXTRA:-}" ]]; then
    case "$HW2JAX_EXTRA" in gpu|tpu|cpu) echo "$HW2JAX_EXTRA"; return;; esac
    die "HW2JAX_EXTRA=$HW2JAX_EXTRA is not one of gpu, tpu, cpu"
  fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo gpu
  elif [[ -e /dev/accel0 || -n "${TPU_ACCELERATOR_TYPE:-}" || -n "${TPU_NAME:-}" ]] \
      || ls /dev/vfio/[0-9]* >/dev/null 2>&1; then
    echo tpu
  else
    echo cpu
  fi
}

in_notebook() {
  [[ -n "${KAGGLE_KERNEL_RUN_TYPE:-}" || -n "${KAGGLE_URL_BASE:-}" || -n "${COLAB_RELEASE_TAG:-}" \
     || -n "${COLAB_GPU:-}" ]]
}

hash_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-16; else shasum -a 256 | cut -c1-16; fi
}

# install <extras>: pip install -e .[extras] (just . when empty) unless already recorded.
install() {
  local extras="$1" py stamp_dir want
  if [[ -n "${HW2JAX_SKIP_INSTALL:-}" ]]; then
    PY="${PYTHON:-$REPO/.venv/bin/python}"
    command -v "$PY" >/dev/null 2>&1 || die "HW2JAX_SKIP_INSTALL is set but $PY does not exist"
    return
  fi
  if in_notebook; then
    py="${PYTHON:-python3}"
    stamp_dir="${HW2JAX_CACHE:-$HOME/.cache/hw2jax}/launch-stamps"
  else
    if [[ ! -x "$REPO/.venv/bin/python" ]]; then
      local base="${PYTHON:-python3}"
      command -v "$base" >/dev/null 2>&1 || die "$base not found; install Python >= 3.11"
      "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$("$base" -V 2>&1) is too old; hw2jax needs Python >= 3.11 (set PYTHON=python3.12)"
      "$base" -c 'import ensurepip, venv' >/dev/null 2>&1 \
        || die "$("$base" -V 2>&1) has no venv module; install it (Debian/Ubuntu: sudo apt install python3-venv, or python$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv) and rerun"
      echo "launch.sh: creating .venv with $("$base" -V 2>&1)" >&2
      "$base" -m venv "$REPO/.venv"
    fi
    py="$REPO/.venv/bin/python"
    stamp_dir="$REPO/.venv/.hw2jax-installed"
    # The venv is the checkout's own: once activated, its Python finds experiments/ and
    # benchmarks/ from any folder (`python -m experiments.cnn`). Not in a notebook's
    # interpreter, where a top-level `experiments` could shadow the notebook's own.
    "$py" -c 'import pathlib, sys, sysconfig
pathlib.Path(sysconfig.get_path("purelib"), "hw2jax-checkout.pth").write_text(sys.argv[1] + "\n")' "$REPO"
  fi
  # Keyed on the interpreter's prefix too: two environments of one Python never share a stamp.
  want="$( (cat "$REPO/pyproject.toml"; echo "$extras"; "$py" -c 'import sys; print(sys.version, sys.prefix)' 2>&1) | hash_of)"
  if [[ -f "$stamp_dir/$want" ]]; then
    PY="$py"; return
  fi
  local target="$REPO"
  [[ -n "$extras" ]] && target="$REPO[$extras]"
  echo "launch.sh: installing hw2jax${extras:+[$extras]} with $("$py" -V 2>&1)" >&2
  "$py" -m pip install -q --upgrade pip >/dev/null
  PY="$py"
  # The bench extra asks for torch: bring the build that fits the machine first, so that pip
  # finds it satisfied instead of taking PyPI's default (the CUDA build on Linux, ~3 GB).
  [[ "$extras" == *bench* ]] && ensure_torch
  # setuptools warns at every editable install of a package beside its checkout's other
  # folders (hw2jax/ next to experiments/, tests/); the layout is deliberate, the warning noise.
  PYTHONWARNINGS="ignore:Editable installation" "$py" -m pip install -q -e "$target"
  mkdir -p "$stamp_dir"
  echo "hw2jax${extras:+[$extras]}" > "$stamp_dir/$want"
}

# The index of PyTorch's CPU-only wheels (PyPI's Linux wheels bundle CUDA).
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# ensure_torch: PyTorch in $PY, unless it is there: the CUDA build with an NVIDIA GPU, else the
# CPU build from PyTorch's CPU index (pip's own --find-links and indexes still apply).
ensure_torch() {
  [[ -n "${HW2JAX_SKIP_INSTALL:-}" ]] && return
  "$PY" -c 'import torch' >/dev/null 2>&1 && return
  local args=(torch)
  [[ "$(detect_extra)" != gpu ]] && args+=(--index-url "$TORCH_CPU_INDEX")
  echo "launch.sh: installing PyTorch (${args[*]}) with $("$PY" -V 2>&1)" >&2
  local log
  log="$(mktemp)"
  # Two retries, not pip's five: where the index cannot be reached but a local wheel can
  # (--find-links), pip's backoff on every package took 92 s, with two 12 s (a dry run of this
  # install on the project's CPU machine, 2026-12-07).
  if ! "$PY" -m pip install -q --timeout 60 --retries 2 "${args[@]}" >"$log" 2>&1; then
    local why
    why="$(grep -v '^ *$' "$log" | grep -iE 'error|could not|no matching' | tail -1 | cut -c1-160)"
    rm -f "$log"
    die "could not install PyTorch (${why:-pip failed}); install it into $PY yourself: $PY -m pip install ${args[*]}, or a local torch-*+cpu wheel, and rerun"
  fi
  rm -f "$log"
}

# needs_torch <args>: whether the experiment's flags read or write PyTorch checkpoints.
needs_torch() {
  local arg
  for arg in "$@"; do
    case "$arg" in --from_torch|--from_torch=*|--to_torch|--to_torch=*) return 0;; esac
  done
  return 1
}

# run_module <module> <args>: python -m <module> from the caller's folder, with the checkout on
# the path (experiments/ and benchmarks/ are run from it, not installed).
run_module() {
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m "$@"
}

extra="$(detect_extra)"
runtime=""                              # the jax extra of this machine (none on CPU)
[[ "$extra" != cpu ]] && runtime="$extra"
plus() { echo "${runtime:+$runtime,}$1"; }   # the runtime and one more extra

cmd="${1:-}"
case "$cmd" in
  ""|-h|--help|help)
    usage
    ;;
  install)
    install "$runtime"
    "$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
    ;;
  test)
    shift
    # The parity, export and benchmark tests compare against PyTorch: the suite is whole with it.
    install "$(plus test,bench)"
    cd "$REPO"                          # pytest's configuration and tests/ live here
    exec "$PY" -m pytest "$@"
    ;;
  bench)
    shift
    [[ -n "${1:-}" ]] || die "usage: ./launch.sh bench <name> [flags]; benchmarks: $(runnable benchmarks)"
    name="$1"; shift
    [[ " $(runnable benchmarks) " == *" $name "* ]] \
      || die "no benchmark '$name'; benchmarks: $(runnable benchmarks)"
    install "$(plus bench)"
    run_module "benchmarks.$name" "$@"
    ;;
  *)
    shift
    [[ " $(runnable experiments) " == *" $cmd "* ]] || { usage >&2; die "unknown command '$cmd'"; }
    install "$runtime"
    if needs_torch "$@"; then ensure_torch; fi
    run_module "experiments.$cmd" "$@"
    ;;
esac
