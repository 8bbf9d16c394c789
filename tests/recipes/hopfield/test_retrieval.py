"""Retrieval patterns: random +-1 without data, standardised Intel images with it; queries."""

import math

import numpy as np
import pytest

from helpers import write_npz
from hw2jax.errors import UserError
from hw2jax.recipes.hopfield import retrieval


def test_patterns_fall_back_to_random_and_use_intel_when_found(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  logged = []
  config = retrieval.Config(num_patterns=5)
  random = retrieval.load_patterns(config, log=logged.append)
  assert "random" in random.source and "no Intel data found" in logged[0]
  assert set(np.unique(random.X)) == {-1.0, 1.0} and random.X.shape == (5, 48 * 48 * 3)
  with pytest.raises(UserError, match="no Intel image data found"):
    retrieval.load_patterns(retrieval.Config(patterns="intel"), log=logged.append)
  npz = write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=6)
  images = retrieval.load_patterns(config, str(npz), log=logged.append)
  assert "intel train images" in images.source and images.shape == (48, 48, 3)
  np.testing.assert_allclose(np.linalg.norm(images.X, axis=1), math.sqrt(48 * 48 * 3), rtol=1e-4)
  with pytest.raises(UserError, match="only 12"):
    retrieval.load_patterns(retrieval.Config(num_patterns=13), str(npz), log=logged.append)
  masked = retrieval.make_queries(images, "mask", 1.0, 0)
  assert np.all(masked.reshape(5, 48, 48, 3)[:, 24:] == 0)
