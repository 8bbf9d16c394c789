"""The Q1 claims as measurements on random problems (one compiled program), and the negative
controls: deliberately wrong updates must fail the same checks, so the checks can tell right
from wrong."""

import pytest

from hw2jax.recipes.hopfield import claims as claims_lib


@pytest.fixture(scope="module")
def claims():
  return {k: float(v) for k, v in
          claims_lib.measure_claims(claims_lib.claim_problems(7, 64)).items()}


def test_q1_claims_hold_on_random_problems(claims):
  """Hessian E1 = I (D = 2, 8, 32); Hessian of -E2 = beta X^T (diag p - pp^T) X and PSD; the
  CCCP step zeroes the gradient of the linearised problem; the energy never increases along
  64 x 6 trajectories of 10 steps; the step equals attention (beta = 1/sqrt D, K = V = X)."""
  assert claims["e1_hessian_minus_identity"] <= 1e-6
  assert claims["e2_hessian_vs_formula"] <= 1e-5
  assert claims["neg_e2_min_eigenvalue_rel"] >= -1e-5
  assert claims["cccp_minimiser_residual"] <= 1e-5
  assert claims["energy_max_increase"] <= claims_lib.ENERGY_TOL
  assert claims["attention_max_difference"] <= 1e-5


def test_wrong_updates_fail_the_same_checks(claims):
  """The checks can fail: a sign error breaks monotonicity and the minimiser condition; a
  forgotten beta breaks the minimiser condition (its step minimises a different problem)."""
  assert claims["sign_energy_max_increase"] > 100 * claims_lib.ENERGY_TOL
  assert claims["sign_cccp_minimiser_residual"] > 100 * claims_lib.TOL
  assert claims["nobeta_cccp_minimiser_residual"] > 100 * claims_lib.TOL


def test_check_table_lists_every_claim_and_passes():
  row = claims_lib.check_row
  rows = [row("a", "m", 1e-7, 1e-4), row("b", "m", -1e-7, -1e-4, above=True),
          row("c", "m", 1.0, 1e-5, above=True), row("d", "m", 1.0, 1e-4)]
  assert [r.ok for r in rows] == [True, True, True, False]
  table = claims_lib.format_table(rows, 3)
  assert table.count("yes") == 3 and "NO" in table




def test_check_returns_typed_rows_and_the_table():
  result, table = claims_lib.check(claims_lib.Config(check_trials=2), log=lambda line: None)
  assert result.all_ok and len(result.rows) == 8 and result.table == claims_lib.TABLE
  assert all(r.claim in table for r in result.rows)
