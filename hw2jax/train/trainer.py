"""Model-agnostic training: TrainState with BatchNorm statistics, jitted steps, epoch runners.

The dataset lives on the device; an epoch is a device-side permutation cut into fixed-size
batches (the last padded and masked), one `lax.scan` on GPU/TPU (a few, `scan_chunks`, when a
`Meter` shows the steps) and a loop of jitted steps on CPU (where a scanned CNN epoch was 7x
slower, BUILD.md). A task plugs in two pure functions:
  loss_fn(apply_fn, params, model_state, batch, mask, rng)
      -> (mean loss, (new model_state, sums))
  eval_fn(apply_fn, variables, batch, mask) -> sums
`mask` (B,) is 1 for real examples; `sums` holds 'count' and per-batch SUMS over the same units,
so that one division of the epoch's totals (`summarize`) gives exact means. Words of several
lengths come as `Widths` (the same examples at a few padded widths); an epoch's `BatchPlan`
trains each batch on the narrowest copy that holds it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import random as jax_random
import numpy as np
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh

from hw2jax.train import sharding
from hw2jax.train.meter import Meter
from hw2jax.train.optimizer import Optimizer

EPOCH_MODES = ("auto", "scan", "loop")


def _threefry_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  """Random bits of XLA's RngBitGenerator with its ThreeFry algorithm: the backend's default
  (Philox on CPU and GPU) makes 32-bit words about 3x slower on XLA:CPU (BUILD.md)."""
  dtype = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}[bit_width]
  return lax.rng_bit_generator(key, shape, dtype=dtype,
                               algorithm=lax.RandomAlgorithm.RNG_THREE_FRY)[1]


# XLA's RngBitGenerator instead of jax's threefry: 3-4x faster to compile on CPU and cheaper per
# step on accelerators. JAX's 'rbg' keys (seeding, splitting, folding), drawing with ThreeFry.
PRNG_IMPL = jax_random.define_prng_impl(
    key_shape=jax_random.rbg_prng_impl.key_shape, seed=jax_random.rbg_prng_impl.seed,
    split=jax_random.rbg_prng_impl.split, fold_in=jax_random.rbg_prng_impl.fold_in,
    random_bits=_threefry_bits, name="rbg_threefry", tag="rbg3")


class TrainState(train_state.TrainState):
  """Params, optimizer state, step, plus `batch_stats` ({} if unused) and the run's PRNG key.

  `key` holds raw key data (uint32, so checkpoints need no special handling); `rng(state)`
  wraps it. Dropout keys are `fold_in(rng, step)`, epoch permutations
  `fold_in(fold_in(rng, 1), epoch)`: everything random is a function of (seed, step, epoch), so
  a resumed run repeats exactly.
  """
  batch_stats: Any = struct.field(default_factory=dict)
  key: jax.Array = None

  def variables(self) -> dict:
    """What `apply_fn` takes in eval mode: {'params'}, plus 'batch_stats' when the model has
    any (a model without BatchNorm rejects an empty collection)."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


def prng_key(seed: int) -> jax.Array:
  """A typed PRNG key of the project's implementation."""
  return jax.random.key(seed, impl=PRNG_IMPL)


def rng(state: TrainState) -> jax.Array:
  """The run's typed PRNG key."""
  return jax.random.wrap_key_data(state.key, impl=PRNG_IMPL)


def create_train_state(model, init_inputs: tuple, optimizer: Optimizer, seed: int,
                       **init_kwargs) -> TrainState:
  """Initialises `model` on `init_inputs` (a batch's shapes suffice) with key `seed`, and
  `optimizer` (its rate included) on the parameters."""
  params_key, dropout_key, run_key = jax.random.split(prng_key(seed), 3)
  variables = _jitted_init(model, tuple(sorted(init_kwargs.items())))(
      {"params": params_key, "dropout": dropout_key}, *init_inputs)
  params = variables["params"]
  # A strongly typed step counter: a restored checkpoint's step has the same type, so resuming
  # reuses the compiled (and disk-cached) programs instead of compiling them again.
  return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params,
                    tx=optimizer.tx, opt_state=optimizer.init(params),
                    batch_stats=variables.get("batch_stats", {}),
                    key=jax.random.key_data(run_key))


