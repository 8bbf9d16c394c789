"""Retrieval of images from a modern Hopfield network: N stored patterns (Intel training images
standardised per image when found, else random +-1 patterns), queried with the bottom half
masked or with noise, for several beta: small beta gives metastable averages of many images,
large beta the pattern itself. The figures show the queries, the retrieved states and the
energy per CCCP step (it never increases)."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hw2jax import markdown, plots, records
from hw2jax.data import sources
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError
from hw2jax.models import hopfield as hf

PATTERN_SOURCES = ("auto", "intel", "random")
QUERY_KINDS = ("mask", "noise")
FIGURE = "retrieval_{kind}.png"
ENERGY_FIGURE = "energy.png"
FIGURES = (*(FIGURE.format(kind=k) for k in QUERY_KINDS), ENERGY_FIGURE)
# Random patterns have the shape of an Intel image, so the same betas suit both.
IMAGE_SHAPE = (48, 48, 3)
# Retrieval stores training images only: a file whose other splits Q2 would refuse still serves.
TRAIN_ONLY = ("train",)
# float32 holds a number below 2^24 to within about 1 (its 24-bit significand).
FLOAT32_EXACT = 2.0 ** 24


def beta_range(n: int, d: int, noise: float) -> tuple[float, float]:
  """The betas whose energy and softmax float32 computes: for N patterns of norm sqrt(D) and
  queries with Gaussian noise of std `noise` per entry, both log(N)/beta (E1's term, which lse's
  cancels) and the largest logit beta |x| |q| = beta D sqrt(1 + noise^2) must stay below 2^24.

  Above, a logit's rounding error passes 1: XLA fuses softmax's max-subtraction into an FMA,
  which hands that error to exp, and ~88 times further exp overflows and the states turn NaN.
  Below, the energy drowns in log(N)/beta's rounding. (N < 1 is refused elsewhere.)
  """
  return math.log(max(n, 1)) / FLOAT32_EXACT, FLOAT32_EXACT / (d * math.hypot(1.0, noise))


def beta_check(betas, flag: str, n: int, d: int, noise: float, noise_flag: str
               ) -> tuple[bool, str]:
  """`records.require`'s check that every beta is in `beta_range`, naming the range."""
  low, high = beta_range(n, d, noise)
  if low > high:
    return False, (f"{noise_flag}={noise:g} is too large: with N={n}, D={d} no beta keeps both "
                   "log(N)/beta and the largest logit beta*D*sqrt(1+noise^2) below 2^24 "
                   "(float32)")
  return (all(low <= b <= high for b in betas),
          f"--{flag}={markdown.numbers(betas)} must be from {low:.3g} to {high:.4g} with N={n}, "
          f"D={d}, noise {noise:g}: float32 holds log(N)/beta and the largest logit "
          "beta*D*sqrt(1+noise^2) only below 2^24; beyond, the energy or softmax is lost or NaN")


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
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

  def validate(self) -> "Config":
    records.require([
        (self.patterns in PATTERN_SOURCES,
         f"--patterns={self.patterns!r} is not one of {', '.join(PATTERN_SOURCES)}"),
        (self.num_patterns >= 2, f"--num_patterns={self.num_patterns} must be at least 2"),
        (len(self.betas) >= 1 and all(records.positive(b) for b in self.betas)
         and len(set(self.betas)) == len(self.betas),
         f"--betas={markdown.numbers(self.betas)} must be positive numbers, each given once"),
        (records.non_negative(self.noise), f"--noise={self.noise} must be a finite number >= 0"),
        beta_check(self.betas, "betas", self.num_patterns, math.prod(IMAGE_SHAPE),
                   self.noise if "noise" in self.queries else 0.0, "--noise"),
        (len(self.queries) >= 1 and all(q in QUERY_KINDS for q in self.queries),
         f"--queries={','.join(self.queries)}: use some of {', '.join(QUERY_KINDS)}"),
        (self.steps >= 1, f"--steps={self.steps} must be at least 1"),
        (records.positive(self.eps), f"--eps={self.eps} must be a positive number"),
        (self.max_steps >= 1, f"--max_steps={self.max_steps} must be at least 1"),
        (1 <= self.num_show <= self.num_patterns,
         f"--num_show={self.num_show} must be between 1 and --num_patterns={self.num_patterns}"),
        (0 < self.recall_tol < 1, f"--recall_tol={self.recall_tol} must be in (0, 1)"),
    ])
    return self


@dataclasses.dataclass(frozen=True)
class Scores:
  """One kind of query at one beta, over every stored pattern."""
  beta: float
  recall_rate: float
  nearest_is_target_rate: float
  mean_relative_error: float
  energy_first: float
  energy_last: float
  energy_max_relative_increase: float
  updates_until_eps: int


@dataclasses.dataclass(frozen=True)
class Result:
  """{query kind: {beta: Scores}} and how it was made; the figures are in the workdir."""
  source: str
  num_patterns: int
  dim: int
  results: dict[str, dict[str, Scores]]
  recall_definition: str
  figures: list[str]


