"""The trainer: batch plans, optimizers, epoch runners (scan and loop agree), evaluation, padded
widths; on a tiny CNN (fixtures in tests/train/conftest.py)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from helpers import TINY_CNN as TINY
from helpers import new_cnn_state as new_state
from hw2jax.models import cnn
from hw2jax.train import optimizer as optimizer_lib, trainer as trainer_lib


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("n, batch_size", [(100, 8), (96, 8), (5, 8), (1, 1)])
def test_batch_plan_uses_every_example_once(n, batch_size):
  idx, mask = trainer_lib.batch_plan(jax.random.PRNGKey(3), n, batch_size)
  nb = -(-n // batch_size)
  chex.assert_shape((idx, mask), (nb, batch_size))
  used = np.asarray(idx)[np.asarray(mask)]
  assert sorted(used.tolist()) == list(range(n))
  assert int(mask.sum()) == n and bool(mask[:-1].all())


def test_batch_plan_is_a_seeded_permutation():
  a, _ = trainer_lib.batch_plan(jax.random.PRNGKey(0), 50, 8)
  b, _ = trainer_lib.batch_plan(jax.random.PRNGKey(0), 50, 8)
  c, _ = trainer_lib.batch_plan(jax.random.PRNGKey(1), 50, 8)
  seq, _ = trainer_lib.batch_plan(None, 50, 8)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a, c)
  assert np.asarray(seq).ravel()[:50].tolist() == list(range(50))


def test_resolve_mode():
  assert trainer_lib.resolve_mode("auto", "cpu") == "loop"
  assert trainer_lib.resolve_mode("auto", "gpu") == "scan"
  assert trainer_lib.resolve_mode("auto", "tpu") == "scan"
  assert trainer_lib.resolve_mode("scan", "cpu") == "scan"
  with pytest.raises(ValueError):
    trainer_lib.resolve_mode("fast")


def test_the_projects_random_bits_are_xlas_threefry_of_an_rbg_key():
  """Keys are JAX's 'rbg' keys (a checkpoint's key data from before reads as one); the bits are
  XLA's RngBitGenerator with ThreeFry, ~3x faster on CPU than its default, Philox (BUILD.md)."""
  old = jax.random.key_data(jax.random.key(42, impl="rbg"))
  key = jax.random.fold_in(jax.random.wrap_key_data(old, impl=trainer_lib.PRNG_IMPL), 7)
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(
      jax.random.fold_in(jax.random.key(42, impl="rbg"), 7)))
  bits = jax.random.bits(key, (4096,), jnp.uint32)
  threefry = jax.lax.rng_bit_generator(jax.random.key_data(key), (4096,), jnp.uint32,
                                       algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)[1]
  np.testing.assert_array_equal(bits, threefry)
  assert not np.array_equal(bits, jax.random.bits(jax.random.wrap_key_data(
      jax.random.key_data(key), impl="rbg"), (4096,), jnp.uint32))
  u = np.asarray(jax.random.uniform(key, (100_000,)))
  assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002


def test_cpu_compiler_options_apply_on_cpu_only():
  assert trainer_lib.compiler_options("gpu") is None
  assert trainer_lib.compiler_options("tpu") is None
  options = trainer_lib.compiler_options("cpu")
  assert options in (None, trainer_lib.CPU_COMPILER_OPTIONS)   # None: this XLA lacks the option
  if options is not None:
    options["mutated"] = 1                       # a copy: the next trainer gets the defaults
    assert trainer_lib.compiler_options("cpu") == trainer_lib.CPU_COMPILER_OPTIONS


@pytest.mark.parametrize("batch_norm, atol", [(False, 1e-6), (True, 2e-4)])
def test_cpu_compiler_options_change_a_step_by_float_rounding_only(data, batch_norm, atol):
  """The CPU default hands convolutions from YNNPACK back to Eigen: other kernels, the same
  step. With BatchNorm, channels of near-constant tiny images have tiny variances whose
  normalisation magnifies the kernels' last-bit differences (updates here are ~1e-3)."""
  if trainer_lib.compiler_options("cpu") is None:
    pytest.skip("this XLA:CPU has no YNNPACK fusion option")
  model = cnn.CNN(batch_norm=batch_norm, **TINY)
  batch = trainer_lib.gather(data["train"], jnp.arange(8, dtype=jnp.int32))
  step = functools.partial(trainer_lib.train_step, loss_fn=cnn.loss_fn)
  states = [jax.jit(step, compiler_options=opts)(new_state(model), batch, jnp.ones((8,), bool))[0]
            for opts in (None, trainer_lib.compiler_options("cpu"))]
  chex.assert_trees_all_close(states[0].params, states[1].params, atol=atol, rtol=0)
  chex.assert_trees_all_close(states[0].batch_stats, states[1].batch_stats, atol=atol, rtol=0)


