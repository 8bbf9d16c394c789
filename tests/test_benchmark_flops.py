"""The speed benchmarks' GFLOP/s (benchmarks/flops.py): XLA's count of a program, an epoch's
count over the widths it trains at, and the matmul ceiling."""

import functools

import jax.numpy as jnp
import pytest

from benchmarks import flops
from helpers import TINY_CNN, learnable_images, new_cnn_state
from hw2jax.models import cnn
from hw2jax.train import trainer as trainer_lib


def test_a_matmul_counts_two_n_cubed():
  assert flops.program_flops(lambda x: x @ x, jnp.ones((64, 64))) == 2 * 64 ** 3


def test_an_epoch_counts_its_step_once_per_batch():
  images, labels = learnable_images(20)
  data = cnn.as_dataset(images, labels.astype("int32"))
  trainer = trainer_lib.Trainer(cnn.loss_fn, cnn.eval_fn, batch_size=8, epoch_mode="loop")
  state = new_cnn_state(cnn.CNN(batch_norm=True, init_scheme="flax", **TINY_CNN))
  step = functools.partial(trainer_lib.train_step, loss_fn=cnn.loss_fn)
  one = flops.program_flops(step, state, trainer_lib.gather(data, jnp.arange(8)),
                            jnp.ones((8,), bool))
  assert one > 0 and flops.epoch_flops(trainer, state, data) == pytest.approx(3 * one)


def test_the_ceiling_and_the_line_say_how_close_a_rate_comes():
  assert flops.jax_matmul_gflops(n=128, repeats=2) > 0
  line = flops.achieved("JAX", 50e9, 1.0, 200.0)
  assert line == "JAX 50.0 GFLOP/s (25% of its 200 GFLOP/s matmul)"