class Patterns(NamedTuple):
  """Stored patterns X (N, D), standardised per pattern, and how to show them as images."""
  X: np.ndarray
  shape: tuple[int, int, int]          # (H, W, C) of one image
  offset: np.ndarray                   # (N,) image = clip(offset + scale * x, 0, 1)
  scale: np.ndarray                    # (N,)
  source: str


def load_patterns(config: Config, data_path: str | None = None,
                  log: Callable[[str], None] = print, download: str = "never",
                  data: ImageData | None = None) -> Patterns:
  """N train images of the Intel data or any image dataset (`data_path`, or `data` when already
  loaded) when found or asked for, else N random +-1 patterns of 48x48x3 (the betas are
  checked again against the images' own dimension).

  Intel images are standardised per image (zero mean, unit variance over pixels), so that every
  stored pattern has the same norm sqrt(D): otherwise high-contrast images win every query.
  """
  path = None
  if data is not None and config.patterns != "random":
    path = data.source
  elif config.patterns != "random":
    try:
      path = sources.discover_intel(data_path, download=download, log=log, splits=TRAIN_ONLY)
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
  data = data if data is not None else sources.load_intel(path, log=log, splits=TRAIN_ONLY)
  images = data.train_images
  if len(images) < config.num_patterns:
    raise UserError(f"--num_patterns={config.num_patterns} but {path} has only {len(images)} "
                    "training images; ask for fewer")
  chosen = np.sort(rng.choice(len(images), config.num_patterns, replace=False))
  pixels = images[chosen].reshape(config.num_patterns, -1).astype(np.float32) / 255.0
  offset, scale = pixels.mean(axis=1), pixels.std(axis=1) + 1e-6
  flat = int(np.sum(np.ptp(pixels, axis=1) == 0))
  if flat:    # standardised to all zeros: nothing to retrieve, and its relative error is 0/0
    raise UserError(f"{flat} of the {config.num_patterns} training images chosen from {path} "
                    "are of one colour (every pixel the same): no pattern to store; remove "
                    "such images from the data")
  X = (pixels - offset[:, None]) / scale[:, None]
  records.require([beta_check(config.betas, "betas", config.num_patterns, X.shape[1],
                              config.noise if "noise" in config.queries else 0.0, "--noise")])
  return Patterns(X, images.shape[1:], offset, scale,
                  f"{config.num_patterns} {data.name} train images from {data.source}")


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
              log: Callable[[str], None] = print) -> Result:
  """Stores `patterns`, queries every one of them (masked / noisy) for every beta, plots the
  shown ones (query / retrieved per beta / original) and the energy per step."""
  X = jnp.asarray(patterns.X)
  n, d = patterns.X.shape
  log(f"retrieval: {patterns.source}, N={n}, D={d}; betas {markdown.numbers(config.betas)}; "
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
      r = results[kind][f"{beta:g}"] = Scores(
          beta=beta, recall_rate=float(np.mean(err < config.recall_tol)),
          nearest_is_target_rate=float(np.mean(nearest)),
          mean_relative_error=float(np.mean(err)),
          energy_first=float(np.mean(e[0])), energy_last=float(np.mean(e[-1])),
          energy_max_relative_increase=increase, updates_until_eps=int(taken))
      finals[kind, beta], energies[kind, beta] = final, e
      log(f"  {kind:5s} beta {beta:<8g} recall {r.recall_rate:.3f}  mean rel. error "
          f"{r.mean_relative_error:.3f}  energy {r.energy_first:.4g} -> "
          f"{r.energy_last:.4g}  updates until eps {r.updates_until_eps}")
    _plot_retrieval(patterns, np.asarray(Q), {b: finals[kind, b] for b in config.betas}, kind,
                    config, workdir / FIGURE.format(kind=kind))
  _plot_energy(energies, config, patterns, workdir / ENERGY_FIGURE)
  return Result(source=patterns.source, num_patterns=n, dim=d, results=results,
                recall_definition=f"||q_T - x_i|| / ||x_i|| < {config.recall_tol:g} after "
                                  f"{config.steps} steps",
                figures=[FIGURE.format(kind=k) for k in config.queries] + [ENERGY_FIGURE])


def _to_image(patterns: Patterns, z: np.ndarray, i: int) -> np.ndarray:
  img = np.clip(patterns.offset[i] + patterns.scale[i] * z, 0.0, 1.0).reshape(patterns.shape)
  return img[..., 0] if patterns.shape[-1] == 1 else img


def _shown(config: Config, n: int) -> np.ndarray:
  return np.linspace(0, n - 1, config.num_show).round().astype(int)


def _plot_retrieval(patterns: Patterns, Q: np.ndarray, finals: dict, kind: str, config: Config,
                    path: Path) -> None:
  shown = _shown(config, len(patterns.X))
  cols = 2 + len(config.betas)
  with plots.figure(path, dpi=110, figsize=(1.7 * cols, 1.8 * len(shown) + 0.8)) as fig:
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
  with plots.figure(path, dpi=110, figsize=size) as fig:
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