@functools.lru_cache(maxsize=64)
def _jitted_init(model, init_kwargs: tuple):
  """One compiled `model.init` per (model config, keyword arguments): runs of a sweep share it."""
  return jax.jit(functools.partial(model.init, **dict(init_kwargs)))


def resolve_mode(mode: str, backend: str | None = None) -> str:
  """'auto' -> 'scan' on GPU/TPU, 'loop' on CPU."""
  if mode not in EPOCH_MODES:
    raise ValueError(f"epoch_mode must be one of {EPOCH_MODES}, got {mode!r}")
  if mode != "auto":
    return mode
  backend = backend or jax.default_backend()
  return "loop" if backend == "cpu" else "scan"


# XLA:CPU hands matmuls, convolutions, elementwise ops and reductions to its YNNPACK library
# by default; handing it the matmuls only (convolutions back to Eigen) made the CNN step 1.15x
# and the P2G step 1.05x faster on a 2-core CPU (BUILD.md, "CPU speed").
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options(backend: str | None = None) -> dict | None:
  """The training programs' XLA options on `backend` (default: JAX's): CPU_COMPILER_OPTIONS on
  a CPU whose XLA knows them, else None (a jaxlib without the option compiles as it is)."""
  if (backend or jax.default_backend()) != "cpu" or not _cpu_options_known():
    return None
  return dict(CPU_COMPILER_OPTIONS)


@functools.cache
def _cpu_options_known() -> bool:
  try:
    jax.jit(lambda x: x @ x, compiler_options=CPU_COMPILER_OPTIONS).lower(
        jnp.ones((2, 2))).compile()
  except Exception:                         # noqa: BLE001 - an unknown option or value
    return False
  return True


# An epoch on the scan path with progress shown: about this many scans (see `scan_chunks`).
SCAN_CHUNKS = 8


