"""The Hopfield model: energy and its parts, CCCP retrieval (scan / while), the attention
identity, the Flax layers; wrong Hessians are told apart from the right one."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hw2jax.models import hopfield as hf
from hw2jax.train import trainer as trainer_lib


def key(i=0):
  return trainer_lib.prng_key(i)


def store(n=16, d=8, b=5, seed=0):
  kx, kq = jax.random.split(key(seed))
  return jax.random.normal(kx, (n, d)), jax.random.normal(kq, (b, d))


STATIC = dict(stored_pattern_as_static=True, state_pattern_as_static=True,
              pattern_projection_as_static=True, normalize_stored_pattern=False,
              normalize_stored_pattern_affine=False, normalize_state_pattern=False,
              normalize_state_pattern_affine=False, normalize_pattern_projection=False,
              normalize_pattern_projection_affine=False, disable_out_projection=True)


# ----------------------------------------------------------------------------------------------
# Energy


def test_lse_and_energy_are_stable_for_large_beta_and_dot_products():
  z = jnp.array([1e4, 1e4 - 1.0, -1e4])
  betas = jnp.array([1e-3, 1.0, 1e3])
  got = jax.jit(jax.vmap(hf.lse, in_axes=(0, None)))(betas, z)
  for beta, value in zip((1e-3, 1.0, 1e3), got):
    np.testing.assert_allclose(float(value), 1e4 + math.log(1.0 + math.exp(-beta)) / beta,
                               rtol=1e-6)
  X = 100.0 * jnp.eye(4)
  q = 100.0 * jnp.ones(4)
  e = jax.jit(hf.energy)(X, q, 1e3)
  assert np.isfinite(float(e))
  # E(q) = 1/2 |q|^2 + log N / beta + 1/2 M^2 - lse: here lse = 1e4 + log(4) / beta exactly.
  np.testing.assert_allclose(float(e), 0.5 * 4e4 + 0.5 * 1e4 - 1e4, rtol=1e-6)


def test_energy_parts_match_their_definitions():
  X, Q = store()
  beta = 0.7
  Xn, Qn = np.asarray(X, np.float64), np.asarray(Q, np.float64)
  m2 = np.max(np.sum(Xn ** 2, axis=1))
  e1 = 0.5 * np.sum(Qn ** 2, axis=1) + np.log(len(Xn)) / beta + 0.5 * m2
  e2 = -np.log(np.sum(np.exp(beta * Qn @ Xn.T), axis=1)) / beta
  parts = jax.jit(lambda X, Q: (hf.energy_e1(X, Q, beta), hf.energy_e2(X, Q, beta),
                                 hf.energy(X, Q, beta), hf.energy(X, Q[0], beta)))
  got_e1, got_e2, got_e, single = parts(X, Q)
  np.testing.assert_allclose(got_e1, e1, rtol=1e-5)
  np.testing.assert_allclose(got_e2, e2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_e, e1 + e2, rtol=1e-5, atol=1e-5)
  chex.assert_shape(single, ())


def test_wrong_hessians_are_told_apart():
  """E2 itself is not convex, and the formula without the -pp^T term is not its Hessian."""
  X, Q = store(n=6, d=4)
  beta = 1.3

  @jax.jit
  @jax.vmap
  def measure(q):
    h = jax.hessian(lambda v: hf.energy_e2(X, v, beta))(q)
    p = jax.nn.softmax(beta * X @ q)
    wrong = beta * X.T @ jnp.diag(p) @ X
    return jnp.linalg.eigvalsh(h)[0], jnp.max(jnp.abs(-h - wrong))

  min_eig, diff = measure(Q)
  assert float(jnp.min(min_eig)) < -1e-2
  assert float(jnp.min(diff)) > 1e-2


# ----------------------------------------------------------------------------------------------
# Retrieval


@jax.jit
def _scan_and_loop(X, Q, beta):
  final, traj = hf.retrieve(X, Q, beta, 4, trajectory=True)
  loop = Q
  for _ in range(4):
    loop = hf.update(X, loop, beta)
  return final, traj, loop, hf.retrieve(X, Q, beta, 4)


def test_retrieve_is_repeated_update_with_trajectory_and_energies():
  X, Q = store()
  final, traj, loop, plain = _scan_and_loop(X, Q, 0.5)
  chex.assert_shape(traj.states, (5, 5, 8))
  chex.assert_shape(traj.energies, (5, 5))
  np.testing.assert_allclose(final, loop, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(plain, final, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(traj.states[0], Q)
  np.testing.assert_array_equal(traj.states[-1], final)
  np.testing.assert_allclose(traj.energies, hf.energy(X, traj.states, 0.5), rtol=1e-5)
  e = np.asarray(traj.energies)
  assert np.all(np.diff(e, axis=0) <= 1e-5 * (1 + np.abs(e[:-1])))


_until = jax.jit(hf.retrieve_until, static_argnames=("max_steps",))
_retrieve = jax.jit(hf.retrieve, static_argnames=("steps", "trajectory"))


def test_while_loop_variant_agrees_with_scan():
  X, Q = store()
  capped, steps = _until(X, Q, 0.5, eps=0.0, max_steps=6)
  assert int(steps) == 6
  np.testing.assert_allclose(capped, _retrieve(X, Q, 0.5, steps=6), rtol=1e-6, atol=1e-6)
  converged, steps = _until(X, Q, 0.5, eps=1e-5, max_steps=500)
  assert 1 < int(steps) < 500
  np.testing.assert_allclose(converged, _retrieve(X, Q, 0.5, steps=int(steps)), rtol=1e-5,
                             atol=1e-5)
  # Converged: one more update hardly moves the states (a fixed point).
  np.testing.assert_allclose(hf.update(X, converged, 0.5), converged, atol=1e-4)


def test_well_separated_patterns_are_retrieved_in_one_step_from_masked_and_noisy_queries():
  rng = np.random.default_rng(0)
  X = rng.choice([-1.0, 1.0], (8, 64)).astype(np.float32)
  masked = X.copy()
  masked[:, 32:] = 0.0
  flips = rng.random(X.shape) < 0.2
  noisy = np.where(flips, -X, X)
  for queries in (masked, noisy):
    out = hf.update(jnp.asarray(X), jnp.asarray(queries), 1.0)
    np.testing.assert_allclose(out, X, atol=1e-4)


def test_stored_patterns_are_fixed_points_and_small_beta_averages():
  rng = np.random.default_rng(1)
  X = jnp.asarray(rng.choice([-1.0, 1.0], (6, 32)).astype(np.float32))
  np.testing.assert_allclose(hf.update(X, X, 2.0), X, atol=1e-6)
  # beta -> 0: every query goes to the global fixed point, the mean of the patterns.
  mean = jnp.mean(X, axis=0)
  np.testing.assert_allclose(hf.update(X, X, 1e-6), jnp.broadcast_to(mean, X.shape), atol=1e-3)
  np.testing.assert_allclose(hf.update(X, mean, 1e-6), mean, atol=1e-3)


def test_matrix_and_column_forms_equal_attention():
  X, Q = store(d=16)

  @jax.jit
  def forms(X, Q):
    beta = 1.0 / 4.0
    dpa = jax.nn.dot_product_attention(Q[None, :, None], X[None, :, None], X[None, :, None])
    return (hf.update(X, Q, beta), hf.attention(Q, X, X, beta),
            hf.update_columns(X, Q.T, beta).T, dpa[0, :, 0], hf.update(X, Q[2], beta))

  a, att, cols, dpa, row = forms(X, Q)
  np.testing.assert_allclose(a, att, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(a, cols, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a, dpa, rtol=1e-5, atol=1e-6)
  # One row at a time is the same as all rows at once.
  np.testing.assert_allclose(row, a[2], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Flax layers


def _apply(module, variables, inputs, **kwargs):
  return jax.jit(lambda v, x: module.apply(v, x, **kwargs))(variables, inputs)


def _init(module, inputs, seed=0):
  """(variables, output) of module.init_with_output, jitted: one compilation for both (eager
  Flax runs op by op, which is slow on CPU)."""
  out, variables = jax.jit(module.init_with_output)(key(seed), inputs)
  return variables, out


@pytest.mark.parametrize("steps_max", [0, 3])
def test_static_hopfield_equals_the_pure_retrieval_exactly(steps_max):
  X, Q = store()
  module = hf.Hopfield(scaling=0.7, update_steps_max=steps_max, update_steps_eps=0.0, **STATIC)
  inputs = (X[None], Q[None], X[None])
  assert not jax.tree_util.tree_leaves(jax.eval_shape(lambda: module.init(key(), inputs)))
  out = _apply(module, {}, inputs)[0]
  pure = _retrieve(X, Q, 0.7, steps=steps_max + 1)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(pure))


def test_static_hopfield_stops_like_update_steps_eps():
  X, Q = store(seed=1)          # one whose retrieval converges (26 steps) well inside the cap
  module = hf.Hopfield(scaling=0.5, update_steps_max=99, update_steps_eps=1e-4, **STATIC)
  inputs = (X[None], Q[None], X[None])
  out, assoc, steps = _apply(module, {}, inputs, return_association=True)
  expected, taken = _until(X, Q, 0.5, eps=1e-4, max_steps=100)
  assert int(steps[0]) + 1 == int(taken) < 100
  np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-6)
  chex.assert_shape(assoc, (1, 1, 5, 16))
  unbounded = hf.Hopfield(scaling=0.5, update_steps_max=None, update_steps_eps=1e-4, **STATIC)
  np.testing.assert_allclose(_apply(unbounded, {}, inputs)[0], expected, rtol=1e-6, atol=1e-6)


def test_default_scaling_is_one_when_static_else_inverse_sqrt_head_dim():
  assert hf.Hopfield(**STATIC).beta(16) == 1.0
  assert hf.Hopfield().beta(16) == 0.25
  assert hf.Hopfield(scaling=3.0).beta(16) == 3.0


def test_projected_multi_head_hopfield_matches_a_hand_computation():
  kx, kq = jax.random.split(key(3))
  stored, state = jax.random.normal(kx, (2, 7, 6)), jax.random.normal(kq, (2, 3, 6))
  module = hf.Hopfield(num_heads=2, hidden_size=4, pattern_size=5, output_size=9)
  variables, out = _init(module, (stored, state, stored), 4)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
  chex.assert_shape(p["state_projection"]["kernel"], (6, 8))
  chex.assert_shape(p["pattern_projection"]["kernel"], (6, 10))
  chex.assert_shape(p["out_projection"]["kernel"], (10, 9))
  chex.assert_shape(out, (2, 3, 9))

  def norm(x, scope):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + hf.NORM_EPS) * scope["scale"] + scope["bias"]

  def dense(x, scope):
    return x @ scope["kernel"] + scope["bias"]

  stored, state = np.asarray(stored, np.float64), np.asarray(state, np.float64)
  q = dense(norm(state, p["norm_state_pattern"]), p["state_projection"])
  k = dense(norm(stored, p["norm_stored_pattern"]), p["stored_projection"])
  v = dense(norm(stored, p["norm_pattern_projection"]), p["pattern_projection"])
  heads = []
  for h in range(2):
    qh, kh, vh = q[..., 4 * h:4 * h + 4], k[..., 4 * h:4 * h + 4], v[..., 5 * h:5 * h + 5]
    logits = np.einsum("bld,bsd->bls", qh, kh) / 2.0           # beta = 1/sqrt(head dim 4)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    heads.append(np.einsum("bls,bse->ble", w / w.sum(-1, keepdims=True), vh))
  expected = dense(np.concatenate(heads, axis=-1), p["out_projection"])
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_padding_mask_equals_leaving_the_patterns_out():
  X, Q = store(n=10)
  module = hf.Hopfield(scaling=0.5, update_steps_max=2, update_steps_eps=0.0, **STATIC)
  padded = jnp.concatenate([X, 50.0 * jnp.ones((4, 8))])
  mask = jnp.arange(14)[None] >= 10
  out = _apply(module, {}, (padded[None], Q[None], padded[None]),
               stored_pattern_padding_mask=mask)
  np.testing.assert_allclose(out[0], _retrieve(X, Q, 0.5, steps=3), rtol=1e-5, atol=1e-5)


def test_dropout_acts_on_the_association_matrix_only_in_training():
  X, Q = store(n=6)
  module = hf.Hopfield(dropout=0.5, scaling=0.5, **STATIC)
  inputs = (X[None], Q[None], X[None])
  clean = _apply(module, {}, inputs)
  np.testing.assert_array_equal(_apply(module, {}, inputs, deterministic=True), clean)
  dropped = jax.jit(lambda x: module.apply({}, x, deterministic=False,
                                           rngs={"dropout": key(5)}))(inputs)
  assert not np.allclose(dropped, clean)
  assoc = jax.nn.softmax(0.5 * Q @ X.T)
  # Each output is a sum of kept, rescaled association weights times patterns.
  kept = jnp.linalg.lstsq(X.T, dropped[0].T)[0].T
  assert np.all(np.isclose(kept, 0.0, atol=1e-3) | np.isclose(kept, 2 * assoc, atol=1e-3))


def test_hopfield_pooling_learns_its_query_through_the_iterations_unless_frozen():
  """Gradients flow through the iterated association (a masked scan with update_steps_eps),
  into every parameter, except into a frozen query."""
  stored = jax.random.normal(key(8), (3, 7, 6))
  knobs = dict(quantity=2, num_heads=2, update_steps_max=3, update_steps_eps=1e-4)
  pool, frozen = hf.HopfieldPooling(**knobs), hf.HopfieldPooling(**knobs, trainable=False)
  variables, out = _init(pool, stored, 9)
  chex.assert_shape(variables["params"]["pooling_weights"], (2, 6))
  chex.assert_shape(out, (3, 12))
  grad = lambda m, v: jax.grad(lambda v: jnp.sum(m.apply(v, stored) ** 2))(v)
  learned, fixed = jax.jit(lambda v: (grad(pool, v), grad(frozen, v)))(variables)
  for g in jax.tree_util.tree_leaves(learned):
    assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)
  np.testing.assert_array_equal(fixed["params"]["pooling_weights"], 0.0)


def test_hopfield_layer_looks_states_up_in_learned_patterns():
  state = jax.random.normal(key(10), (2, 5, 6))
  layer = hf.HopfieldLayer(quantity=11, output_size=3)
  out, variables = jax.eval_shape(lambda: layer.init_with_output(key(11), state))
  chex.assert_shape(variables["params"]["lookup_weights"], (11, 6))
  assert "target_weights" not in variables["params"]
  chex.assert_shape(out, (2, 5, 3))
  separated = hf.HopfieldLayer(quantity=11, lookup_weights_as_separated=True,
                               pattern_projection_size=4)
  variables, out = _init(separated, state, 12)
  chex.assert_shape(variables["params"]["lookup_weights"], (11, 6))
  chex.assert_shape(variables["params"]["target_weights"], (11, 4))
  chex.assert_shape(out, (2, 5, 6))
  assert np.all(np.isfinite(out))


def test_static_patterns_must_fit_the_head_size():
  X, Q = store()
  module = hf.Hopfield(hidden_size=4, **STATIC)
  with pytest.raises(ValueError, match="head size 4"):
    module.init(key(), (X[None], Q[None], X[None]))
