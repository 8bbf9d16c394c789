"""Trainer, optimizers, epoch runners, evaluation, fit/resume/divergence, on a tiny CNN."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
import pytest

from conftest import learnable_images
from hw2jax import checkpoints, classifier, cnn, fit as fit_lib, runlog, training
from hw2jax.errors import UserError

TINY = dict(channels=(4, 8, 16), hidden=(32, 16))
EXAMPLE = (jnp.zeros((1, 48, 48, 3), jnp.uint8),)


def make_data(n, seed=0):
  images, labels = learnable_images(n, seed)
  return training.to_device(classifier.as_dataset(images, labels.astype(np.int32)))


@pytest.fixture(scope="module")
def data():
  return {"train": make_data(100, 0), "val": make_data(30, 1)}


@pytest.fixture(scope="module")
def model():
  return cnn.CNN(batch_norm=True, init_scheme="flax", **TINY)


@pytest.fixture(scope="module")
def counted_loss():
  # Traced once for the shape of the metric sums and once for the step itself.
  return chex.assert_max_traces(n=2)(classifier.loss_fn)


@pytest.fixture(scope="module")
def trainer(counted_loss):
  return training.Trainer(counted_loss, classifier.eval_fn, batch_size=8, eval_batch_size=16,
                          epoch_mode="loop")


def new_state(model, lr=0.05, seed=0, optimizer="sgd", l2=0.0):
  tx = training.make_optimizer(optimizer, l2)
  return training.create_train_state(model, EXAMPLE, tx, seed, learning_rate=lr, train=False)


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("n, batch_size", [(100, 8), (96, 8), (5, 8), (1, 1)])
def test_batch_plan_uses_every_example_once(n, batch_size):
  idx, mask = training.batch_plan(jax.random.PRNGKey(3), n, batch_size)
  nb = -(-n // batch_size)
  chex.assert_shape((idx, mask), (nb, batch_size))
  used = np.asarray(idx)[np.asarray(mask)]
  assert sorted(used.tolist()) == list(range(n))
  assert int(mask.sum()) == n and bool(mask[:-1].all())


def test_batch_plan_is_a_seeded_permutation():
  a, _ = training.batch_plan(jax.random.PRNGKey(0), 50, 8)
  b, _ = training.batch_plan(jax.random.PRNGKey(0), 50, 8)
  c, _ = training.batch_plan(jax.random.PRNGKey(1), 50, 8)
  seq, _ = training.batch_plan(None, 50, 8)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a, c)
  assert np.asarray(seq).ravel()[:50].tolist() == list(range(50))


# ---------------------------------------------------------------- optimizers


def test_sgd_l2_decay_matches_pytorch_weight_decay():
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = {"w": jnp.array([0.5, 0.5, -1.0])}
  tx = training.make_optimizer("sgd", l2_decay=0.1)
  opt_state = tx.init(params)
  opt_state.hyperparams["learning_rate"] = jnp.asarray(0.01)
  updates, _ = tx.update(grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  # torch.optim.SGD(weight_decay=wd): p <- p - lr * (g + wd * p)
  expected = params["w"] - 0.01 * (grads["w"] + 0.1 * params["w"])
  np.testing.assert_allclose(new["w"], expected, rtol=1e-6)


def test_adam_l2_decay_is_added_to_the_gradient():
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = {"w": jnp.array([0.5, 0.25, -1.0])}
  tx = training.make_optimizer("adam", l2_decay=0.1)
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.003)
  updates, _ = tx.update(grads, state, params)
  ref = optax.adam(0.003)
  ref_updates, _ = ref.update({"w": grads["w"] + 0.1 * params["w"]}, ref.init(params))
  np.testing.assert_allclose(updates["w"], ref_updates["w"], rtol=1e-6)


def test_optimizer_is_shared_between_learning_rates():
  assert training.make_optimizer("sgd") is training.make_optimizer("sgd")
  with pytest.raises(ValueError):
    training.make_optimizer("rmsprop")


def test_resolve_mode():
  assert training.resolve_mode("auto", "cpu") == "loop"
  assert training.resolve_mode("auto", "gpu") == "scan"
  assert training.resolve_mode("auto", "tpu") == "scan"
  assert training.resolve_mode("scan", "cpu") == "scan"
  with pytest.raises(ValueError):
    training.resolve_mode("fast")


# ---------------------------------------------------------------- learning


def test_steps_on_a_fixed_batch_lower_the_loss(model, data):
  trainer = training.Trainer(classifier.loss_fn, classifier.eval_fn, batch_size=8,
                             epoch_mode="loop")
  state = new_state(model, lr=0.3)
  idx = jnp.arange(8, dtype=jnp.int32)[None]
  mask = jnp.ones((1, 8), bool)
  losses = []
  for _ in range(10):
    acc, pos = trainer.zero_train_sums(state, data["train"]), jnp.zeros((), jnp.int32)
    state, acc, _ = trainer.loop_step(state, acc, pos, data["train"], idx, mask)
    losses.append(float(acc["loss"] / acc["count"]))
  assert losses[-1] < 0.6 * losses[0], losses


def test_short_run_learns_the_synthetic_task(data):
  vanilla = cnn.CNN(init_scheme="flax", **TINY)
  trainer = training.Trainer(classifier.loss_fn, classifier.eval_fn, batch_size=8,
                             eval_batch_size=16, epoch_mode="loop")
  state = new_state(vanilla, lr=0.003, optimizer="adam")
  for epoch in range(10):
    state, metrics = trainer.train_epoch(state, data["train"], epoch)
    assert metrics["count"] == 100                      # every example, every epoch
  val = trainer.evaluate(state, data["val"])
  assert val["accuracy"] >= 0.9, val
  assert val["count"] == 30


def test_each_learning_rate_compiles_once(model, trainer, data, counted_loss):
  # Two learning rates, two epochs each, on the trainer the other tests used: no retrace
  # (assert_max_traces on the loss function would raise).
  for lr in (0.01, 0.02):
    state = new_state(model, lr=lr)
    for epoch in range(2):
      state, _ = trainer.train_epoch(state, data["train"], epoch)


def test_learning_rate_lives_in_the_optimizer_state(model):
  a, b = new_state(model, lr=0.1), new_state(model, lr=0.2)
  assert float(a.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.1)
  assert float(b.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.2)
  assert a.tx is b.tx


@pytest.mark.parametrize("batch_norm, lr, tol", [(False, 0.05, 1e-5), (True, 0.005, 1e-3)])
def test_scan_and_loop_epochs_agree(data, batch_norm, lr, tol):
  # With BatchNorm at batch 8, float rounding differences (the two modes fuse differently) grow
  # step by step; a small learning rate keeps them at rounding size for one epoch.
  model = cnn.CNN(batch_norm=batch_norm, init_scheme="flax", **TINY)
  states = {}
  for mode in ("scan", "loop"):
    tr = training.Trainer(classifier.loss_fn, classifier.eval_fn, batch_size=8,
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


# ---------------------------------------------------------------- fit: resume and divergence


def run_fit(model, trainer, data, workdir, epochs, lr=0.05):
  def evaluate(s):
    m = trainer.evaluate(s, data["val"])
    return {"val_loss": m["loss"], "val_accuracy": m["accuracy"]}
  return fit_lib.fit(trainer, new_state(model, lr=lr), data["train"], epochs=epochs,
                     evaluate=evaluate, workdir=workdir, best_metric="val_accuracy",
                     log=lambda line: None)


def test_resume_is_bit_identical(model, trainer, data, tmp_path):
  straight = run_fit(model, trainer, data, tmp_path / "a", epochs=3)
  run_fit(model, trainer, data, tmp_path / "b", epochs=2)
  resumed = run_fit(model, trainer, data, tmp_path / "b", epochs=3)
  assert resumed.resumed_from == 2 and len(resumed.history) == 3
  chex.assert_trees_all_equal(straight.state.params, resumed.state.params)
  chex.assert_trees_all_equal(straight.state.batch_stats, resumed.state.batch_stats)
  chex.assert_trees_all_equal(straight.state.opt_state, resumed.state.opt_state)
  strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
  assert strip(straight.history) == strip(resumed.history)
  assert strip(runlog.read_metrics(tmp_path / "b")) == strip(straight.history)
  # A finished run resumed again trains nothing.
  again = run_fit(model, trainer, data, tmp_path / "b", epochs=3)
  assert again.resumed_from == 3
  chex.assert_trees_all_equal(again.state.params, straight.state.params)


def test_best_checkpoint_holds_the_best_epoch(model, trainer, data, tmp_path):
  result = run_fit(model, trainer, data, tmp_path, epochs=3)
  best = max(result.history, key=lambda r: r["val_accuracy"])
  assert result.best["epoch"] == best["epoch"]
  restored = fit_lib.restore_best(tmp_path, new_state(model), best_metric="val_accuracy",
                                  log=lambda line: None)
  m = trainer.evaluate(restored, data["val"])
  assert m["accuracy"] == pytest.approx(best["val_accuracy"])
  # The best epoch is kept (once) beside the two latest ones.
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == sorted({best["epoch"], 2, 3})


def test_unreadable_latest_checkpoint_is_set_aside_and_the_previous_used(model, trainer, data,
                                                                         tmp_path):
  run_fit(model, trainer, data, tmp_path, epochs=3)
  latest = tmp_path / "checkpoints" / "3"
  for f in latest.rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00garbage")
  logs = []
  template = new_state(model)
  ck = checkpoints.Checkpoints(tmp_path, best_metric="val_accuracy", log=logs.append)
  state, meta = ck.restore(template)
  ck.close()
  assert meta["epoch"] == 2 and int(state.step) == 2 * 13
  assert any("checkpoint of epoch 3 is unreadable" in line and "corrupt/3-" in line
             for line in logs), logs
  assert not latest.exists() and len(list((tmp_path / "checkpoints/corrupt").iterdir())) == 1


def test_divergence_stops_the_run_cleanly(model, trainer, data, tmp_path):
  result = run_fit(model, trainer, data, tmp_path, epochs=4, lr=1e6)
  assert result.diverged_at == 1 and len(result.history) == 1
  record = runlog.read_metrics(tmp_path)[0]
  assert record["diverged"] is True and record["train_loss"] is None
  again = run_fit(model, trainer, data, tmp_path, epochs=4, lr=1e6)
  assert again.diverged_at == 1 and len(again.history) == 1
  json.dumps(runlog.finite(record), allow_nan=False)


def test_all_checkpoints_unreadable_is_an_error_not_a_fresh_start(model, trainer, data,
                                                                   tmp_path):
  run_fit(model, trainer, data, tmp_path, epochs=2)
  for f in (tmp_path / "checkpoints").rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00garbage")
  with pytest.raises(UserError, match="results of 2 finished epochs but no readable checkpoint"):
    run_fit(model, trainer, data, tmp_path, epochs=3)
  # Both damaged steps are kept aside, the metrics untouched.
  assert len(list((tmp_path / "checkpoints/corrupt").iterdir())) == 2
  assert [r["epoch"] for r in runlog.read_metrics(tmp_path)] == [1, 2]


def test_checkpoints_of_two_runs_in_two_threads(model, tmp_path):
  """The report trains Q3 in a thread beside Q2: Orbax's process-global save state must not let
  their saves collide (without the lock in hw2jax.checkpoints this fails within a few epochs)."""
  import threading
  base = new_state(model)
  errors, barrier = [], threading.Barrier(4)

  def run(i):
    try:
      ck = checkpoints.Checkpoints(tmp_path / f"run{i}", best_metric="score",
                                   log=lambda line: None)
      barrier.wait()
      for epoch in range(1, 16):
        state = base.replace(step=jnp.asarray(100 * i + epoch, jnp.int32))
        ck.save(epoch, state, {"epoch": epoch, "run": i}, {"score": epoch % 7})
      ck.wait()
      for restore, epoch in ((ck.restore, 15), (ck.restore_best, 6)):
        state, meta = restore(base)
        assert meta["epoch"] == epoch and meta["run"] == i
        assert int(state.step) == 100 * i + epoch
      assert ck.epochs() == [6, 14, 15]
      ck.close()
    except BaseException as e:  # reported by the main thread
      errors.append(e)

  threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors


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
  copies = [training.to_device({"x": x[:, :w], "y": 0.5 * x.sum(-1),
                                "id": np.arange(N_WIDE, dtype=np.int32)}) for w in widths]
  return training.Widths(copies, need)


def _width_state(lr=0.01):
  tx = training.make_optimizer("sgd")
  return training.create_train_state(_Scale(), (jnp.zeros((1, 2)),), tx, 0, learning_rate=lr)


@pytest.mark.parametrize("mode", ["loop", "scan"])
def test_width_epoch_visits_every_example_once_in_random_batches(mode):
  data = _widths()
  trainer = training.Trainer(_width_loss, _width_eval, batch_size=4, eval_batch_size=8,
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
    trainer = training.Trainer(_width_loss, _width_eval, batch_size=4, epoch_mode=mode)
    params[mode] = trainer.train_epoch(_width_state(), data, 0)[0].params["w"]
    params[mode + " widest"] = trainer.train_epoch(_width_state(), data[-1], 0)[0].params["w"]
  for key in ("scan", "loop", "loop widest"):
    np.testing.assert_allclose(params[key], params["scan widest"], rtol=1e-6)


def test_batch_widths_take_the_widest_real_member():
  need = np.array([0, 2, 1, 0, 1])
  idx = np.array([[0, 3], [1, 2], [4, 0]])
  mask = np.array([[1, 1], [1, 1], [1, 0]], bool)
  assert training.batch_widths(need, idx, mask).tolist() == [0, 2, 1]
  with pytest.raises(ValueError, match="same examples"):
    training.Widths([{"x": np.zeros((3, 1))}], np.zeros(2))
