"""The tiny CNN and data that the trainer and fit tests share."""

import jax
import numpy as np
import pytest

from helpers import TINY_CNN, learnable_images
from hw2jax.models import cnn
from hw2jax.train import trainer as trainer_lib


def make_data(n, seed=0):
  images, labels = learnable_images(n, seed)
  return jax.device_put(cnn.as_dataset(images, labels.astype(np.int32)))


@pytest.fixture(scope="module")
def data():
  return {"train": make_data(100, 0), "val": make_data(30, 1)}


@pytest.fixture(scope="module")
def model():
  return cnn.CNN(batch_norm=True, init_scheme="flax", **TINY_CNN)


@pytest.fixture(scope="module")
def trainer():
  return trainer_lib.Trainer(cnn.loss_fn, cnn.eval_fn, batch_size=8, eval_batch_size=16,
                             epoch_mode="loop")