def scan_chunks(steps: int, chunks: int = SCAN_CHUNKS) -> list[tuple[int, int]]:
  """(first row, rows) of the scans an epoch of `steps` runs as: one, or about `chunks`. Each
  length compiles its own program, so the chunks are equal where a count from chunks/2 to
  2*chunks divides `steps` (the nearest to `chunks`), else of two lengths at most."""
  if chunks <= 1 or steps < chunks // 2 or steps < 2:
    return [(0, steps)]
  divisors = [c for c in range(max(2, chunks // 2), 2 * chunks + 1) if steps % c == 0]
  count = min(divisors, key=lambda c: abs(c - chunks)) if divisors else min(chunks, steps)
  sizes = [len(part) for part in np.array_split(np.arange(steps), count)]
  starts = np.cumsum([0, *sizes[:-1]]).tolist()
  return list(zip(starts, sizes))


def num_batches(n: int, batch_size: int) -> int:
  return max(1, math.ceil(n / batch_size))


def batch_plan(key: jax.Array | None, n: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Example indices and a validity mask, both (num_batches, batch_size).

  With a key the order is a permutation of range(n); without, it is sequential. The last batch
  is padded with index 0 and mask 0, so every example is seen exactly once.
  """
  nb = num_batches(n, batch_size)
  order = jnp.arange(n, dtype=jnp.int32) if key is None else jax.random.permutation(key, n)
  pad = nb * batch_size - n
  idx = jnp.concatenate([order.astype(jnp.int32), jnp.zeros((pad,), jnp.int32)])
  mask = jnp.arange(nb * batch_size) < n
  return idx.reshape(nb, batch_size), mask.reshape(nb, batch_size)


def gather(data, idx: jax.Array):
  """The batch `idx` (B,) of every array in `data` (a pytree with a leading example axis)."""
  return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), data)


def epoch_key(state: TrainState, epoch: int) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(rng(state), 1), epoch)


def _add(acc, sums):
  return jax.tree_util.tree_map(lambda a, s: a + s.astype(a.dtype), acc, sums)


def _zeros_like_sums(shape_tree):
  return jax.tree_util.tree_map(lambda s: jnp.zeros((), jnp.float32), shape_tree)


class Widths(tuple):
  """One dataset stored at several padded widths, narrowest first: every copy holds all N
  examples in the same order (cut short where they do not fit), and `narrowest` (N,) is the index
  of the narrowest copy that holds each example whole. `Trainer.train_epoch` and
  `Trainer.evaluate` accept it wherever they accept a single dataset (which is one width)."""

  def __new__(cls, copies, narrowest):
    self = super().__new__(cls, copies)
    self.narrowest = np.asarray(narrowest, np.int32)
    sizes = {_num_examples(c) for c in self} | {len(self.narrowest)}
    if len(sizes) != 1:
      raise ValueError(f"every copy and `narrowest` must hold the same examples, got sizes "
                       f"{sizes}")
    return self

  @classmethod
  def of(cls, data) -> "Widths":
    """`data` itself if it is `Widths`, else a single dataset as one width."""
    if isinstance(data, Widths):
      return data
    return cls([data], np.zeros(_num_examples(data), np.int32))


class BatchPlan(NamedTuple):
  """Which examples each batch of an epoch holds, and which copy (width) it trains on.

  idx (num_batches, B) int32 example indices, mask (num_batches, B) bool (padding of the last
  batch is False), width (num_batches,) int32 on the host: the narrowest copy holding every
  member of the batch (all 0 for a single dataset).
  """
  idx: jax.Array
  mask: jax.Array
  width: np.ndarray


def train_step(state: TrainState, batch, mask: jax.Array, *, loss_fn: Callable,
               mesh: Mesh | None = None):
  """One optimizer step on a gathered `batch` (leading axis B) with validity `mask` (B,):
  returns (new state, the batch's summed metrics). Pure; with `mesh` the batch is split along
  its 'data' axis (data parallelism) and XLA all-reduces the gradients."""
  batch, mask = _split(mesh, (batch, mask))
  dropout_rng = jax.random.fold_in(rng(state), state.step)
  grads, (model_state, sums) = jax.grad(functools.partial(loss_fn, state.apply_fn),
                                        has_aux=True)(
      state.params, state.batch_stats, batch, mask.astype(jnp.float32), dropout_rng)
  return state.apply_gradients(grads=grads, batch_stats=model_state), sums


def _split(mesh: Mesh | None, tree):
  """Constrains batch-major arrays to be split along the mesh's 'data' axis."""
  if mesh is None:
    return tree
  split = sharding.split_batch(mesh)
  return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, split), tree)


class Trainer:
  """Train and evaluate one task on device-resident data; its programs trace once per shape.

  Public: `put` (a state or dataset onto the trainer's devices), `train_epoch`, `evaluate`
  (both return host floats: the epoch's means of the task's sums, e.g. `loss`, `accuracy`),
  `mode` ('scan' or 'loop'), `mesh`, `batch_size`, `eval_batch_size`.
  """

  def __init__(self, loss_fn: Callable, eval_fn: Callable, *, batch_size: int,
               eval_batch_size: int = 1000, epoch_mode: str = "auto",
               mesh: Mesh | None = None):
    """`mesh`: data parallelism over its 'data' axis (see hw2jax.train.sharding); None: one
    device."""
    self.loss_fn, self.eval_fn = loss_fn, eval_fn
    self.mesh = mesh
    sharding.check_batch_size(batch_size, mesh)
    self.batch_size = batch_size
    # Evaluation batches split evenly too (rounded up to the devices). A split smaller than a
    # batch is one batch of its own size: 12 examples are not padded to 1000 and computed.
    self.eval_batch_size = self._round_to_devices(eval_batch_size)
    self.mode = resolve_mode(epoch_mode)
    # Donating the state saves memory on accelerators; on CPU it made no step faster (BUILD.md).
    donate = jax.default_backend() != "cpu"
    jit = functools.partial(jax.jit, compiler_options=compiler_options())
    self._loop_step = jit(self._loop_step_fn, donate_argnums=(0, 1) if donate else ())
    self._loop_eval_step = jit(self._loop_eval_step_fn)
    self._scan_epoch = jit(self._scan_epoch_fn, donate_argnums=(0, 1) if donate else ())
    self._scan_eval = jit(self._scan_eval_fn)
    self._plan = jax.jit(batch_plan, static_argnums=(1, 2))
    self._zero_train_sums = jax.jit(self._zero_train_sums_fn)
    self._zero_eval_sums = jax.jit(self._zero_eval_sums_fn)

  def put(self, tree):
    """A state or dataset (numpy or device arrays) onto the trainer's devices: replicated on
    every device of the mesh, or the default device."""
    return sharding.put_replicated(tree, self.mesh)

  # -- drivers ----------------------------------------------------------------------------------

  def train_epoch(self, state: TrainState, data, epoch: int, meter: Meter | None = None
                  ) -> tuple[TrainState, dict]:
    """One pass over every example of `data` (a dataset or `Widths`) in a random order seeded
    by (state.key, epoch): random batches, each on the narrowest copy that holds it. `meter`
    sees the steps finish (the scan path then runs an epoch as a few scans, `scan_chunks`)."""
    widths = Widths.of(data)
    copies = tuple(widths)
    plan = self.plan_epoch(state, widths, epoch)
    steps = len(plan.width)
    meter = meter if meter is not None and meter.enabled else None
    if meter is not None:
      meter.begin(steps)
    acc, pos = self._zero_train_sums(state, copies[0]), jnp.zeros((), jnp.int32)
    if self.mode == "scan":
      for start, length in scan_chunks(steps, chunks=1 if meter is None else SCAN_CHUNKS):
        state, acc, pos = self._scan_epoch(state, acc, pos, copies, plan.idx, plan.mask,
                                           plan.width[start:start + length])
        if meter is not None:
          meter.step(start + length, pos)
    else:
      for count, k in enumerate(plan.width.tolist(), 1):
        state, acc, pos = self._loop_step(state, acc, pos, copies[k], plan.idx, plan.mask)
        if meter is not None:
          meter.step(count, pos)
    if meter is not None:
      meter.wait()
    return state, summarize(acc)

  def plan_epoch(self, state: TrainState, widths: Widths, epoch: int) -> BatchPlan:
    """The batches of epoch `epoch`: a seeded permutation cut into batches of `batch_size`."""
    idx, mask = self._plan(epoch_key(state, epoch), len(widths.narrowest), self.batch_size)
    if len(widths) == 1:
      width = np.zeros(idx.shape[0], np.int32)
    else:
      width = batch_widths(widths.narrowest, sharding.to_host(idx), sharding.to_host(mask))
    return BatchPlan(idx, mask, width)

  def _round_to_devices(self, n: int) -> int:
    devices = 1 if self.mesh is None else self.mesh.devices.size
    return -(-n // devices) * devices

  def evaluate(self, state: TrainState, data) -> dict:
    """Eval-mode metrics over every example of `data`, in batches of `eval_batch_size` (on the
    widest copy of `Widths`)."""
    data = Widths.of(data)[-1]
    n = _num_examples(data)
    idx, mask = self._plan(None, n, min(self.eval_batch_size, self._round_to_devices(n)))
    if self.mode == "scan":
      return summarize(self._scan_eval(state, data, idx, mask))
    acc, pos = self._zero_eval_sums(state, data), jnp.zeros((), jnp.int32)
    for _ in range(idx.shape[0]):
      acc, pos = self._loop_eval_step(state, acc, pos, data, idx, mask)
    return summarize(acc)

  # -- the programs -----------------------------------------------------------------------------

  def _step(self, state, acc, data, idx, mask):
    batch = gather(data, _split(self.mesh, idx))
    state, sums = train_step(state, batch, mask, loss_fn=self.loss_fn, mesh=self.mesh)
    return state, _add(acc, sums)

  def _loop_step_fn(self, state, acc, pos, data, idx, mask):
    """`_step` on row `pos` of the epoch's (num_batches, B) plan; the counter stays on the
    device so the Python loop moves nothing between host and device."""
    state, acc = self._step(state, acc, data, idx[pos], mask[pos])
    return state, acc, pos + 1

  def _scan_epoch_fn(self, state, acc, pos, copies: tuple, idx, mask, width):
    """Rows pos .. pos + len(width) of the epoch's plan as one scan (a whole epoch, or a chunk
    of it); with several copies batch i trains on copy width[i] through `lax.switch` (one
    branch per copy, each with its own shapes)."""
    branches = [functools.partial(lambda data, carry, i, m: self._step(*carry, data, i, m), data)
                for data in copies]
    rows = len(width)
    idx, mask = (jax.lax.dynamic_slice_in_dim(a, pos, rows) for a in (idx, mask))

    def body(carry, xs):
      k, i, m = xs
      if len(branches) == 1:
        return branches[0](carry, i, m), None
      return jax.lax.switch(k, branches, carry, i, m), None

    (state, acc), _ = jax.lax.scan(body, (state, acc), (jnp.asarray(width), idx, mask))
    return state, acc, pos + rows

  def _eval_step(self, state, acc, data, idx, mask):
    idx, mask = _split(self.mesh, (idx, mask))
    batch = _split(self.mesh, gather(data, idx))
    return _add(acc, self.eval_fn(state.apply_fn, state.variables(), batch,
                                  mask.astype(jnp.float32)))

  def _loop_eval_step_fn(self, state, acc, pos, data, idx, mask):
    return self._eval_step(state, acc, data, idx[pos], mask[pos]), pos + 1

  def _scan_eval_fn(self, state, data, idx, mask):
    acc = self._zero_eval_sums_fn(state, data)
    acc, _ = jax.lax.scan(lambda a, xs: (self._eval_step(state, a, data, *xs), None), acc,
                          (idx, mask))
    return acc

  def _zero_train_sums_fn(self, state, data):
    batch = gather(data, jnp.zeros((self.batch_size,), jnp.int32))
    shapes = jax.eval_shape(
        lambda: self.loss_fn(state.apply_fn, state.params, state.batch_stats, batch,
                             jnp.ones((self.batch_size,)), rng(state))[1][1])
    return _zeros_like_sums(shapes)

  def _zero_eval_sums_fn(self, state, data):
    batch = gather(data, jnp.zeros((self.eval_batch_size,), jnp.int32))
    shapes = jax.eval_shape(lambda: self.eval_fn(state.apply_fn, state.variables(), batch,
                                                 jnp.ones((self.eval_batch_size,))))
    return _zeros_like_sums(shapes)


def trainer_for(loss_fn: Callable, eval_fn: Callable, config) -> Trainer:
  """The trainer of an experiment's config (its batch_size, eval_batch_size, epoch_mode and
  devices): data-parallel over the chosen devices when there are several."""
  mesh = sharding.data_mesh(sharding.select_devices(config.devices))
  return Trainer(loss_fn, eval_fn, batch_size=config.batch_size,
                 eval_batch_size=config.eval_batch_size, epoch_mode=config.epoch_mode, mesh=mesh)


def batch_widths(narrowest: np.ndarray, idx: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The copy each batch trains on: the widest `narrowest` of its real members (host arrays)."""
  return np.where(mask, narrowest[idx], 0).max(axis=1).astype(np.int32)


def summarize(acc) -> dict:
  """Device sums -> host means: every entry divided by 'count' (which itself is kept as-is)."""
  host = jax.device_get(acc)
  count = float(host["count"])
  out = {k: float(v) / max(count, 1.0) for k, v in host.items() if k != "count"}
  out["count"] = count
  return out


def count_params(params) -> int:
  """Trainable parameters (the `params` collection only; BN running statistics excluded)."""
  return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def finite(state: TrainState) -> bool:
  """Whether every float of the state's weights (params, batch_stats, optimizer state) is
  finite: one reduction on the device and one value to the host, for a check once an epoch."""
  return bool(sharding.to_host(_all_finite((state.params, state.batch_stats, state.opt_state))))


@jax.jit
def _all_finite(tree) -> jax.Array:
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def _num_examples(data) -> int:
  sizes = {a.shape[0] for a in jax.tree_util.tree_leaves(data)}
  if len(sizes) != 1:
    raise ValueError(f"all arrays of a dataset need the same leading size, got {sorted(sizes)}")
  return sizes.pop()
