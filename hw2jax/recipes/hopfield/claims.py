"""The homework's Q1 claims measured on random problems: E1 convex (Hessian I), E2 concave
(Hessian of -E2 = beta X^T (diag p - p p^T) X, PSD), the CCCP step minimises the linearised
problem and never increases the energy, and one step with beta = 1/sqrt(D), K = V = X is
attention. Two negative controls run the same checks on deliberately wrong updates: they must
fail, which shows that the checks can tell a right CCCP step from a wrong one."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hw2jax import records
from hw2jax.models import hopfield as hf

TABLE = "check.md"
# Float32 tolerances of the checks (relative to the size of the compared quantities).
TOL = 1e-4
ENERGY_TOL = 1e-5
CHECK_DIMS = (2, 8, 32)


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  check_trials: int = 64

  def validate(self) -> "Config":
    records.require([(self.check_trials >= 1,
                      f"--check_trials={self.check_trials} must be at least 1")])
    return self


@dataclasses.dataclass(frozen=True)
class CheckRow:
  claim: str
  measured: str
  value: float
  tolerance: str
  ok: bool


@dataclasses.dataclass(frozen=True)
class Claims:
  """The table's rows, whether all hold, and the file the table is in."""
  all_ok: bool
  rows: list[CheckRow]
  table: str = TABLE


