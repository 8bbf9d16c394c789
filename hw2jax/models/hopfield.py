"""Modern Hopfield networks (Ramsauer et al. 2020): energy, CCCP retrieval, attention, Flax layers.

Notation of the homework (Q1): X (N, D) holds N stored patterns as rows, a state q is (D,) and
B states at once are the rows of Q (B, D). With lse(beta, z) = beta^-1 log sum_i exp(beta z_i):

  E(q)  = E1(q) + E2(q)
  E1(q) = 1/2 q^T q + beta^-1 log N + 1/2 M^2      (convex, Hessian I; M = max_i ||x_i||)
  E2(q) = -lse(beta, X q)                          (concave)

The CCCP step q <- X^T softmax(beta X q) never increases E; for all states at once it is
Q <- softmax(beta Q X^T) X, i.e. attention with K = V = X. Everything here is a pure function of
arrays (jit at the call site); `retrieve` is a `lax.scan`, `retrieve_until` a `lax.while_loop`.

The Flax modules follow the reference PyTorch library ml-jku/hopfield-layers (`Hopfield`,
`HopfieldPooling`, `HopfieldLayer`) and its knob names; they are always batch-first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn

# The reference library's LayerNorm eps and weight initialisation (normal, std 0.02).
NORM_EPS = 1e-5
INIT_STD = 0.02


# ----------------------------------------------------------------------------------------------
# Energy


def lse(beta, z: jax.Array, axis: int = -1) -> jax.Array:
  """beta^-1 log sum_i exp(beta z_i) over `axis`: (..., N) -> (...).

  `logsumexp` subtracts the maximum first, so large beta or large dot products never overflow.
  """
  return jax.nn.logsumexp(beta * z, axis=axis) / beta


def max_norm(X: jax.Array) -> jax.Array:
  """M = max_i ||x_i|| of the stored patterns X (N, D)."""
  return jnp.sqrt(jnp.max(jnp.sum(X * X, axis=-1)))


def energy_e1(X: jax.Array, q: jax.Array, beta) -> jax.Array:
  """E1(q) = 1/2 q^T q + beta^-1 log N + 1/2 M^2 for q (..., D) -> (...)."""
  n = X.shape[0]
  return 0.5 * jnp.sum(q * q, axis=-1) + math.log(n) / beta + 0.5 * max_norm(X) ** 2


def energy_e2(X: jax.Array, q: jax.Array, beta) -> jax.Array:
  """E2(q) = -lse(beta, X q) for q (..., D) -> (...)."""
  return -lse(beta, jnp.einsum("...d,nd->...n", q, X))


def energy(X: jax.Array, q: jax.Array, beta) -> jax.Array:
  """E(q) = E1(q) + E2(q) for q (..., D) -> (...)."""
  return energy_e1(X, q, beta) + energy_e2(X, q, beta)


def neg_e2_hessian(X: jax.Array, q: jax.Array, beta) -> jax.Array:
  """beta X^T (diag p - p p^T) X with p = softmax(beta X q): the Hessian of -E2 at q (D,), (D, D).

  Written out by hand (Q1), so that tests can compare it with `jax.hessian`.
  """
  p = jax.nn.softmax(beta * (X @ q))
  cov = jnp.diag(p) - jnp.outer(p, p)
  return beta * X.T @ cov @ X


# ----------------------------------------------------------------------------------------------
# Retrieval


def association(X: jax.Array, Q: jax.Array, beta) -> jax.Array:
  """softmax(beta Q X^T): (..., D) states against X (N, D) -> (..., N) weights on the patterns."""
  return jax.nn.softmax(beta * jnp.einsum("...d,nd->...n", Q, X), axis=-1)


def update(X: jax.Array, Q: jax.Array, beta) -> jax.Array:
  """One CCCP step for every state: q <- X^T softmax(beta X q); (..., D) -> (..., D)."""
  return jnp.einsum("...n,nd->...d", association(X, Q, beta), X)


def update_columns(X: jax.Array, Xi: jax.Array, beta) -> jax.Array:
  """The same step with states as columns, as Q1.3 writes it: X^T softmax(beta X Xi) with the
  softmax over patterns (axis 0); Xi (D, B) -> (D, B)."""
  return X.T @ jax.nn.softmax(beta * (X @ Xi), axis=0)


def attention(Q: jax.Array, K: jax.Array, V: jax.Array, beta,
              mask: jax.Array | None = None) -> jax.Array:
  """softmax(beta Q K^T) V: Q (..., L, d), K (..., S, d), V (..., S, e) -> (..., L, e).

  `mask` (broadcastable to (..., L, S)) is True where a stored pattern may be attended to.
  """
  return jnp.einsum("...ls,...se->...le", _softmax_scores(Q, K, beta, mask), V)


def _softmax_scores(Q, K, beta, mask):
  logits = beta * jnp.einsum("...ld,...sd->...ls", Q, K)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  return jax.nn.softmax(logits, axis=-1)


class Trajectory(NamedTuple):
  """States (T+1, ..., D) and energies (T+1, ...) of a retrieval, the initial ones first."""
  states: jax.Array
  energies: jax.Array


def retrieve(X: jax.Array, Q: jax.Array, beta, steps: int, *, trajectory: bool = False,
             step_fn=update):
  """`steps` CCCP updates of every state as one `lax.scan`; Q (..., D).

  Returns the final states (..., D), or (final states, `Trajectory` of every state and its
  energy) with `trajectory=True`. `step_fn(X, Q, beta)` replaces the update (the checks pass
  deliberately wrong ones to show that they fail).
  """
  if not trajectory:
    if steps == 0:
      return Q
    # The last update outside the loop: the Flax layer has the same program structure, so both
    # compile to bit-identical results.
    last, _ = jax.lax.scan(lambda q, _: (step_fn(X, q, beta), None), Q, length=steps - 1)
    return step_fn(X, last, beta)

  def step(q, _):
    return step_fn(X, q, beta), (q, energy(X, q, beta))

  final, (states, energies) = jax.lax.scan(step, Q, length=steps)
  states = jnp.concatenate([states, final[None]], axis=0)
  energies = jnp.concatenate([energies, energy(X, final, beta)[None]], axis=0)
  return final, Trajectory(states, energies)


def retrieve_until(X: jax.Array, Q: jax.Array, beta, *, eps: float, max_steps: int
                   ) -> tuple[jax.Array, jax.Array]:
  """CCCP updates until the association matrix changes by at most `eps`, or `max_steps`.

  Q (B, D) -> (final states (B, D), number of updates done). Like `update_steps_eps` of
  ml-jku/hopfield-layers, the change is the Frobenius norm of P_t - P_{t-1} over all states,
  P_t = softmax(beta Q_t X^T): the update that used P_t is the last one when it is small. One
  `lax.while_loop`: not reverse-differentiable (the Flax layers use a masked scan instead).
  """

  def cond(carry):
    _, _, t, delta = carry
    return (t < max_steps) & (delta > eps)

  def body(carry):
    q, p_prev, t, _ = carry
    p = association(X, q, beta)
    delta = jnp.where(t == 0, jnp.inf, jnp.sqrt(jnp.sum((p - p_prev) ** 2)))
    return p @ X, p, t + 1, delta.astype(jnp.float32)

  p0 = jnp.zeros(Q.shape[:-1] + X.shape[:1], Q.dtype)
  init = (Q, p0, jnp.int32(0), jnp.float32(jnp.inf))
  final, _, steps, _ = jax.lax.while_loop(cond, body, init)
  return final, steps


def iterate_states(Q: jax.Array, K: jax.Array, beta, *, steps_max: int | None, eps: float,
                   mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The reference library's state iteration xi <- softmax(beta xi K^T) K, per head.

  Q (B, H, L, d), K (B, H, S, d), `mask` broadcastable to (B, H, L, S) (True = attend). At most
  `steps_max` updates; a head stops once its association matrix changed by at most `eps` (the
  Frobenius norm over (L, S), maximum over the batch, as the reference). Returns the states
  (B, H, L, d) and the updates done per head (H,). An int `steps_max` runs a fixed-length scan
  that freezes converged heads (reverse-differentiable); None loops without a cap (forward only).
  """
  if steps_max is None and not eps > 0:
    raise ValueError("update_steps_max=None needs update_steps_eps > 0, or it never stops")
  num_heads = Q.shape[1]

  def change(p, p_prev):
    return jnp.max(jnp.sqrt(jnp.sum((p - p_prev) ** 2, axis=(2, 3))), axis=0)     # (H,)

  def body(carry, t):
    xi, p_prev, active, done = carry
    p = _softmax_scores(xi, K, beta, mask)
    active = active & ((t == 0) | (change(p, p_prev) > eps))
    new = jnp.einsum("bhls,bhsd->bhld", p, K)
    xi = jnp.where(active[None, :, None, None], new, xi)
    return (xi, p, active, done + active.astype(jnp.int32)), None

  p0 = jnp.zeros(Q.shape[:3] + K.shape[2:3], Q.dtype)
  carry = (Q, p0, jnp.ones((num_heads,), bool), jnp.zeros((num_heads,), jnp.int32))
  if steps_max is not None:
    if steps_max == 0:
      return Q, carry[3]
    (xi, _, _, done), _ = jax.lax.scan(body, carry, jnp.arange(steps_max))
    return xi, done

  def loop_body(c):
    inner, t = c
    inner, _ = body(inner, t)
    return inner, t + 1

  (xi, _, _, done), _ = jax.lax.while_loop(lambda c: jnp.any(c[0][2]), loop_body, (carry, 0))
  return xi, done


