"""Dropout for every site of a step from ONE random-bits draw: what the CNN's dropout costs on
CPU is mostly RNG kernels, and one draw of 16-bit words (two per 32-bit word) halves the random
words of `nn.Dropout` and replaces one RNG kernel per site by one per step (BUILD.md, the CNN
step profile: 0.70 ms against PyTorch's 1.59 ms of `bernoulli_`). Sites are named, so a mask
goes to its site whatever order the model applies them in.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping

import jax
import jax.numpy as jnp


def keep_masks(key: jax.Array, rate: float, shapes: Mapping[str, tuple[int, ...]]
               ) -> dict[str, jax.Array]:
  """{site: bool keep-mask of its shape}, drawn with one random-bits call (the bits are laid
  out in the order of `shapes`). Each element keeps with probability thr / 65536,
  thr = round((1 - rate) * 65536); `apply` rescales by that exact probability."""
  sizes = [math.prod(s) for s in shapes.values()]
  words = jax.random.bits(key, ((sum(sizes) + 1) // 2,), jnp.uint32)
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)
  keep = halves < keep_threshold(rate)
  offsets = [0] + list(itertools.accumulate(sizes))
  return {site: keep[a:b].reshape(s)
          for (site, s), a, b in zip(shapes.items(), offsets, offsets[1:])}


def keep_threshold(rate: float) -> int:
  return int(round((1.0 - rate) * 65536))


MAX_RATE = 1.0 - 1.0 / 65536     # the largest rate whose threshold keeps any unit


def apply(x: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
  """`x` with the dropped elements zeroed and the kept ones scaled so that E[output] = x."""
  return jnp.where(keep, x * (65536.0 / keep_threshold(rate)), 0.0).astype(x.dtype)
