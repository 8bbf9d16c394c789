"""Where hw2jax keeps what it can rebuild: converted datasets and compiled XLA programs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
  """$HW2JAX_CACHE, else $XDG_CACHE_HOME/hw2jax, else ~/.cache/hw2jax."""
  environ = os.environ if environ is None else environ
  if environ.get("HW2JAX_CACHE"):
    return Path(environ["HW2JAX_CACHE"])
  return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hw2jax"


def enable_compilation_cache() -> None:
  """Persists compiled XLA programs (JAX's own cache) so that a rerun or a resume starts faster.

  $JAX_COMPILATION_CACHE_DIR wins if set; otherwise <cache_root>/xla.
  """
  import jax
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