# ----------------------------------------------------------------------------------------------
# Flax layers


def _dense(features: int, use_bias: bool, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=nn.initializers.normal(INIT_STD),
                  name=name)


class _Knobs(nn.Module):
  """The knobs of ml-jku/hopfield-layers' `Hopfield`, shared by the three layers (the wrappers
  pass them through unchanged)."""
  hidden_size: int | None = None
  output_size: int | None = None
  pattern_size: int | None = None
  num_heads: int = 1
  scaling: float | None = None
  update_steps_max: int | None = 0
  update_steps_eps: float = 1e-4
  normalize_stored_pattern: bool = True
  normalize_stored_pattern_affine: bool = True
  normalize_state_pattern: bool = True
  normalize_state_pattern_affine: bool = True
  normalize_pattern_projection: bool = True
  normalize_pattern_projection_affine: bool = True
  stored_pattern_as_static: bool = False
  state_pattern_as_static: bool = False
  pattern_projection_as_static: bool = False
  dropout: float = 0.0
  input_bias: bool = True
  disable_out_projection: bool = False


class Hopfield(_Knobs):
  """Hopfield association of state patterns with stored patterns (ml-jku/hopfield-layers).

  Call with one array (B, S, D) used as stored, state and projection patterns (self-association),
  or a tuple (stored (B, S, Ds), state (B, L, D), projection (B, S, Dv)). Output (B, L, out).

  Each pattern set is optionally layer-normalised, then projected per head into the Hopfield
  space (or used as is when `*_as_static`), iterated `update_steps_max` times (0: one step, i.e.
  attention; None: until `update_steps_eps`), associated once more, dropped out (`dropout`, on
  the association matrix), applied to the projected patterns and projected out (unless
  `disable_out_projection`). `scaling` is beta: default 1/sqrt(head dim), or 1 when everything
  is static with no output projection (as the reference). With all patterns static, no
  normalisation and no output projection, one head computes exactly `update` (K = V = X).
  """

  def _head_dims(self, stored, state, projection) -> tuple[int, int]:
    static = [x.shape[-1] for x, s in ((stored, self.stored_pattern_as_static),
                                      (state, self.state_pattern_as_static)) if s]
    if self.hidden_size is not None:
      head_dim = self.hidden_size
    elif static:
      head_dim = static[0]
    else:
      if state.shape[-1] % self.num_heads:
        raise ValueError(f"state size {state.shape[-1]} is not divisible by num_heads "
                         f"{self.num_heads}; set hidden_size")
      head_dim = state.shape[-1] // self.num_heads
    if any(d != head_dim for d in static):
      raise ValueError(f"static stored/state patterns must have the head size {head_dim}, "
                       f"got {static}")
    if self.pattern_projection_as_static:
      pattern_dim = projection.shape[-1]
      if self.pattern_size is not None and self.pattern_size != pattern_dim:
        raise ValueError(f"static pattern projection has size {pattern_dim}, not pattern_size "
                         f"{self.pattern_size}")
    else:
      pattern_dim = self.pattern_size or head_dim
    return head_dim, pattern_dim

  def _heads(self, x, static: bool, size: int, name: str) -> jax.Array:
    """(B, T, D) -> (B, H, T, size): projected per head, or repeated for every head if static."""
    if static:
      return jnp.broadcast_to(x[:, None], (x.shape[0], self.num_heads) + x.shape[1:])
    y = _dense(self.num_heads * size, self.input_bias, name)(x)
    return einops.rearrange(y, "b t (h d) -> b h t d", h=self.num_heads)

  def _norm(self, x, enabled: bool, affine: bool, name: str):
    if not enabled:
      return x
    return nn.LayerNorm(epsilon=NORM_EPS, use_scale=affine, use_bias=affine, name=name)(x)

  @nn.compact
  def __call__(self, inputs, *, stored_pattern_padding_mask: jax.Array | None = None,
               deterministic: bool = True, return_association: bool = False):
    """`stored_pattern_padding_mask` (B, S) is True at padding, as in PyTorch. With
    `return_association` also returns the association matrix (B, H, L, S) and the updates done
    per head (H,)."""
    stored, state, projection = (inputs,) * 3 if not isinstance(inputs, (tuple, list)) else inputs
    head_dim, pattern_dim = self._head_dims(stored, state, projection)
    stored = self._norm(stored, self.normalize_stored_pattern,
                        self.normalize_stored_pattern_affine, "norm_stored_pattern")
    state = self._norm(state, self.normalize_state_pattern, self.normalize_state_pattern_affine,
                       "norm_state_pattern")
    projection = self._norm(projection, self.normalize_pattern_projection,
                            self.normalize_pattern_projection_affine, "norm_pattern_projection")
    q = self._heads(state, self.state_pattern_as_static, head_dim, "state_projection")
    k = self._heads(stored, self.stored_pattern_as_static, head_dim, "stored_projection")
    v = self._heads(projection, self.pattern_projection_as_static, pattern_dim,
                    "pattern_projection")
    mask = None
    if stored_pattern_padding_mask is not None:
      mask = ~stored_pattern_padding_mask[:, None, None, :]
    xi, steps = iterate_states(q, k, self.beta(head_dim), steps_max=self.update_steps_max,
                               eps=self.update_steps_eps, mask=mask)
    p = _softmax_scores(xi, k, self.beta(head_dim), mask)
    p = nn.Dropout(rate=self.dropout)(p, deterministic=deterministic)
    out = einops.rearrange(jnp.einsum("bhls,bhse->bhle", p, v), "b h l e -> b l (h e)")
    if not self.disable_out_projection:
      out = _dense(self.output_size or state.shape[-1], self.input_bias, "out_projection")(out)
    return (out, p, steps) if return_association else out

  def static_execution(self) -> bool:
    return (self.stored_pattern_as_static and self.state_pattern_as_static
            and self.pattern_projection_as_static and self.disable_out_projection)

  def beta(self, head_dim: int) -> float:
    if self.scaling is not None:
      return self.scaling
    return 1.0 if self.static_execution() else 1.0 / math.sqrt(head_dim)


