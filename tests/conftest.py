"""Fixtures every test gets: an isolated environment (no user data, cache, Kaggle inputs or
downloads) and a shared compilation cache for the CLI subprocesses. Helpers: tests/helpers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))     # `import helpers`, from any folder

from helpers import write_npz  # noqa: E402


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
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(_shared_xla_cache(tmp_path_factory)))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def _shared_xla_cache(tmp_path_factory) -> Path:
  path = tmp_path_factory.getbasetemp() / "xla-cache"
  path.mkdir(exist_ok=True)
  return path


@pytest.fixture
def npz_path(tmp_path) -> Path:
  return write_npz(tmp_path / "intel_landscapes.v2.npz")
