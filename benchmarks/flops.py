"""Achieved GFLOP/s beside the machine's own ceiling, for the speed benchmarks.

An epoch's arithmetic is counted once, by XLA's cost analysis of the JAX training step (each
padded width as often as the epoch trains on it), and both frameworks' GFLOP/s are that count
over their epoch time: the same work, so their ratio is the speed ratio. The ceiling is a
2048x2048 float32 matmul timed in each framework in the same run (its 2n^3 operations).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hw2jax.train import trainer as trainer_lib

MATMUL_N = 2048


def program_flops(fn: Callable, *args: Any) -> float:
  """The floating-point operations XLA counts in one call of `fn` compiled for `args`."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):        # older jaxlibs: one dict per program
    analysis = analysis[0]
  return float(analysis["flops"])


def epoch_flops(trainer: trainer_lib.Trainer, state, data) -> float:
  """The operations of one training epoch of `trainer` on `data` (a dataset or `Widths`): each
  width's step as XLA counts it, times the batches the epoch trains at that width."""
  widths = trainer_lib.Widths.of(data)
  plan = trainer.plan_epoch(state, widths, 0)
  counts = np.bincount(plan.width, minlength=len(widths))
  step = functools.partial(trainer_lib.train_step, loss_fn=trainer.loss_fn)
  mask = jnp.ones((trainer.batch_size,), bool)
  return sum(float(n) * program_flops(step, state, trainer_lib.gather(copy, plan.idx[0]), mask)
             for n, copy in zip(counts, widths) if n)


def ceilings(with_torch: bool) -> dict[str, float]:
  """{'jax': GFLOP/s, and 'torch' with `with_torch`} of the matmul, measured now."""
  out = {"jax": jax_matmul_gflops()}
  if with_torch:
    out["torch"] = torch_matmul_gflops()
  return out


def jax_matmul_gflops(n: int = MATMUL_N, repeats: int = 10) -> float:
  """GFLOP/s of an n x n float32 matmul in JAX on its default device (median of `repeats`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  return _gflops(lambda: matmul(a).block_until_ready(), n, repeats)


def torch_matmul_gflops(n: int = MATMUL_N, repeats: int = 10) -> float:
  """The same in PyTorch (on CUDA when available), with its default threads."""
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  a = torch.randn(n, n, device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def run():
    a @ a
    sync()

  run()
  return _gflops(run, n, repeats)


def _gflops(run: Callable[[], Any], n: int, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(times) / 1e9


def achieved(name: str, flops: float, seconds: float, ceiling: float) -> str:
  """'JAX 77.1 GFLOP/s (37% of its 209 GFLOP/s matmul)'."""
  rate = flops / seconds / 1e9
  return f"{name} {rate:.1f} GFLOP/s ({rate / ceiling:.0%} of its {ceiling:.0f} GFLOP/s matmul)"
