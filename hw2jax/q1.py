"""Q1 experiments: the homework's claims checked numerically, image retrieval, storage capacity.

`check` measures the four Q1 claims (E1 convex, E2 concave, the CCCP step, attention) on random
problems and returns a table; `retrieval` stores images (Intel when found, else random +-1
patterns) and retrieves them from masked/noisy queries for several beta; `capacity` measures the
recall rate of random patterns against the number stored, the dimension and beta, beside
Theorem 3 of Ramsauer et al. `run` does the parts asked for and writes the workdir. The absl main
in experiments/hopfield.py only parses flags into a `Config` and calls `run`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hw2jax import hopfield as hf, runlog
from hw2jax import workdir as workdir_lib
from hw2jax.data import intel
from hw2jax.errors import UserError

PARTS = ("check", "retrieval", "capacity")
PATTERN_SOURCES = ("auto", "intel", "random")
QUERY_KINDS = ("mask", "noise")
RETRIEVAL_FIGURE = "retrieval_{kind}.png"
ENERGY_FIGURE = "energy.png"
CAPACITY_FIGURE = "capacity.png"
CHECK_TABLE = "check.md"
# What a run leaves in its workdir; a new run moves these to <workdir>/archive/<time>/ first.
RUN_FILES = (runlog.SUMMARY, CHECK_TABLE, ENERGY_FIGURE, CAPACITY_FIGURE,
             *(RETRIEVAL_FIGURE.format(kind=k) for k in QUERY_KINDS))
# Random patterns have the shape of an Intel image, so the same betas suit both.
IMAGE_SHAPE = (48, 48, 3)
# Float32 tolerances of the checks (relative to the size of the compared quantities).
TOL = 1e-4
ENERGY_TOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Config:
  """One Q1 run: which parts, and the knobs of each."""
  parts: tuple[str, ...] = PARTS
  seed: int = 0
  check_trials: int = 64
  patterns: str = "auto"
  num_patterns: int = 64
  betas: tuple[float, ...] = (0.0003, 0.001, 0.003, 0.03)
  queries: tuple[str, ...] = QUERY_KINDS
  noise: float = 1.0
  steps: int = 8
  eps: float = 1e-4
  max_steps: int = 100
  num_show: int = 4
  recall_tol: float = 0.05
  capacity_dim: int = 16
  capacity_dims: tuple[int, ...] = (8, 12, 16, 20, 24, 28, 32)
  capacity_betas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
  capacity_max_patterns: int = 16384
  capacity_queries: int = 256
  capacity_noise: float = 0.1
  capacity_steps: int = 1
  failure_prob: float = 0.001

  def validate(self) -> "Config":
    checks = [
        (len(self.parts) >= 1 and all(p in PARTS for p in self.parts),
         f"--parts={','.join(self.parts)}: use some of {', '.join(PARTS)}"),
        (self.check_trials >= 1, f"--check_trials={self.check_trials} must be at least 1"),
        (self.patterns in PATTERN_SOURCES,
         f"--patterns={self.patterns!r} is not one of {', '.join(PATTERN_SOURCES)}"),
        (self.num_patterns >= 2, f"--num_patterns={self.num_patterns} must be at least 2"),
        (len(self.betas) >= 1 and all(_positive(b) for b in self.betas),
         f"--betas={_join(self.betas)} must be positive numbers"),
        (len(self.queries) >= 1 and all(q in QUERY_KINDS for q in self.queries),
         f"--queries={','.join(self.queries)}: use some of {', '.join(QUERY_KINDS)}"),
        (self.noise >= 0 and math.isfinite(self.noise), f"--noise={self.noise} must be >= 0"),
        (self.steps >= 1, f"--steps={self.steps} must be at least 1"),
        (_positive(self.eps), f"--eps={self.eps} must be a positive number"),
        (self.max_steps >= 1, f"--max_steps={self.max_steps} must be at least 1"),
        (1 <= self.num_show <= self.num_patterns,
         f"--num_show={self.num_show} must be between 1 and --num_patterns={self.num_patterns}"),
        (0 < self.recall_tol < 1, f"--recall_tol={self.recall_tol} must be in (0, 1)"),
        (self.capacity_dim >= 2, f"--capacity_dim={self.capacity_dim} must be at least 2"),
        (len(self.capacity_dims) >= 1 and all(d >= 2 for d in self.capacity_dims),
         f"--capacity_dims={_join(self.capacity_dims)} must be dimensions >= 2"),
        (len(self.capacity_betas) >= 1 and all(_positive(b) for b in self.capacity_betas),
         f"--capacity_betas={_join(self.capacity_betas)} must be positive numbers"),
        (self.capacity_max_patterns >= 2,
         f"--capacity_max_patterns={self.capacity_max_patterns} must be at least 2"),
        (self.capacity_queries >= 1,
         f"--capacity_queries={self.capacity_queries} must be at least 1"),
        (self.capacity_noise >= 0 and math.isfinite(self.capacity_noise),
         f"--capacity_noise={self.capacity_noise} must be >= 0"),
        (self.capacity_steps >= 1, f"--capacity_steps={self.capacity_steps} must be at least 1"),
        (0 < self.failure_prob <= 1, f"--failure_prob={self.failure_prob} must be in (0, 1]"),
    ]
    for ok, message in checks:
      if not ok:
        raise UserError(message)
    return self

  def to_json(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _positive(x: float) -> bool:
  return x > 0 and math.isfinite(x)


def _join(xs) -> str:
  return ",".join(f"{x:g}" for x in xs)


# ----------------------------------------------------------------------------------------------
# Part 1: the Q1 claims as measurements


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


class CheckRow(NamedTuple):
  claim: str
  measured: str
  value: float
  tolerance: str
  ok: bool


CHECK_DIMS = (2, 8, 32)


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


def check(config: Config, log: Callable[[str], None] = print) -> tuple[list[CheckRow], str]:
  """Measures the Q1 claims on random problems; returns the rows and the table as text.

  Two negative controls run the same checks on deliberately wrong updates: they must fail,
  which shows that the checks can tell a right CCCP step from a wrong one.
  """
  problems = claim_problems(config.seed, config.check_trials)
  # Full float32 products: GPUs default to TF32 (~1e-3 relative), above the tolerances.
  with jax.default_matmul_precision("highest"):
    m = {k: float(v) for k, v in measure_claims(problems).items()}
  dims = ",".join(map(str, CHECK_DIMS))
  rows = [
      _row(f"Q1.1 E1 convex: Hessian of E1 = I (D={dims})", "max|H - I|",
           m["e1_hessian_minus_identity"], TOL),
      _row("Q1.1 Hessian of -E2 = beta X^T(diag p - pp^T)X", "max|H - formula| / beta M^2",
           m["e2_hessian_vs_formula"], TOL),
      _row("Q1.1 E2 concave: Hessian of -E2 is PSD", "min eigenvalue / beta M^2",
           m["neg_e2_min_eigenvalue_rel"], -TOL, above=True),
      _row("Q1.2 CCCP step minimises the linearised problem", "max rel. |gradient| there",
           m["cccp_minimiser_residual"], TOL),
      _row("Q1.2 energy never increases along CCCP steps", "max rel. increase",
           m["energy_max_increase"], ENERGY_TOL),
      _row("Q1.3 beta=1/sqrt(D), K=V=X: step = attention", "max rel. difference",
           m["attention_max_difference"], TOL),
      _row("control: update with the wrong sign (must fail)", "max rel. increase",
           m["sign_energy_max_increase"], ENERGY_TOL, above=True),
      _row("control: update without beta (must fail)", "max rel. |gradient| there",
           m["nobeta_cccp_minimiser_residual"], TOL, above=True),
  ]
  table = format_table(rows, config.check_trials)
  log(table)
  return rows, table


def _row(claim: str, measured: str, value: float, tol: float, above: bool = False) -> CheckRow:
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


# ----------------------------------------------------------------------------------------------
# Part 2: retrieval of images


class Patterns(NamedTuple):
  """Stored patterns X (N, D), standardised per pattern, and how to show them as images."""
  X: np.ndarray
  shape: tuple[int, int, int]          # (H, W, C) of one image
  offset: np.ndarray                   # (N,) image = clip(offset + scale * x, 0, 1)
  scale: np.ndarray                    # (N,)
  source: str


def load_patterns(config: Config, data_path: str | None = None,
                  log: Callable[[str], None] = print, download: str = "never",
                  data: intel.IntelData | None = None) -> Patterns:
  """N Intel train images when found (or asked for; `data` when already loaded), else N random
  +-1 patterns of 48x48x3.

  Intel images are standardised per image (zero mean, unit variance over pixels), so that every
  stored pattern has the same norm sqrt(D): otherwise high-contrast images win every query.
  """
  path = None
  if data is not None and config.patterns != "random":
    path = data.source
  elif config.patterns != "random":
    try:
      path = intel.discover(data_path, download=download, log=log)
    except UserError as e:
      if config.patterns == "intel" or data_path:
        raise
      log(f"using {config.num_patterns} random +-1 patterns: no Intel data found ({e})")
  rng = np.random.default_rng(config.seed)
  if path is None:
    X = rng.choice(np.array([-1.0, 1.0], np.float32), (config.num_patterns, np.prod(IMAGE_SHAPE)))
    n = config.num_patterns
    return Patterns(X, IMAGE_SHAPE, np.full(n, 0.5, np.float32),
                    np.full(n, 0.5, np.float32), f"random +-1 patterns (seed {config.seed})")
  data = data if data is not None else intel.load(path, log=log)
  images = data.train_images
  if len(images) < config.num_patterns:
    raise UserError(f"--num_patterns={config.num_patterns} but {path} has only {len(images)} "
                    "training images; ask for fewer")
  chosen = np.sort(rng.choice(len(images), config.num_patterns, replace=False))
  pixels = images[chosen].reshape(config.num_patterns, -1).astype(np.float32) / 255.0
  offset, scale = pixels.mean(axis=1), pixels.std(axis=1) + 1e-6
  X = (pixels - offset[:, None]) / scale[:, None]
  return Patterns(X, images.shape[1:], offset, scale,
                  f"{config.num_patterns} Intel train images from {data.source}")


def make_queries(patterns: Patterns, kind: str, noise: float, seed: int) -> np.ndarray:
  """'mask': the bottom half of every image set to 0 (its mean); 'noise': + N(0, noise^2)."""
  X = patterns.X
  if kind == "mask":
    h, w, c = patterns.shape
    keep = np.ones((h, w, c), np.float32)
    keep[h // 2:] = 0.0
    return X * keep.reshape(-1)
  rng = np.random.default_rng(seed + 1)
  return X + noise * rng.standard_normal(X.shape).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("steps", "max_steps"))
def _retrieval_run(X, Q, beta, *, steps: int, eps: float, max_steps: int):
  final, traj = hf.retrieve(X, Q, beta, steps, trajectory=True)
  _, taken = hf.retrieve_until(X, Q, beta, eps=eps, max_steps=max_steps)
  return final, traj.energies, taken


def retrieval(config: Config, patterns: Patterns, workdir: Path,
              log: Callable[[str], None] = print) -> dict:
  """Stores `patterns`, queries every one of them (masked / noisy) for every beta, plots the
  shown ones (query / retrieved per beta / original) and the energy per step."""
  X = jnp.asarray(patterns.X)
  n, d = patterns.X.shape
  log(f"retrieval: {patterns.source}, N={n}, D={d}; betas {_join(config.betas)}; "
      f"{config.steps} steps")
  results, finals, energies = {}, {}, {}
  norms = np.linalg.norm(patterns.X, axis=1)
  for kind in config.queries:
    Q = jnp.asarray(make_queries(patterns, kind, config.noise, config.seed))
    results[kind] = {}
    for beta in config.betas:
      final, e, taken = _retrieval_run(X, Q, jnp.float32(beta), steps=config.steps,
                                                  eps=config.eps, max_steps=config.max_steps)
      final, e = np.asarray(final), np.asarray(e)
      err = np.linalg.norm(final - patterns.X, axis=1) / norms
      nearest = np.argmax(final @ patterns.X.T, axis=1) == np.arange(n)
      increase = float(np.max((e[1:] - e[:-1]) / (1 + np.abs(e[:-1]))))
      results[kind][f"{beta:g}"] = {
          "beta": beta, "recall_rate": float(np.mean(err < config.recall_tol)),
          "nearest_is_target_rate": float(np.mean(nearest)),
          "mean_relative_error": float(np.mean(err)),
          "energy_first": float(np.mean(e[0])), "energy_last": float(np.mean(e[-1])),
          "energy_max_relative_increase": increase,
          "updates_until_eps": int(taken)}
      finals[kind, beta], energies[kind, beta] = final, e
      r = results[kind][f"{beta:g}"]
      log(f"  {kind:5s} beta {beta:<8g} recall {r['recall_rate']:.3f}  mean rel. error "
          f"{r['mean_relative_error']:.3f}  energy {r['energy_first']:.4g} -> "
          f"{r['energy_last']:.4g}  updates until eps {r['updates_until_eps']}")
    _plot_retrieval(patterns, np.asarray(Q), {b: finals[kind, b] for b in config.betas}, kind,
                    config, workdir / RETRIEVAL_FIGURE.format(kind=kind))
  _plot_energy(energies, config, patterns, workdir / ENERGY_FIGURE)
  return {"source": patterns.source, "num_patterns": n, "dim": d, "results": results,
          "recall_definition": f"||q_T - x_i|| / ||x_i|| < {config.recall_tol:g} after "
                               f"{config.steps} steps",
          "figures": [RETRIEVAL_FIGURE.format(kind=k) for k in config.queries] + [ENERGY_FIGURE]}


def _to_image(patterns: Patterns, z: np.ndarray, i: int) -> np.ndarray:
  img = np.clip(patterns.offset[i] + patterns.scale[i] * z, 0.0, 1.0).reshape(patterns.shape)
  return img[..., 0] if patterns.shape[-1] == 1 else img


def _shown(config: Config, n: int) -> np.ndarray:
  return np.linspace(0, n - 1, config.num_show).round().astype(int)


def _plot_retrieval(patterns: Patterns, Q: np.ndarray, finals: dict, kind: str, config: Config,
                    path: Path) -> None:
  shown = _shown(config, len(patterns.X))
  cols = 2 + len(config.betas)
  with runlog.figure(path, dpi=110, figsize=(1.7 * cols, 1.8 * len(shown) + 0.8)) as fig:
    axes = fig.subplots(len(shown), cols, squeeze=False)
    cmap = "gray" if patterns.shape[-1] == 1 else None
    for r, i in enumerate(shown):
      panels = [("query", Q[i])]
      for beta in config.betas:
        err = np.linalg.norm(finals[beta][i] - patterns.X[i]) / np.linalg.norm(patterns.X[i])
        panels.append((f"beta={beta:g}\nrel. err {err:.2f}", finals[beta][i]))
      panels.append(("original", patterns.X[i]))
      for c, (title, z) in enumerate(panels):
        ax = axes[r, c]
        ax.imshow(_to_image(patterns, z, i), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7)
    what = ("the bottom half masked" if kind == "mask"
            else f"added Gaussian noise (std {config.noise:g})")
    fig.suptitle(f"Retrieval after {config.steps} CCCP steps from queries with {what}\n"
                 f"{patterns.source}; small beta: metastable averages, large beta: the pattern",
                 fontsize=8)
    fig.tight_layout()


def _plot_energy(energies: dict, config: Config, patterns: Patterns, path: Path) -> None:
  from matplotlib.ticker import MaxNLocator
  kinds = list(config.queries)
  size = (3.0 * len(config.betas), 2.6 * len(kinds) + 0.6)
  with runlog.figure(path, dpi=110, figsize=size) as fig:
    axes = fig.subplots(len(kinds), len(config.betas), squeeze=False)
    shown = _shown(config, len(patterns.X))
    steps = np.arange(config.steps + 1)
    for r, kind in enumerate(kinds):
      for c, beta in enumerate(config.betas):
        ax = axes[r, c]
        e = energies[kind, beta]
        for i in shown:
          ax.plot(steps, e[:, i], marker="o", markersize=2, linewidth=0.8, alpha=0.8)
        ax.plot(steps, e.mean(axis=1), color="black", linewidth=1.6, label="mean, all queries")
        ax.set_title(f"{kind} queries, beta={beta:g}", fontsize=8)
        ax.set_xlabel("CCCP step t", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("E(q_t)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Energy per step: coloured lines are the queries shown in the retrieval figures; "
                 "it never increases", fontsize=9)
    fig.tight_layout()


# ----------------------------------------------------------------------------------------------
# Part 3: storage capacity


def theorem3_bound(d: int, beta: float, K: float, p: float) -> dict:
  """Theorem 3 of Ramsauer et al. (2008.02217): for N random patterns on the sphere of radius
  M = K sqrt(d-1), with probability 1-p at least sqrt(p) c^((d-1)/4) of them can be stored,
  c = b / W0(exp(a + ln b)), a = 2/(d-1) (1 + ln(2 beta K^2 p (d-1))), b = 2 K^2 beta / 5, provided
  c >= (2/sqrt(p))^(4/(d-1)). Returns c, the condition and the bound (None where it fails)."""
  from scipy.special import lambertw
  a = 2.0 / (d - 1) * (1.0 + math.log(2.0 * beta * K * K * p * (d - 1)))
  b = 2.0 * K * K * beta / 5.0
  c = b / float(lambertw(math.exp(a + math.log(b))).real)
  needed = (2.0 / math.sqrt(p)) ** (4.0 / (d - 1))
  bound = math.sqrt(p) * c ** ((d - 1) / 4.0) if c >= needed else None
  return {"c": c, "c_needed": needed, "bound": bound}


def sphere_patterns(rng: np.random.Generator, n: int, d: int, d_max: int, queries: int,
                    noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Stores of n random patterns uniform on the sphere of radius sqrt(d), zero-padded to d_max
  (which changes no dot product or norm, so one compiled program serves every d), and noisy
  copies of their patterns as queries, about `queries` in all. Small n gets several independent
  stores (R = queries // n), so that the rate averages over pattern sets, not over one draw.
  Returns X (R, n, d_max), targets and queries (R, B, d_max) with B = min(n, queries)."""
  stores, per_store = max(1, queries // n), min(n, queries)
  X = np.zeros((stores, n, d_max), np.float32)
  X[..., :d] = rng.standard_normal((stores, n, d))
  X *= math.sqrt(d) / np.linalg.norm(X, axis=-1, keepdims=True)
  idx = np.stack([rng.choice(n, per_store, replace=False) for _ in range(stores)])
  target = np.take_along_axis(X, idx[..., None], axis=1)
  Q = target.copy()
  Q[..., :d] += noise * rng.standard_normal((stores, per_store, d))
  return X, target, Q


@functools.partial(jax.jit, static_argnames=("steps",))
def recall_rates(X, target, Q, betas, tol, *, steps: int) -> jax.Array:
  """Recall rate per beta (K,): the fraction of queries Q (R, B, D) with ||q_T - x|| / ||x||
  < tol after `steps` updates against their stores X (R, N, D), x the target (R, B, D)."""

  def rate(beta):
    out = jax.vmap(lambda x, q: hf.retrieve(x, q, beta, steps))(X, Q)
    err = jnp.linalg.norm(out - target, axis=-1) / jnp.linalg.norm(target, axis=-1)
    return jnp.mean(err < tol)

  return jax.lax.map(rate, betas)


def capacity_from_curve(ns: Sequence[int], rates: Sequence[float], level: float = 0.9
                        ) -> tuple[float | None, bool]:
  """N where the recall rate first falls below `level` (log-linear interpolation), and whether
  that is only a lower bound (the rate never fell below it on the grid). None: below at once."""
  if rates[0] < level:
    return None, False
  for i in range(1, len(ns)):
    if rates[i] < level:
      t = (rates[i - 1] - level) / (rates[i - 1] - rates[i])
      return float(math.exp((1 - t) * math.log(ns[i - 1]) + t * math.log(ns[i]))), False
  return float(ns[-1]), True


def capacity(config: Config, workdir: Path, log: Callable[[str], None] = print) -> dict:
  """Recall rate of random patterns against N (powers of 2 up to the maximum), D and beta; the
  N where it falls below 90% against D; and Theorem 3's lower bound for the same setting."""
  dims = sorted(set(config.capacity_dims) | {config.capacity_dim})
  ns = [2 ** k for k in range(1, int(math.log2(config.capacity_max_patterns)) + 1)]
  betas = jnp.asarray(config.capacity_betas, jnp.float32)
  rng = np.random.default_rng(config.seed + 2)
  log(f"capacity: random patterns on the sphere |x| = sqrt(D), D in {_join(dims)}, N up to "
      f"{ns[-1]}, betas {_join(config.capacity_betas)}, {config.capacity_queries} noisy queries "
      f"(noise std {config.capacity_noise:g} per coordinate), {config.capacity_steps} update(s)")
  rates = {}
  for d in dims:
    rates[d] = {}
    for n in ns:
      X, target, Q = sphere_patterns(rng, n, d, max(dims), config.capacity_queries,
                                     config.capacity_noise)
      r = recall_rates(X, target, Q, betas, config.recall_tol, steps=config.capacity_steps)
      rates[d][n] = [float(x) for x in np.asarray(r)]
    log(f"  D={d:<3d} recall at N={ns[0]}..{ns[-1]}: " + "  ".join(
        f"beta {b:g}: " + "".join(_spark(rates[d][n][j]) for n in ns)
        for j, b in enumerate(config.capacity_betas)))
  per_beta = {}
  for j, beta in enumerate(config.capacity_betas):
    caps = {}
    for d in dims:
      n_star, censored = capacity_from_curve(ns, [rates[d][n][j] for n in ns])
      theory = theorem3_bound(d, beta, math.sqrt(d / (d - 1)), config.failure_prob)
      caps[d] = {"capacity_90": n_star, "at_least": censored, "theorem3": theory}
    measured = [(d, c["capacity_90"]) for d, c in caps.items()
                if c["capacity_90"] is not None and not c["at_least"]]
    growth = None
    if len(measured) >= 2:
      slope, _ = np.polyfit([d for d, _ in measured], [math.log(c) for _, c in measured], 1)
      growth = float(slope)
    per_beta[f"{beta:g}"] = {"beta": beta, "by_dim": {str(d): c for d, c in caps.items()},
                             "log_capacity_per_dim": growth}
  _plot_capacity(rates, ns, dims, per_beta, config, workdir / CAPACITY_FIGURE)
  return {"dims": dims, "num_patterns": ns, "betas": list(config.capacity_betas),
          "recall_rate": {str(d): {str(n): rates[d][n] for n in ns} for d in dims},
          "per_beta": per_beta, "figures": [CAPACITY_FIGURE],
          "recall_definition": f"||q_T - x_i|| / ||x_i|| < {config.recall_tol:g} after "
                               f"{config.capacity_steps} update(s) from x_i + N(0, "
                               f"{config.capacity_noise:g}^2 I)",
          "theorem3": f"Ramsauer et al. Theorem 3, K = sqrt(D/(D-1)), p = {config.failure_prob:g}"}


def _spark(rate: float) -> str:
  return " .:-=+*#%@"[min(9, int(rate * 9.999))]


def _plot_capacity(rates, ns, dims, per_beta, config: Config, path: Path) -> None:
  import matplotlib
  with runlog.figure(path, dpi=110, figsize=(14, 5.2)) as fig:
    ax_n, ax_d = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1, 1.1)})
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    d0 = config.capacity_dim
    dense = np.arange(min(dims), max(dims) + 1)
    for j, beta in enumerate(config.capacity_betas):
      colour = colours[j % len(colours)]
      info = per_beta[f"{beta:g}"]
      ax_n.plot(ns, [rates[d0][n][j] for n in ns], marker="o", color=colour,
                label=f"beta={beta:g}")
      caps = info["by_dim"]
      measured = [(d, caps[str(d)]["capacity_90"]) for d in dims
                  if caps[str(d)]["capacity_90"] is not None and not caps[str(d)]["at_least"]]
      censored = [(d, caps[str(d)]["capacity_90"]) for d in dims if caps[str(d)]["at_least"]]
      growth = info["log_capacity_per_dim"]
      label = f"beta={beta:g} measured" + (f" ~ exp({growth:.2f} D)" if growth else "")
      if measured:
        ax_d.plot(*zip(*measured), marker="o", color=colour, label=label)
      if censored:
        ax_d.plot(*zip(*censored), marker="^", linestyle="none", color=colour,
                  markerfacecolor="none", label=None if measured else label)
      theory = [theorem3_bound(int(d), beta, math.sqrt(d / (d - 1)), config.failure_prob)
                for d in dense]
      values = np.array([math.sqrt(config.failure_prob) * t["c"] ** ((d - 1) / 4)
                         for d, t in zip(dense, theory)])
      holds = np.array([t["bound"] is not None for t in theory])
      rate = math.log(theory[-1]["c"]) / 4
      # Each legend entry shows the style drawn: only what exists for this beta is labelled.
      if not holds.all():
        ax_d.plot(dense, np.where(holds, np.nan, values), linestyle=":", color=colour,
                  linewidth=1.2, label=f"beta={beta:g} Theorem 3, condition fails (dotted)")
      if holds.any():
        ax_d.plot(dense, np.where(holds, values, np.nan), linestyle="--", marker="x",
                  markersize=4, color=colour, linewidth=1.5,
                  label=f"beta={beta:g} Theorem 3 ~ exp({rate:.2f} D) (dashed)")
    ax_n.set_xscale("log", base=2)
    ax_n.set_xlabel("number of stored patterns N")
    ax_n.set_ylabel("recall rate")
    ax_n.set_title(f"(a) D={d0}: recall of noisy queries after {config.capacity_steps} update(s)",
                   fontsize=9)
    ax_n.grid(alpha=0.3)
    ax_n.legend(fontsize=8)
    ax_d.set_yscale("log", base=2)
    ax_d.set_xlabel("dimension D")
    ax_d.set_ylabel("number of patterns N")
    ax_d.set_title("(b) N where recall falls below 90% (triangles: not yet at the largest N "
                   "tried)\nagainst Theorem 3's lower bound sqrt(p) c^((D-1)/4)", fontsize=9)
    ax_d.grid(alpha=0.3)
    ax_d.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.text(0.5, 0.01,
             "Patterns uniform on the sphere |x| = sqrt(D) (Theorem 3's setting, K = "
             f"sqrt(D/(D-1))), queries x_i + N(0, {config.capacity_noise:g}^2 I); recalled: "
             f"relative error < {config.recall_tol:g}.\nTheorem 3 (p={config.failure_prob:g}) "
             "is a lower bound, drawn dashed with x where its condition c >= "
             "(2/sqrt(p))^(4/(D-1)) holds and dotted where it fails (no guarantee there).",
             ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))