_HOPFIELD_FIELDS = tuple(f for f in _Knobs.__dataclass_fields__ if f not in ("parent", "name"))


def _hopfield_of(module: nn.Module) -> Hopfield:
  return Hopfield(**{f: getattr(module, f) for f in _HOPFIELD_FIELDS}, name="hopfield")


class HopfieldPooling(_Knobs):
  """Pools a set of stored patterns (B, S, D) with `quantity` learned state patterns (queries).

  Input: stored patterns (B, S, D), or (stored, projection). Output (B, quantity * out): the
  pooled patterns flattened, as the reference. The learned query is (quantity, D), or (quantity,
  head dim) with `state_pattern_as_static`; `trainable=False` keeps it at its initialisation.
  """
  quantity: int = 1
  trainable: bool = True

  @nn.compact
  def __call__(self, inputs, *, stored_pattern_padding_mask: jax.Array | None = None,
               deterministic: bool = True):
    stored, projection = (inputs, inputs) if not isinstance(inputs, (tuple, list)) else inputs
    size = stored.shape[-1]
    if self.state_pattern_as_static:
      size = self.hidden_size or size
    query = self.param("pooling_weights", nn.initializers.normal(INIT_STD), (self.quantity, size))
    if not self.trainable:
      query = jax.lax.stop_gradient(query)
    state = jnp.broadcast_to(query, (stored.shape[0],) + query.shape)
    out = _hopfield_of(self)((stored, state, projection),
                             stored_pattern_padding_mask=stored_pattern_padding_mask,
                             deterministic=deterministic)
    return out.reshape(out.shape[0], -1)


