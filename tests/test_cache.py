"""Where hw2jax keeps what it can rebuild: $HW2JAX_CACHE, $XDG_CACHE_HOME or the user's home."""

import os
import pwd
import subprocess
import sys
from pathlib import Path

from hw2jax import cache


def test_cache_root_follows_the_environment(tmp_path):
  assert cache.cache_root({"HW2JAX_CACHE": str(tmp_path)}) == tmp_path
  assert cache.cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "hw2jax"
  assert cache.cache_root({"HOME": str(tmp_path)}) == tmp_path / ".cache" / "hw2jax"
  home = Path(pwd.getpwuid(os.getuid()).pw_dir)       # HOME unset, or empty (Python's '/')
  assert cache.cache_root({}) == cache.cache_root({"HOME": ""}) == home / ".cache" / "hw2jax"


def test_an_empty_home_puts_the_cache_in_the_users_home_not_the_filesystem_root(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("HW2JAX_CACHE", "XDG_CACHE_HOME")}
  env.update(HOME="", PYTHONPATH=str(Path(cache.__file__).parents[1]))
  code = "from hw2jax import cache; print(cache.cache_root())"
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
  home = Path(pwd.getpwuid(os.getuid()).pw_dir)
  assert out.stdout.strip() == str(home / ".cache" / "hw2jax"), out.stderr
