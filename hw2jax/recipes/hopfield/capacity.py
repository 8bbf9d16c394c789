"""Storage capacity of a modern Hopfield network: the recall rate of random patterns against the
number stored N, the dimension D and beta; the N where it falls below 90% against D, beside the
exponential lower bound of Theorem 3 of Ramsauer et al. (arXiv 2008.02217)."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hw2jax import markdown, plots, records
from hw2jax.recipes.hopfield import retrieval as retrieval_lib
from hw2jax.models import hopfield as hf

FIGURE = "capacity.png"


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
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
    records.require([
        (0 < self.recall_tol < 1, f"--recall_tol={self.recall_tol} must be in (0, 1)"),
        (self.capacity_dim >= 2, f"--capacity_dim={self.capacity_dim} must be at least 2"),
        (len(self.capacity_dims) >= 1 and all(d >= 2 for d in self.capacity_dims),
         f"--capacity_dims={markdown.numbers(self.capacity_dims)} must be dimensions >= 2"),
        (len(self.capacity_betas) >= 1
         and all(records.positive(b) for b in self.capacity_betas),
         f"--capacity_betas={markdown.numbers(self.capacity_betas)} must be positive numbers"),
        (records.non_negative(self.capacity_noise),
         f"--capacity_noise={self.capacity_noise} must be a finite number >= 0"),
        retrieval_lib.beta_check(self.capacity_betas, "capacity_betas",
                                 self.capacity_max_patterns,
                                 max(2, self.capacity_dim, *self.capacity_dims),
                                 self.capacity_noise, "--capacity_noise"),
        (self.capacity_max_patterns >= 2,
         f"--capacity_max_patterns={self.capacity_max_patterns} must be at least 2"),
        (self.capacity_queries >= 1,
         f"--capacity_queries={self.capacity_queries} must be at least 1"),
        (self.capacity_steps >= 1, f"--capacity_steps={self.capacity_steps} must be at least 1"),
        (0 < self.failure_prob <= 1, f"--failure_prob={self.failure_prob} must be in (0, 1]"),
    ])
    return self


@dataclasses.dataclass(frozen=True)
class Theorem3:
  """c, the condition's threshold, and the bound (None where the condition fails)."""
  c: float
  c_needed: float
  bound: float | None


@dataclasses.dataclass(frozen=True)
class DimCapacity:
  capacity_90: float | None        # N where recall falls below 90% (None: below at once)
  at_least: bool                   # it never fell on the grid: a lower bound
  theorem3: Theorem3


@dataclasses.dataclass(frozen=True)
class BetaCapacity:
  beta: float
  by_dim: dict[str, DimCapacity]
  log_capacity_per_dim: float | None


@dataclasses.dataclass(frozen=True)
class Result:
  dims: list[int]
  num_patterns: list[int]
  betas: list[float]
  recall_rate: dict[str, dict[str, list[float]]]
  per_beta: dict[str, BetaCapacity]
  figures: list[str]
  recall_definition: str
  theorem3: str


def theorem3_bound(d: int, beta: float, K: float, p: float) -> Theorem3:
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
  return Theorem3(c=c, c_needed=needed, bound=bound)


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


def capacity(config: Config, workdir: Path, log: Callable[[str], None] = print) -> Result:
  """Recall rate of random patterns against N (powers of 2 up to the maximum), D and beta; the
  N where it falls below 90% against D; and Theorem 3's lower bound for the same setting."""
  dims = sorted(set(config.capacity_dims) | {config.capacity_dim})
  ns = [2 ** k for k in range(1, int(math.log2(config.capacity_max_patterns)) + 1)]
  betas = jnp.asarray(config.capacity_betas, jnp.float32)
  rng = np.random.default_rng(config.seed + 2)
  log(f"capacity: random patterns on the sphere |x| = sqrt(D), D in {markdown.numbers(dims)}, "
      f"N up to {ns[-1]}, betas {markdown.numbers(config.capacity_betas)}, "
      f"{config.capacity_queries} noisy queries (noise std {config.capacity_noise:g} per "
      f"coordinate), {config.capacity_steps} update(s)")
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
      caps[d] = DimCapacity(capacity_90=n_star, at_least=censored, theorem3=theory)
    measured = [(d, c.capacity_90) for d, c in caps.items()
                if c.capacity_90 is not None and not c.at_least]
    growth = None
    if len(measured) >= 2:
      slope, _ = np.polyfit([d for d, _ in measured], [math.log(c) for _, c in measured], 1)
      growth = float(slope)
    per_beta[f"{beta:g}"] = BetaCapacity(beta=beta, by_dim={str(d): c for d, c in caps.items()},
                                         log_capacity_per_dim=growth)
  _plot_capacity(rates, ns, dims, per_beta, config, workdir / FIGURE)
  return Result(
      dims=dims, num_patterns=ns, betas=list(config.capacity_betas),
      recall_rate={str(d): {str(n): rates[d][n] for n in ns} for d in dims},
      per_beta=per_beta, figures=[FIGURE],
      recall_definition=f"||q_T - x_i|| / ||x_i|| < {config.recall_tol:g} after "
                        f"{config.capacity_steps} update(s) from x_i + N(0, "
                        f"{config.capacity_noise:g}^2 I)",
      theorem3=f"Ramsauer et al. Theorem 3, K = sqrt(D/(D-1)), p = {config.failure_prob:g}")


def _spark(rate: float) -> str:
  return " .:-=+*#%@"[min(9, int(rate * 9.999))]


def _plot_capacity(rates, ns, dims, per_beta, config: Config, path: Path) -> None:
  import matplotlib
  with plots.figure(path, dpi=110, figsize=(14, 5.2)) as fig:
    ax_n, ax_d = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1, 1.1)})
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    d0 = config.capacity_dim
    dense = np.arange(min(dims), max(dims) + 1)
    for j, beta in enumerate(config.capacity_betas):
      colour = colours[j % len(colours)]
      info = per_beta[f"{beta:g}"]
      ax_n.plot(ns, [rates[d0][n][j] for n in ns], marker="o", color=colour,
                label=f"beta={beta:g}")
      caps = info.by_dim
      measured = [(d, caps[str(d)].capacity_90) for d in dims
                  if caps[str(d)].capacity_90 is not None and not caps[str(d)].at_least]
      censored = [(d, caps[str(d)].capacity_90) for d in dims if caps[str(d)].at_least]
      growth = info.log_capacity_per_dim
      label = f"beta={beta:g} measured" + (f" ~ exp({growth:.2f} D)" if growth else "")
      if measured:
        ax_d.plot(*zip(*measured), marker="o", color=colour, label=label)
      if censored:
        ax_d.plot(*zip(*censored), marker="^", linestyle="none", color=colour,
                  markerfacecolor="none", label=None if measured else label)
      theory = [theorem3_bound(int(d), beta, math.sqrt(d / (d - 1)), config.failure_prob)
                for d in dense]
      values = np.array([math.sqrt(config.failure_prob) * t.c ** ((d - 1) / 4)
                         for d, t in zip(dense, theory)])
      holds = np.array([t.bound is not None for t in theory])
      rate = math.log(theory[-1].c) / 4
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
