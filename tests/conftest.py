"""Fixtures every test gets: an isolated environment (no user data, cache, Kaggle inputs or
downloads) and a shared compilation cache for the CLI subprocesses. Helpers: tests/helpers.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))     # `import helpers`, from any folder

from helpers import write_npz, xla_cache_settings  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
  """No test reads the user's $HW2JAX_DATA or /kaggle/input, writes the user's cache, or
  downloads anything (tests that download set --download=auto with a fake kagglehub)."""
  monkeypatch.delenv("HW2JAX_DATA", raising=False)
  monkeypatch.setenv("HW2JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
  monkeypatch.setenv("HW2JAX_KAGGLE_INPUT", str(tmp_path_factory.mktemp("no-kaggle") / "input"))
  monkeypatch.setenv("HW2JAX_DOWNLOAD", "never")
  monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path_factory.mktemp("kagglehub")))
  # The CLI tests' subprocesses share compiled programs (compilation dominates them on CPU).
  for name, value in _xla_cache_settings(tmp_path_factory).items():
    monkeypatch.setenv(name.upper(), str(value))


def _xla_cache_settings(tmp_path_factory) -> dict:
  """JAX's persistent compilation cache, one for the whole session: xdist's workers (whose
  temporary folders sit side by side in the session's) and every subprocess they start compile
  the same small programs."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  path = base / "xla-cache"
  path.mkdir(exist_ok=True)
  return xla_cache_settings(path)


@pytest.fixture(autouse=True, scope="session")
def _xla_cache_in_process(tmp_path_factory):
  """The tests' own compilations use (and fill) the same cache as their subprocesses."""
  import jax
  for name, value in _xla_cache_settings(tmp_path_factory).items():
    jax.config.update(name, value if name.endswith(("_secs", "_size")) else str(value))


@pytest.fixture
def npz_path(tmp_path) -> Path:
  return write_npz(tmp_path / "intel_landscapes.v2.npz")


def pytest_collection_modifyitems(items):
  """End-to-end (`slow`) tests first, in their usual order: under xdist the short in-process
  tests then fill the end of the run, instead of one worker idling while the other finishes a
  minute-long subprocess test."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