class HopfieldLayer(_Knobs):
  """Looks state patterns (B, L, D) up in `quantity` learned stored patterns -> (B, L, out).

  The learned stored patterns (quantity, D) are also the pattern projection, unless
  `lookup_weights_as_separated` adds separate learned targets (quantity,
  `pattern_projection_size` or D), trainable or not (`lookup_targets_as_trainable`), as in the
  reference.
  """
  quantity: int = 1
  trainable: bool = True
  lookup_weights_as_separated: bool = False
  lookup_targets_as_trainable: bool = True
  pattern_projection_size: int | None = None

  @nn.compact
  def __call__(self, state: jax.Array, *, deterministic: bool = True):
    size = state.shape[-1]
    if self.stored_pattern_as_static:
      size = self.hidden_size or size
    init = nn.initializers.normal(INIT_STD)
    lookup = self.param("lookup_weights", init, (self.quantity, size))
    if not self.trainable:
      lookup = jax.lax.stop_gradient(lookup)
    target = lookup
    if self.lookup_weights_as_separated:
      target = self.param("target_weights", init,
                          (self.quantity, self.pattern_projection_size or size))
      if not self.lookup_targets_as_trainable:
        target = jax.lax.stop_gradient(target)
    batch = (state.shape[0],)
    stored = jnp.broadcast_to(lookup, batch + lookup.shape)
    projection = jnp.broadcast_to(target, batch + target.shape)
    return _hopfield_of(self)((stored, state, projection), deterministic=deterministic)
