"""Storage capacity: Theorem 3's bound reproduces the paper's numbers; the 90% crossing of a
recall curve."""

import math

import pytest

from hw2jax.recipes.hopfield import capacity


def test_theorem3_reproduces_the_papers_numbers():
  """Ramsauer et al.: c = 3.1546 for beta=1, K=3, d=20 and c = 1.3718 for beta=1, K=1, d=75
  (p = 0.001), both meeting the condition on c."""
  a = capacity.theorem3_bound(20, 1.0, 3.0, 0.001)
  b = capacity.theorem3_bound(75, 1.0, 1.0, 0.001)
  assert round(a.c, 4) == 3.1546 and a.bound is not None
  assert round(b.c, 4) == 1.3719
  assert b.bound == pytest.approx(math.sqrt(0.001) * b.c ** 18.5)
  assert capacity.theorem3_bound(8, 1.0, 1.0, 0.001).bound is None


def test_capacity_from_curve():
  ns = [2, 4, 8, 16]
  assert capacity.capacity_from_curve(ns, [1.0, 1.0, 1.0, 0.95]) == (16.0, True)
  assert capacity.capacity_from_curve(ns, [0.5, 0.0, 0.0, 0.0]) == (None, False)
  n, censored = capacity.capacity_from_curve(ns, [1.0, 1.0, 0.8, 0.0])
  assert not censored and n == pytest.approx(math.exp(0.5 * math.log(4) + 0.5 * math.log(8)))
