"""The optimizers of the course's runs, and where a run's learning rate lives.

One function builds an optimizer with its rate (`make_optimizer`); the rate is an injected
hyper-parameter of the optimizer state, so it is checkpointed with the run, and
`learning_rate(state)` is the one place it is read back. The transformation itself holds no
rate and is cached: runs that differ only in the rate share one compiled step.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The rates the optimizer state holds as themselves (it keeps the rate in float32, under
# JAX_ENABLE_X64 too): smaller ones are 0 or subnormal there (which some devices flush to 0),
# larger ones inf.
RATE_RANGE = (float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max))


class Optimizer(NamedTuple):
  """An optax transformation and the learning rate a run starts at.

  `tx` depends on (name, l2_decay, update_scale) only and is cached, so runs that differ in the
  rate share it, and with it one compiled step. The rate is an injected hyper-parameter: `init`
  puts it into the optimizer state, where it is checkpointed, and `learning_rate(state)` is the
  one place it is read back.
  """
  tx: optax.GradientTransformation
  learning_rate: float

  def init(self, params) -> optax.OptState:
    state = self.tx.init(params)
    rate = jnp.asarray(self.learning_rate, jnp.float32)
    return state._replace(hyperparams={**state.hyperparams, "learning_rate": rate})


def make_optimizer(name: str, learning_rate: float, l2_decay: float = 0.0,
                   update_scale: Callable[[Any], Any] | None = None) -> Optimizer:
  """'sgd' (no momentum) or 'adam' at `learning_rate`; `l2_decay` is added to the gradient like
  PyTorch's weight_decay.

  `update_scale(tree)` -> a tree of the same structure of factors that multiply each parameter's
  final update (a hashable function, e.g. `hw2jax.models.seq2seq.torch_update_scale`).
  """
  if name not in ("sgd", "adam"):
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
  return Optimizer(_optimizer(name, float(l2_decay), update_scale), float(learning_rate))


def rate_check(rate: float, flag: str = "--lr") -> tuple[bool, str]:
  """`records.require`'s check that a positive, finite `rate` is a normal float32 number: 1e-300
  would train at 0 (nothing learnt) and 1e39 at inf, both under the label of the rate asked for.
  Other values pass (the positivity check that precedes it names them)."""
  low, high = RATE_RANGE
  real = isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0
  ok = not real or low <= rate <= high
  return ok, (f"{flag}={rate} is {'0 or subnormal' if real and rate < low else 'inf'} in "
              f"float32, the dtype the rate trains in; use a rate in [{low:.4g}, {high:.4g}]")


def learning_rate(state) -> float | None:
  """The rate a TrainState trains at (its `make_optimizer` state's hyper-parameter), None for
  an optimizer without one."""
  hyperparams = getattr(state.opt_state, "hyperparams", None) or {}
  if "learning_rate" not in hyperparams:
    return None
  return float(jax.device_get(hyperparams["learning_rate"]))


@functools.lru_cache(maxsize=None)
def _optimizer(name: str, l2_decay: float, update_scale) -> optax.GradientTransformation:
  """The rate-free transformation: its placeholder rate 0.0 is replaced by `Optimizer.init`."""
  base = optax.sgd if name == "sgd" else optax.adam

  def build(learning_rate):
    parts = [optax.add_decayed_weights(l2_decay)] if l2_decay else []
    tx = optax.chain(*parts, base(learning_rate))
    return tx if update_scale is None else _scaled_by(tx, update_scale)

  return optax.inject_hyperparams(build)(learning_rate=0.0)


def _scaled_by(inner: optax.GradientTransformation, update_scale: Callable[[Any], Any]
               ) -> optax.GradientTransformation:
  """`inner` with its updates multiplied by `update_scale(updates)`; its state is `inner`'s
  own, so checkpoints written without the scale still restore."""
  def update(updates, state, params=None):
    updates, state = inner.update(updates, state, params)
    return jax.tree_util.tree_map(lambda u, s: u * s, updates, update_scale(updates)), state

  return optax.GradientTransformation(inner.init, update)