def test_cpu_compiler_options_keep_convolutions_float32_exact():
  """Both convolution back ends are within float32 rounding of a float64 reference."""
  rng = np.random.default_rng(0)
  x = rng.random((8, 24, 24, 32), np.float32)
  w = rng.standard_normal((3, 3, 32, 64)).astype(np.float32)
  padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = sum(np.einsum("bhwc,co->bhwo", padded[:, i:i + 24, j:j + 24], w[i, j].astype(np.float64))
            for i in range(3) for j in range(3))
  conv = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  for opts in (None, trainer_lib.compiler_options("cpu")):
    out = np.asarray(jax.jit(conv, compiler_options=opts)(x, w))
    assert np.abs(out - ref).max() < 2e-6 * np.abs(ref).max()


# ---------------------------------------------------------------- learning


def test_steps_on_a_fixed_batch_lower_the_loss(model, data):
  state = new_state(model, lr=0.3)
  batch = trainer_lib.gather(data["train"], jnp.arange(8, dtype=jnp.int32))
  step = jax.jit(functools.partial(trainer_lib.train_step, loss_fn=cnn.loss_fn))
  losses = []
  for _ in range(10):
    state, sums = step(state, batch, jnp.ones((8,), bool))
    losses.append(float(sums["loss"] / sums["count"]))
  assert losses[-1] < 0.6 * losses[0], losses


def test_short_run_learns_the_synthetic_task(data):
  vanilla = cnn.CNN(init_scheme="flax", **TINY)
  trainer = trainer_lib.Trainer(cnn.loss_fn, cnn.eval_fn, batch_size=8,
                             eval_batch_size=16, epoch_mode="loop")
  state = new_state(vanilla, lr=0.003, optimizer="adam")
  for epoch in range(10):
    state, metrics = trainer.train_epoch(state, data["train"], epoch)
    assert metrics["count"] == 100                      # every example, every epoch
  val = trainer.evaluate(state, data["val"])
  assert val["accuracy"] >= 0.9, val
  assert val["count"] == 30


def test_the_step_is_traced_once_for_two_learning_rates(model, data):
  # Two learning rates, two epochs each, on one trainer: the loss is traced once for the shape
  # of its sums and once for the step (assert_max_traces would raise on a third).
  def loss_fn(*args):
    return cnn.loss_fn(*args)
  counted = chex.assert_max_traces(n=2)(loss_fn)
  trainer = trainer_lib.Trainer(counted, cnn.eval_fn, batch_size=8, eval_batch_size=16,
                                epoch_mode="loop")
  for lr in (0.01, 0.02):
    state = new_state(model, lr=lr)
    for epoch in range(2):
      state, _ = trainer.train_epoch(state, data["train"], epoch)


def test_learning_rate_lives_in_the_optimizer_state(model):
  a, b = new_state(model, lr=0.1), new_state(model, lr=0.2)
  assert float(a.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.1)
  assert float(b.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.2)
  assert optimizer_lib.learning_rate(a) == pytest.approx(0.1)
  assert a.tx is b.tx


@pytest.mark.parametrize("batch_norm, lr, tol", [(False, 0.05, 1e-5), (True, 0.005, 1e-3)])
def test_scan_and_loop_epochs_agree(data, batch_norm, lr, tol):
  # With BatchNorm at batch 8, float rounding differences (the two modes fuse differently) grow
  # step by step; a small learning rate keeps them at rounding size for one epoch.
  model = cnn.CNN(batch_norm=batch_norm, init_scheme="flax", **TINY)
  states = {}
  for mode in ("scan", "loop"):
    tr = trainer_lib.Trainer(cnn.loss_fn, cnn.eval_fn, batch_size=8,
                          eval_batch_size=16, epoch_mode=mode)
    state = new_state(model, lr=lr)
    state, metrics = tr.train_epoch(state, data["train"], 0)
    states[mode] = (state, metrics, tr.evaluate(state, data["val"]))
  (s1, m1, v1), (s2, m2, v2) = states["scan"], states["loop"]
  chex.assert_trees_all_close(s1.params, s2.params, rtol=tol, atol=tol)
  chex.assert_trees_all_close(s1.batch_stats, s2.batch_stats, rtol=tol, atol=tol)
  assert int(s1.step) == int(s2.step) == 13
  assert m1["loss"] == pytest.approx(m2["loss"], rel=tol)
  assert v1["loss"] == pytest.approx(v2["loss"], rel=10 * tol)