# ----------------------------------------------------------------------------------------------
# The run


def run(config: Config, workdir: str | Path, data_path: str | None = None,
        log: Callable[[str], None] = print, download: str = "never",
        data: intel.IntelData | None = None) -> dict:
  """Runs `config.parts` and writes summary.json (+ check.md and PNGs) into `workdir`.

  The data is loaded before the workdir is touched, so bad input changes nothing there.
  """
  config.validate()
  patterns = (load_patterns(config, data_path, log=log, download=download, data=data)
              if "retrieval" in config.parts else None)
  with workdir_lib.locked(workdir) as workdir:
    return _run(config, patterns, workdir, log)


def _run(config: Config, patterns: Patterns | None, workdir: Path, log) -> dict:
  archived = workdir_lib.archive(workdir, RUN_FILES)
  if archived:
    log(f"moved the previous run's outputs to {archived}")
  summary = {"config": config.to_json(), "device": _device_name(), "jax_version": jax.__version__}
  if "check" in config.parts:
    rows, table = check(config, log=log)
    (workdir / CHECK_TABLE).write_text(table)
    summary["check"] = {"all_ok": all(r.ok for r in rows),
                        "rows": [r._asdict() for r in rows], "table": CHECK_TABLE}
  if "retrieval" in config.parts:
    summary["retrieval"] = retrieval(config, patterns, workdir, log=log)
  if "capacity" in config.parts:
    summary["capacity"] = capacity(config, workdir, log=log)
  runlog.write_json(workdir / runlog.SUMMARY, summary)
  return summary


def _device_name() -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()}"
