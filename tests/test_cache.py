"""Where hw2jax keeps what it can rebuild."""

from pathlib import Path

from hw2jax import cache


def test_cache_root_follows_the_environment(tmp_path):
  assert cache.cache_root({"HW2JAX_CACHE": str(tmp_path)}) == tmp_path
  assert cache.cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "hw2jax"
  assert cache.cache_root({}) == Path.home() / ".cache" / "hw2jax"