def test_evaluate_matches_a_direct_computation(model, trainer, data):
  state = new_state(model)
  metrics = trainer.evaluate(state, data["val"])        # 30 examples: batches of 16 + 14
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = jax.jit(functools.partial(model.apply, train=False))(variables, data["val"]["image"])
  labels = np.asarray(data["val"]["label"])
  nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), labels[:, None], 1)
  assert metrics["loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
  assert metrics["accuracy"] == pytest.approx(float((logits.argmax(-1) == labels).mean()))


@pytest.mark.parametrize("mode", ["loop", "scan"])
def test_a_split_smaller_than_an_eval_batch_is_one_batch_of_its_own_size(model, trainer, data,
                                                                        mode):
  sizes = []

  def eval_fn(apply_fn, variables, batch, mask):
    sizes.append(mask.shape[0])                     # at trace time: the batch's static size
    return cnn.eval_fn(apply_fn, variables, batch, mask)
  large = trainer_lib.Trainer(cnn.loss_fn, eval_fn, batch_size=8, eval_batch_size=1000,
                              epoch_mode=mode)
  state = new_state(model)
  metrics = large.evaluate(state, data["val"])        # 30 examples: one batch of 30, not 1000
  assert set(sizes) - {1000} == {30}                  # 1000: the shapes of the sums, not run
  expected = trainer.evaluate(state, data["val"])
  assert metrics == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- padded widths


class _Scale(nn.Module):
  """y_hat = w * sum(x): enough to see which examples an epoch visited, and in what order."""

  @nn.compact
  def __call__(self, x):
    return self.param("w", nn.initializers.ones, ()) * x.sum(-1)


def _width_sums(apply_fn, params, batch, mask):
  err = (apply_fn({"params": params}, batch["x"]) - batch["y"]) ** 2
  ids = batch["id"].astype(jnp.float32)
  return {"loss": jnp.sum(err * mask), "count": jnp.sum(mask), "id": jnp.sum(ids * mask),
          "id2": jnp.sum(ids ** 2 * mask), "width": jnp.sum(batch["x"].shape[1] * mask)}


def _width_loss(apply_fn, params, model_state, batch, mask, rng):
  sums = _width_sums(apply_fn, params, batch, mask)
  return sums["loss"] / jnp.maximum(sums["count"], 1.0), (model_state, sums)


def _width_eval(apply_fn, variables, batch, mask):
  return _width_sums(apply_fn, variables["params"], batch, mask)


N_WIDE = 50


def _widths(widths=(2, 3, 5)):
  """50 examples whose x has 1..5 non-zero leading entries, stored at widths 2, 3 and 5."""
  rng = np.random.default_rng(0)
  lengths = rng.choice(np.arange(1, 6), N_WIDE, p=[0.45, 0.3, 0.15, 0.07, 0.03])
  x = rng.normal(size=(N_WIDE, 5)).astype(np.float32) * (np.arange(5) < lengths[:, None])
  need = np.searchsorted(widths, lengths)
  copies = [jax.device_put({"x": x[:, :w], "y": 0.5 * x.sum(-1),
                                "id": np.arange(N_WIDE, dtype=np.int32)}) for w in widths]
  return trainer_lib.Widths(copies, need)


def _width_state(lr=0.01):
  return trainer_lib.create_train_state(_Scale(), (jnp.zeros((1, 2)),),
                                        optimizer_lib.make_optimizer("sgd", lr), 0)


@pytest.mark.parametrize("mode", ["loop", "scan"])
def test_width_epoch_visits_every_example_once_in_random_batches(mode):
  data = _widths()
  trainer = trainer_lib.Trainer(_width_loss, _width_eval, batch_size=4, eval_batch_size=8,
                             epoch_mode=mode)
  state = _width_state()
  for epoch in range(2):
    state, m = trainer.train_epoch(state, data, epoch)
    assert m["count"] == N_WIDE
    assert m["id"] == pytest.approx((N_WIDE - 1) / 2)
    assert m["id2"] == pytest.approx((N_WIDE - 1) * (2 * N_WIDE - 1) / 6)
    assert 2 < m["width"] < 5                      # narrower copies were used
  assert int(state.step) == 2 * 13                 # ceil(50 / 4) random batches per epoch
  val = trainer.evaluate(state, data)
  assert val["count"] == N_WIDE and val["width"] == 5


def test_width_epochs_equal_the_widest_copy_and_agree_between_modes():
  data = _widths()
  params = {}
  for mode in ("scan", "loop"):
    trainer = trainer_lib.Trainer(_width_loss, _width_eval, batch_size=4, epoch_mode=mode)
    params[mode] = trainer.train_epoch(_width_state(), data, 0)[0].params["w"]
    params[mode + " widest"] = trainer.train_epoch(_width_state(), data[-1], 0)[0].params["w"]
  for key in ("scan", "loop", "loop widest"):
    np.testing.assert_allclose(params[key], params["scan widest"], rtol=1e-6)


def test_batch_widths_take_the_widest_real_member():
  need = np.array([0, 2, 1, 0, 1])
  idx = np.array([[0, 3], [1, 2], [4, 0]])
  mask = np.array([[1, 1], [1, 1], [1, 0]], bool)
  assert trainer_lib.batch_widths(need, idx, mask).tolist() == [0, 2, 1]
  with pytest.raises(ValueError, match="same examples"):
    trainer_lib.Widths([{"x": np.zeros((3, 1))}], np.zeros(2))
