"""hw2jax.train.optimizer: PyTorch's weight decay, one transformation for every rate."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hw2jax.train import optimizer as optimizer_lib


def test_sgd_l2_decay_matches_pytorch_weight_decay():
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = {"w": jnp.array([0.5, 0.5, -1.0])}
  optimizer = optimizer_lib.make_optimizer("sgd", 0.01, l2_decay=0.1)
  updates, _ = optimizer.tx.update(grads, optimizer.init(params), params)
  new = optax.apply_updates(params, updates)
  # torch.optim.SGD(weight_decay=wd): p <- p - lr * (g + wd * p)
  expected = params["w"] - 0.01 * (grads["w"] + 0.1 * params["w"])
  np.testing.assert_allclose(new["w"], expected, rtol=1e-6)


def test_adam_l2_decay_is_added_to_the_gradient():
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = {"w": jnp.array([0.5, 0.25, -1.0])}
  optimizer = optimizer_lib.make_optimizer("adam", 0.003, l2_decay=0.1)
  updates, _ = optimizer.tx.update(grads, optimizer.init(params), params)
  ref = optax.adam(0.003)
  ref_updates, _ = ref.update({"w": grads["w"] + 0.1 * params["w"]}, ref.init(params))
  np.testing.assert_allclose(updates["w"], ref_updates["w"], rtol=1e-6)


def test_optimizer_is_shared_between_learning_rates():
  assert optimizer_lib.make_optimizer("sgd", 0.1).tx is optimizer_lib.make_optimizer("sgd", 0.2).tx
  with pytest.raises(ValueError):
    optimizer_lib.make_optimizer("rmsprop", 0.1)


def test_the_rate_is_read_back_from_the_state_and_is_none_for_a_plain_optax_optimizer():
  params = {"w": jnp.zeros(3)}
  state = SimpleNamespace(opt_state=optimizer_lib.make_optimizer("adam", 0.003).init(params))
  assert optimizer_lib.learning_rate(state) == pytest.approx(0.003)
  plain = SimpleNamespace(opt_state=optax.sgd(0.1).init(params))
  assert optimizer_lib.learning_rate(plain) is None
