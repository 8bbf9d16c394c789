#!/usr/bin/env bash
# hw2jax bootstrap: installs what each command needs once (fast when already installed) and runs
#   ./launch.sh <experiment> [flags]      python -m experiments.<experiment> [flags], e.g. cnn --lr=0.01
#   ./launch.sh test [pytest args]        the test suite (adds the test extra)
#   ./launch.sh bench <name> [flags]      python -m benchmarks.<name> (adds the PyTorch baseline)
#   ./launch.sh install                   install the runtime only
# The jax extra follows the machine: NVIDIA GPU -> gpu, TPU -> tpu, otherwise CPU
# (override with HW2JAX_EXTRA=gpu|tpu|cpu). On Kaggle/Colab it installs into the running
# interpreter; elsewhere into ./.venv (override the interpreter with PYTHON=...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

die() { echo "launch.sh: $*" >&2; exit 2; }

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  echo "experiments: $(ls experiments/*.py | xargs -n1 basename | sed 's/\.py$//' | grep -v '^__' | tr '\n' ' ')"
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
  if in_notebook; then
    py="${PYTHON:-python3}"
    stamp_dir="${HW2JAX_CACHE:-$HOME/.cache/hw2jax}/launch-stamps"
  else
    if [[ ! -x .venv/bin/python ]]; then
      local base="${PYTHON:-python3}"
      command -v "$base" >/dev/null 2>&1 || die "$base not found; install Python >= 3.11"
      "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$("$base" -V 2>&1) is too old; hw2jax needs Python >= 3.11 (set PYTHON=python3.12)"
      "$base" -c 'import ensurepip, venv' >/dev/null 2>&1 \
        || die "$("$base" -V 2>&1) has no venv module; install it (Debian/Ubuntu: sudo apt install python3-venv, or python$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv) and rerun"
      echo "launch.sh: creating .venv with $("$base" -V 2>&1)" >&2
      "$base" -m venv .venv
    fi
    py=.venv/bin/python
    stamp_dir=.venv/.hw2jax-installed
  fi
  want="$( (cat pyproject.toml; echo "$extras"; "$py" -V 2>&1) | hash_of)"
  if [[ -f "$stamp_dir/$want" ]]; then
    PY="$py"; return
  fi
  local target="."
  [[ -n "$extras" ]] && target=".[$extras]"
  echo "launch.sh: installing hw2jax${extras:+[$extras]} with $("$py" -V 2>&1)" >&2
  local pip_args=(-q)
  # CPU-only machines: take PyTorch's CPU wheels (the default PyPI wheel bundles CUDA, ~3 GB).
  if [[ "$extras" == *bench* && "$(detect_extra)" == cpu ]]; then
    "$py" -c 'import torch' >/dev/null 2>&1 \
      || pip_args+=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  "$py" -m pip install "${pip_args[@]}" --upgrade pip >/dev/null
  # setuptools warns at every editable install of a package beside its checkout's other
  # folders (hw2jax/ next to experiments/, tests/); the layout is deliberate, the warning noise.
  PYTHONWARNINGS="ignore:Editable installation" "$py" -m pip install "${pip_args[@]}" -e "$target"
  mkdir -p "$stamp_dir"
  echo "hw2jax${extras:+[$extras]}" > "$stamp_dir/$want"
  PY="$py"
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
    install "$(plus test)"
    exec "$PY" -m pytest "$@"
    ;;
  bench)
    shift
    [[ -n "${1:-}" ]] || die "usage: ./launch.sh bench <name> [flags]; benchmarks: $(ls benchmarks/*.py | xargs -n1 basename | sed 's/\.py$//' | grep -v '^__' | tr '\n' ' ')"
    name="$1"; shift
    [[ -f "benchmarks/$name.py" ]] || die "no benchmark benchmarks/$name.py"
    install "$(plus bench)"
    exec "$PY" -m "benchmarks.$name" "$@"
    ;;
  *)
    shift
    [[ -f "experiments/$cmd.py" ]] || { usage >&2; die "unknown command '$cmd'"; }
    install "$runtime"
    exec "$PY" -m "experiments.$cmd" "$@"
    ;;
esac
