"""The course CNN: exact parameter counts, shapes, BatchNorm and dropout behaviour, ablation fields."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from hw2jax.models import cnn, dropout
from hw2jax.train import trainer as trainer_lib


def init(model, batch=2, size=48):
  x = jnp.zeros((batch, size, size, 3), jnp.uint8)
  return jax.jit(lambda: model.init({"params": trainer_lib.prng_key(0)}, x, train=False))()


def apply(model, *args, **kwargs):
  """model.apply, jitted (eager conv ops compile one by one and are slow on CPU)."""
  if "mutable" in kwargs:
    kwargs["mutable"] = tuple(kwargs["mutable"])
  static = {k: v for k, v in kwargs.items() if k in ("train", "mutable")}
  dynamic = {k: v for k, v in kwargs.items() if k not in static}
  return jax.jit(lambda a, d: model.apply(*a, **d, **static))(args, dynamic)


def shapes(model, size=48):
  return jax.eval_shape(lambda: init(model, size=size))


@pytest.mark.parametrize("batch_norm, expected", [(False, 5_340_742), (True, 755_718)])
def test_exact_parameter_counts(batch_norm, expected):
  variables = shapes(cnn.CNN(batch_norm=batch_norm))
  assert trainer_lib.count_params(variables["params"]) == expected
  assert ("batch_stats" in variables) == batch_norm


def test_parameter_breakdown_matches_the_reference():
  p = shapes(cnn.CNN(batch_norm=False))["params"]
  per_layer = {k: trainer_lib.count_params(v) for k, v in p.items()}
  assert per_layer == {"conv0": 896, "conv1": 18_496, "conv2": 73_856, "fc0": 4_719_616,
                       "fc1": 524_800, "logits": 3_078}
  p = shapes(cnn.CNN(batch_norm=True))["params"]
  convs = sum(trainer_lib.count_params(p[f"conv{i}"]) for i in range(3))
  bns = sum(trainer_lib.count_params(p[f"bn{i}"]) for i in range(3))
  assert (convs, bns, trainer_lib.count_params(p["fc0"]), trainer_lib.count_params(p["bn_fc0"])) == (
      93_248, 448, 132_096, 2_048)


@pytest.mark.parametrize("kernel_size, maxpool, batch_norm, expected", [
    (5, True, True, 755_718 + (25 - 9) * (3 * 32 + 32 * 64 + 64 * 128)),
    (7, True, True, 755_718 + (49 - 9) * (3 * 32 + 32 * 64 + 64 * 128)),
    (3, False, True, 755_718),                           # GAP: pooling does not change the head
    (3, False, False, 5_340_742 + (48 * 48 - 6 * 6) * 128 * 1024),
])
def test_ablation_fields_change_the_architecture(kernel_size, maxpool, batch_norm, expected):
  model = cnn.CNN(batch_norm=batch_norm, kernel_size=kernel_size, maxpool=maxpool)
  assert trainer_lib.count_params(shapes(model)["params"]) == expected


TINY = dict(channels=(4, 8, 16), hidden=(32, 16))


@pytest.fixture(scope="module")
def tiny_bn():
  model = cnn.CNN(batch_norm=True, **TINY)
  return model, init(model)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_output_shapes(batch_norm, tiny_bn):
  model = cnn.CNN(batch_norm=batch_norm, **TINY)
  variables = tiny_bn[1] if batch_norm else init(model)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (5, 48, 48, 3)), jnp.uint8)
  logits = apply(model, variables, x, train=False)
  chex.assert_shape(logits, (5, 6))
  chex.assert_tree_all_finite(logits)


def test_batchnorm_stats_move_in_training_only(tiny_bn):
  model, variables = tiny_bn
  x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 48, 48, 3)), jnp.uint8)
  _, updates = apply(model, variables, x, train=True, rngs={"dropout": trainer_lib.prng_key(1)},
                     mutable=["batch_stats"])
  moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                                 updates["batch_stats"])
  assert all(jax.tree_util.tree_leaves(moved))
  # Eval mode uses the running statistics and cannot change them.
  out1 = apply(model, variables, x, train=False)
  out2 = apply(model, variables, x[:1], train=False)
  np.testing.assert_allclose(out1[:1], out2, rtol=1e-5, atol=1e-5)
  _, eval_updates = apply(model, variables, x, train=False, mutable=["batch_stats"])
  chex.assert_trees_all_equal(eval_updates["batch_stats"], variables["batch_stats"])


def test_masked_rows_do_not_touch_batchnorm_statistics(tiny_bn):
  model = cnn.CNN(batch_norm=True, dropout=0.0, **TINY)
  variables = tiny_bn[1]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 255, (6, 48, 48, 3)), jnp.uint8)
  junk = jnp.asarray(rng.integers(0, 255, (2, 48, 48, 3)), jnp.uint8)
  mask = jnp.array([1.0] * 6 + [0.0] * 2)
  _, a = apply(model, variables, jnp.concatenate([x, junk]), train=True, mask=mask,
                     mutable=["batch_stats"])
  _, b = apply(model, variables, x, train=True, mutable=["batch_stats"])
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training(tiny_bn):
  model = cnn.CNN(batch_norm=True, dropout=0.5, **TINY)
  variables = tiny_bn[1]
  x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3)), jnp.uint8)
  train = [apply(model, variables, x, train=True, rngs={"dropout": trainer_lib.prng_key(k)},
                 mutable=["batch_stats"])[0] for k in (1, 2)]
  assert not np.allclose(train[0], train[1])
  chex.assert_trees_all_equal(apply(model, variables, x, train=False),
                              apply(model, variables, x, train=False))
  # Without dropout, two training-mode calls agree (the difference above is dropout alone).
  still = cnn.CNN(batch_norm=True, dropout=0.0, **TINY)
  a, b = [apply(still, variables, x, train=True, rngs={"dropout": trainer_lib.prng_key(k)},
                mutable=["batch_stats"])[0] for k in (1, 2)]
  chex.assert_trees_all_equal(a, b)


def test_torch_init_bounds():
  p = init(cnn.CNN())["params"]
  for name, fan_in in (("conv0", 27), ("conv1", 288), ("fc0", 4608), ("logits", 512)):
    bound = 1 / np.sqrt(fan_in)
    for leaf in (p[name]["kernel"], p[name]["bias"]):
      assert float(jnp.max(jnp.abs(leaf))) <= bound
      if leaf.size >= 64:                                   # uniform: the bound is nearly reached
        assert float(jnp.max(jnp.abs(leaf))) > 0.9 * bound
  flax_p = init(cnn.CNN(init_scheme="flax"))["params"]
  assert float(jnp.abs(flax_p["conv0"]["bias"]).max()) == 0.0


def test_max_pool_2x2_equals_flax_max_pool():
  x = jax.random.normal(trainer_lib.prng_key(0), (2, 9, 12, 3))
  np.testing.assert_array_equal(cnn.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def batch_norm_formula(x, w, scale, bias, epsilon):
  n = w.sum()
  mean = (w * x).sum(0) / n
  var = (w * jnp.square(x - mean)).sum(0) / n
  return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var


@pytest.mark.parametrize("marked", [12, 9], ids=["all rows", "some rows"])
def test_batch_norm_gradient_equals_autodiff_of_its_formula(marked):
  """The written-out gradient, for every output's cotangent (the statistics' too) and for
  rows the mask leaves out (whose outputs still move with the others' statistics)."""
  keys = jax.random.split(trainer_lib.prng_key(0), 6)
  x = jax.random.normal(keys[0], (12, 5)) * 3 + 1
  w = (jnp.arange(12) < marked).astype(jnp.float32)[:, None]
  scale, bias = jax.random.normal(keys[1], (5,)), jax.random.normal(keys[2], (5,))
  cotangents = (jax.random.normal(keys[3], (12, 5)), jax.random.normal(keys[4], (5,)),
                jax.random.normal(keys[5], (5,)))
  outputs, vjp = jax.vjp(lambda *a: cnn.batch_norm_train(*a, 1e-5), x, w, scale, bias)
  expected_outputs, expected_vjp = jax.vjp(lambda *a: batch_norm_formula(*a, 1e-5),
                                           x, w, scale, bias)
  chex.assert_trees_all_close(outputs, expected_outputs, rtol=1e-6, atol=1e-6)
  (dx, _, d_scale, d_bias), (ex, _, e_scale, e_bias) = vjp(cotangents), expected_vjp(cotangents)
  chex.assert_trees_all_close((dx, d_scale, d_bias), (ex, e_scale, e_bias), rtol=1e-5,
                              atol=1e-5)


def test_dropout_masks_keep_the_right_fraction_and_preserve_the_mean():
  shapes = {"a": (64, 24, 24, 8), "b": (64, 100), "c": (3,)}
  masks = dropout.keep_masks(trainer_lib.prng_key(0), 0.1, shapes)
  assert {k: m.shape for k, m in masks.items()} == shapes
  assert all(m.dtype == jnp.bool_ for m in masks.values())
  big = masks["a"]
  assert float(big.mean()) == pytest.approx(0.9, abs=0.003)
  assert dropout.keep_threshold(0.1) / 65536 == pytest.approx(0.9, abs=1e-5)
  # Sites draw different bits: their masks are not copies of each other.
  assert not np.array_equal(np.asarray(big).ravel()[:6400], np.asarray(masks["b"]).ravel())
  x = jnp.ones(big.shape)
  assert float(dropout.apply(x, big, 0.1).mean()) == pytest.approx(1.0, abs=0.005)
  other = dropout.keep_masks(trainer_lib.prng_key(1), 0.1, shapes)["a"]
  assert not np.array_equal(big, other)