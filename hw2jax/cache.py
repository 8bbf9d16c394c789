"""Where hw2jax keeps what it can rebuild: converted datasets and compiled XLA programs."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Mapping



def cache_root(environ: Mapping[str, str] | None = None) -> Path:
  """$HW2JAX_CACHE, else $XDG_CACHE_HOME/hw2jax, else ~/.cache/hw2jax (an empty $HOME, which
  Python reads as '/', counts as unset: the user's home from the password database)."""
  environ = os.environ if environ is None else environ
  if environ.get("HW2JAX_CACHE"):
    return Path(environ["HW2JAX_CACHE"])
  home = Path(environ["HOME"]) if environ.get("HOME") else Path(pwd.getpwuid(os.getuid()).pw_dir)
  return Path(environ.get("XDG_CACHE_HOME") or home / ".cache") / "hw2jax"


# The compiled-program cache's bound. Any bound also turns on JAX's file lock (the `filelock`
# package, a dependency for this): without it a process can read an entry that another one,
# compiling the same program (two runs of a sweep side by side), is still writing.
COMPILATION_CACHE_MAX_BYTES = 4 << 30


def enable_compilation_cache() -> None:
  """Persists compiled XLA programs (JAX's own cache) so that a rerun or a resume starts faster.

  $JAX_COMPILATION_CACHE_DIR wins if set, otherwise <cache_root>/xla; at most
  COMPILATION_CACHE_MAX_BYTES (least recently used entries go first) unless
  $JAX_COMPILATION_CACHE_MAX_SIZE says otherwise.
  """
  import jax
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
  if not os.environ.get("JAX_COMPILATION_CACHE_MAX_SIZE"):
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)