def random_problems(rng: np.random.Generator, trials: int, n: int, d: int, batch: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`trials` random problems: X (T, n, d) ~ N(0, 1), states Q (T, batch, d) ~ N(0, 4/d) (so
  x^T q ~ N(0, 4)) and beta (T,) log-uniform in [0.1, 10], from nearly uniform to nearly one-hot
  softmax weights. Drawn on the host: random draws inside jit compile slowly on CPU."""
  X = rng.standard_normal((trials, n, d), np.float32)
  Q = (2.0 / math.sqrt(d) * rng.standard_normal((trials, batch, d))).astype(np.float32)
  beta = np.exp(rng.uniform(math.log(0.1), math.log(10.0), trials)).astype(np.float32)
  return X, Q, beta


def hessian_checks(X, Q, beta) -> dict:
  """Q1.1 over random problems (X (T, N, D), Q (T, 1, D), beta (T,)): the maximum of
  max|Hess E1 - I|; of max|Hess(-E2) - beta X^T (diag p - p p^T) X| / (beta M^2); and the
  minimum of lambda_min(Hess(-E2)) / (beta M^2) (>= 0 up to rounding: E2 is concave). beta M^2
  bounds the norm of Hess(-E2) = beta Cov_p(x), so both are relative to the largest it can be."""
  d = X.shape[-1]

  def one(X, Q, beta):
    q = Q[0]
    h1 = jax.hessian(lambda v: hf.energy_e1(X, v, beta))(q)
    h2 = jax.hessian(lambda v: -hf.energy_e2(X, v, beta))(q)
    formula = hf.neg_e2_hessian(X, q, beta)
    scale = beta * hf.max_norm(X) ** 2
    eig = jnp.linalg.eigvalsh(0.5 * (h2 + h2.T))
    return (jnp.max(jnp.abs(h1 - jnp.eye(d))), jnp.max(jnp.abs(h2 - formula)) / scale,
            eig[0] / scale)

  e1, e2, eig = jax.vmap(one)(X, Q, beta)
  return {"e1_hessian_minus_identity": jnp.max(e1), "e2_hessian_vs_formula": jnp.max(e2),
          "neg_e2_min_eigenvalue_rel": jnp.min(eig)}


def cccp_checks(X, Q, beta, steps: int = 10, step_fn=hf.update) -> dict:
  """Q1.2 over random problems (X (T, N, D), Q (T, B, D), beta (T,)), `steps` steps of
  `step_fn`: the largest ||grad E1(q_{t+1}) + grad E2(q_t)|| / (1 + ||q_{t+1}||) (zero iff
  q_{t+1} minimises the linearised problem E1(q) + E2(q_t) + grad E2(q_t)^T (q - q_t)) and the
  largest energy increase E(q_{t+1}) - E(q_t) relative to 1 + |E(q_t)| (<= rounding: E never
  increases)."""
  grad_e1 = jax.grad(lambda X, q, b: hf.energy_e1(X, q, b), argnums=1)
  grad_e2 = jax.grad(lambda X, q, b: hf.energy_e2(X, q, b), argnums=1)

  def one(X, Q, beta):
    _, traj = hf.retrieve(X, Q, beta, steps, trajectory=True, step_fn=step_fn)
    prev, nxt = traj.states[:-1], traj.states[1:]
    g = jax.vmap(jax.vmap(lambda a, b: grad_e1(X, b, beta) + grad_e2(X, a, beta)))(prev, nxt)
    residual = jnp.linalg.norm(g, axis=-1) / (1.0 + jnp.linalg.norm(nxt, axis=-1))
    e = traj.energies
    increase = (e[1:] - e[:-1]) / (1.0 + jnp.abs(e[:-1]))
    return jnp.max(residual), jnp.max(increase)

  residual, increase = jax.vmap(one)(X, Q, beta)
  return {"cccp_minimiser_residual": jnp.max(residual), "energy_max_increase": jnp.max(increase)}


def attention_checks(X, Q) -> dict:
  """Q1.3 with beta = 1/sqrt(D), K = V = X (T, N, D) and queries Q (T, B, D): the largest
  difference, relative to max|result|, between the Hopfield step of all queries (transposed)
  and `jax.nn.dot_product_attention`, a hand-written softmax attention and the column form."""
  d = X.shape[-1]

  def one(X, Q):
    ours = hf.update(X, Q, 1.0 / math.sqrt(d))
    scale = jnp.max(jnp.abs(ours))
    dpa = jax.nn.dot_product_attention(Q[None, :, None], X[None, :, None], X[None, :, None])
    logits = Q @ X.T / math.sqrt(d)
    w = jnp.exp(logits - jnp.max(logits, axis=1, keepdims=True))
    hand = (w / jnp.sum(w, axis=1, keepdims=True)) @ X
    cols = hf.update_columns(X, Q.T, 1.0 / math.sqrt(d)).T
    return tuple(jnp.max(jnp.abs(ours - other)) / scale for other in (dpa[0, :, 0], hand, cols))

  dpa, hand, cols = jax.vmap(one)(X, Q)
  return {"vs_dot_product_attention": jnp.max(dpa), "vs_handwritten_attention": jnp.max(hand),
          "vs_column_form": jnp.max(cols)}


def wrong_sign_update(X, Q, beta):
  """A deliberately wrong CCCP step (negative control): q <- -X^T softmax(beta X q)."""
  return -hf.update(X, Q, beta)


def no_beta_update(X, Q, beta):
  """A deliberately wrong CCCP step (negative control): q <- X^T softmax(X q), beta forgotten."""
  del beta
  return hf.update(X, Q, 1.0)


def claim_problems(seed: int, trials: int, dims: Sequence[int] = CHECK_DIMS) -> dict:
  """The random problems of `measure_claims` (numpy arrays): per dimension in `dims` for the
  Hessians (N=12) and attention (N=16, 8 queries); N=12, D=8, 6 states for each CCCP check."""
  rng = np.random.default_rng(seed)
  return {"hessian": [random_problems(rng, trials, 12, d, 1) for d in dims],
          "attention": [random_problems(rng, trials, 16, d, 8)[:2] for d in dims],
          **{name: random_problems(rng, trials, 12, 8, 6) for name in ("cccp", "sign", "nobeta")}}


@jax.jit
def measure_claims(problems: dict) -> dict:
  """Every measurement of `check` in one compiled program (compilation dominates on CPU).

  Returns {metric: value}: the Hessian and attention metrics worst over the dimensions, and the
  CCCP metrics of the right update and of the two deliberately wrong ones ('sign_', 'nobeta_').
  """
  hess = [hessian_checks(*p) for p in problems["hessian"]]
  att = [attention_checks(*p) for p in problems["attention"]]
  out = {k: jnp.max(jnp.stack([h[k] for h in hess])) for k in hess[0]}
  out["neg_e2_min_eigenvalue_rel"] = jnp.min(jnp.stack([h["neg_e2_min_eigenvalue_rel"]
                                                        for h in hess]))
  out["attention_max_difference"] = jnp.max(jnp.stack([a[k] for a in att for k in a]))
  out.update(cccp_checks(*problems["cccp"]))
  for name, step_fn in (("sign", wrong_sign_update), ("nobeta", no_beta_update)):
    out.update({f"{name}_{k}": v for k, v in cccp_checks(*problems[name], step_fn=step_fn).items()})
  return out


def check(config: Config, log: Callable[[str], None] = print) -> tuple[Claims, str]:
  """Measures the Q1 claims on random problems; returns them and the table as text."""
  problems = claim_problems(config.seed, config.check_trials)
  # Full float32 products: GPUs default to TF32 (~1e-3 relative), above the tolerances.
  with jax.default_matmul_precision("highest"):
    m = {k: float(v) for k, v in measure_claims(problems).items()}
  dims = ",".join(map(str, CHECK_DIMS))
  rows = [
      check_row(f"Q1.1 E1 convex: Hessian of E1 = I (D={dims})", "max|H - I|",
           m["e1_hessian_minus_identity"], TOL),
      check_row("Q1.1 Hessian of -E2 = beta X^T(diag p - pp^T)X", "max|H - formula| / beta M^2",
           m["e2_hessian_vs_formula"], TOL),
      check_row("Q1.1 E2 concave: Hessian of -E2 is PSD", "min eigenvalue / beta M^2",
           m["neg_e2_min_eigenvalue_rel"], -TOL, above=True),
      check_row("Q1.2 CCCP step minimises the linearised problem", "max rel. |gradient| there",
           m["cccp_minimiser_residual"], TOL),
      check_row("Q1.2 energy never increases along CCCP steps", "max rel. increase",
           m["energy_max_increase"], ENERGY_TOL),
      check_row("Q1.3 beta=1/sqrt(D), K=V=X: step = attention", "max rel. difference",
           m["attention_max_difference"], TOL),
      check_row("control: update with the wrong sign (must fail)", "max rel. increase",
           m["sign_energy_max_increase"], ENERGY_TOL, above=True),
      check_row("control: update without beta (must fail)", "max rel. |gradient| there",
           m["nobeta_cccp_minimiser_residual"], TOL, above=True),
  ]
  table = format_table(rows, config.check_trials)
  log(table)
  return Claims(all_ok=all(r.ok for r in rows), rows=rows), table


def check_row(claim: str, measured: str, value: float, tol: float, above: bool = False) -> CheckRow:
  if above:
    return CheckRow(claim, measured, value, f"> {tol:g}" if tol > 0 else f">= {tol:g}",
                    value > tol if tol > 0 else value >= tol)
  return CheckRow(claim, measured, value, f"<= {tol:g}", value <= tol)


def format_table(rows: Sequence[CheckRow], trials: int) -> str:
  width = max(len(r.claim) for r in rows)
  mwidth = max(len(r.measured) for r in rows)
  lines = [f"Q1 claims, {trials} random (X, q, beta) per row, beta log-uniform in [0.1, 10], "
           "float32",
           f"{'claim':<{width}}  {'measured':<{mwidth}}  {'value':>10}  {'tolerance':<10}  ok"]
  lines.append("-" * len(lines[-1]))
  for r in rows:
    lines.append(f"{r.claim:<{width}}  {r.measured:<{mwidth}}  {r.value:>10.2e}  "
                 f"{r.tolerance:<10}  {'yes' if r.ok else 'NO'}")
  return "\n".join(lines) + "\n"
