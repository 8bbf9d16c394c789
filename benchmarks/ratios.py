"""How the speed benchmarks say which framework was faster: one sentence for both directions,
so a slower JAX is never printed as '0.85x faster'."""

from __future__ import annotations


def jax_versus(jax_seconds: float, other_seconds: float, other: str = "PyTorch",
               digits: int = 2) -> str:
  """'JAX is 1.18x faster than PyTorch', 'JAX is 1.18x slower than PyTorch', or 'JAX is as
  fast as PyTorch' when the ratio rounds to 1. The number is always the larger time over the
  smaller, so it reads the same way in both directions."""
  if jax_seconds <= 0 or other_seconds <= 0:
    return f"JAX vs {other}: no ratio (a time of {min(jax_seconds, other_seconds):g} s)"
  ratio = max(jax_seconds, other_seconds) / min(jax_seconds, other_seconds)
  if f"{ratio:.{digits}f}" == f"{1:.{digits}f}":
    return f"JAX is as fast as {other}"
  word = "faster" if jax_seconds < other_seconds else "slower"
  return f"JAX is {ratio:.{digits}f}x {word} than {other}"
