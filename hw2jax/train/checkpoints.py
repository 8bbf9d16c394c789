"""Orbax checkpoints of a run: one manager keeps the latest epochs and the best-validation one.

Layout: <workdir>/checkpoints/<epoch>/{state,meta}: the last `keep_latest` epochs and the best
one by the run's validation metric (Orbax's `LatestN` + `BestN` preservation policies; the best
epoch is written once, not twice). `meta` is JSON (epoch, history, best record, the
JAX_ENABLE_X64 setting, a checksum of the state and a fingerprint of the meta itself, so that
damage Orbax itself would not notice, or an edited history, is found on restore; metas written
before the meta's own fingerprint are read unchecked).

A checkpoint that cannot be read, or whose state or meta does not match its fingerprint, is
moved to <workdir>/checkpoints/corrupt/<epoch>-<time>/ (never deleted) with one line saying so,
and the previous one is used: a damaged step must not block the save of the same epoch when it
is trained again. Workdirs of the older layout (checkpoints/latest/ and checkpoints/best/, two
managers) are refused in one line. A full disk while writing becomes one line.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import math
import re
import shutil
import sys
import threading
import warnings
import traceback
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from hw2jax import cache, records
from hw2jax.errors import AbandonedWorkError, UserError
from hw2jax.train import sharding
from hw2jax.train.trainer import TrainState

# Orbax keeps process-global state for a save (its current operation id keys the signals between
# its threads), so the synchronous parts of two saves in two threads (the report runs Q3 beside
# Q2) must not interleave: every call into Orbax holds this lock. The asynchronous writes still
# overlap training.
_ORBAX = threading.RLock()
CORRUPT = "corrupt"
LEGACY = ("latest", "best")      # the two managers of the layout before 2026-12-02
_STEP_RE = re.compile(r"^\d+$")
X64 = "jax_enable_x64"               # the meta's key for the dtype setting a state was trained in
META_FINGERPRINT = "meta_fingerprint"
CHECKSUM = "state_checksum"          # the meta's key for `checksum` (older metas: "fingerprint")
# How Orbax/TensorStore say that a stored array does not fit the template it is restored into.
_MISFIT = re.compile(r"not compatible with the stored shape|[Ss]hape mismatch|"
                     r"[Rr]equested shape")


def state_tree(state: TrainState) -> dict:
  """What a checkpoint holds of a TrainState (its arrays, no functions)."""
  return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
          "step": state.step, "key": state.key}


def checksum(state: TrainState) -> str:
  """A check of every array of the state, to verify a restored one: each leaf's dtype and shape
  and two wrapping 32-bit sums of its words, one weighted by position (a flipped bit, a block
  moved). Summed where the arrays are: a save copies a few bytes to the host, not the state
  (Orbax's asynchronous write makes its own copy)."""
  leaves = jax.tree_util.tree_leaves(state_tree(state))
  sums = np.asarray(sharding.to_host(_leaf_sums(leaves)))
  spec = ";".join(f"{x.dtype}{x.shape}" for x in leaves).encode()
  return hashlib.blake2b(spec + sums.tobytes(), digest_size=16).hexdigest()


@jax.jit
def _leaf_sums(leaves: list) -> jax.Array:
  """(leaves, 2) uint32: per leaf, the wrapping sum of its 32-bit words and of word x position."""
  out = []
  for x in leaves:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.dtype == jnp.bool_ or x.dtype.itemsize < 4:
      x = x.astype(jnp.uint32) if x.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(
          x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
    words = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    position = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
    out.append(jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                          jnp.sum(words * position, dtype=jnp.uint32)]))
  return jnp.stack(out) if out else jnp.zeros((0, 2), jnp.uint32)


def fingerprint(state: TrainState) -> str:
  """A hash of every array of the state (dtype, shape, bytes) on the host: how checkpoints
  written before `checksum` are verified."""
  h = hashlib.blake2b(digest_size=16)
  for leaf in jax.tree_util.tree_leaves(state_tree(state)):
    a = np.ascontiguousarray(sharding.to_host(leaf))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def x64_enabled() -> bool:
  """Whether JAX computes in 64 bits (JAX_ENABLE_X64), the setting each checkpoint records."""
  return bool(jax.config.read("jax_enable_x64"))


def check_x64(stored: bool | None, root: Path) -> None:
  """A float32 run resumed under JAX_ENABLE_X64=1 (or the reverse) trains on in another dtype:
  refused like another learning rate. `stored`: the checkpoint's setting (None: written before
  it was recorded, accepted)."""
  now = x64_enabled()
  if stored is not None and bool(stored) != now:
    setting = lambda on: "JAX_ENABLE_X64=1" if on else "JAX_ENABLE_X64 unset (float32)"
    raise UserError(f"the checkpoints in {root} were trained with {setting(stored)}, this run "
                    f"has {setting(now)}; resume with the setting it was trained with, use "
                    "another --workdir, or --fresh")


def meta_fingerprint(meta: dict) -> str:
  """A hash of a checkpoint's meta as JSON reads it back (every key but this hash itself)."""
  return records.json_digest({k: v for k, v in meta.items() if k != META_FINGERPRINT})


def meta_intact(meta: dict) -> bool:
  """Whether `meta` matches its own fingerprint; a meta of this version must carry one (it
  records X64 too), one written before it (no X64 either) is taken as it is."""
  if META_FINGERPRINT not in meta:
    return X64 not in meta
  return meta[META_FINGERPRINT] == meta_fingerprint(meta)


def refuse_old_layout(root: Path) -> None:
  """checkpoints/latest/ and checkpoints/best/ (two managers) are the layout of hw2jax before
  2026-12-02; this version reads <root>/<epoch>/ only. One line, nothing moved."""
  folders = [name for name in LEGACY if (Path(root) / name).is_dir()]
  if folders:
    old = ", ".join(f"{n}/" for n in folders)
    raise UserError(f"{root} holds checkpoints of hw2jax's layout before 2026-12-02 ({old}), "
                    "which this version does not read; train again with --fresh (the old run "
                    "is archived), or resume it with that version")


def _quiet_orbax_leftovers() -> None:
  """After a failed read or write (a damaged checkpoint, a full disk) Orbax closes its event
  loop while TensorStore still finishes the other reads or writes of that checkpoint: their
  callbacks fail with 'Event loop is closed' and their coroutines with the same I/O error,
  harmlessly, but Python prints each as a traceback. Those leftovers (and nothing else) are
  not printed; the failure itself is reported by `Checkpoints` as one line."""
  previous = sys.unraisablehook
  if getattr(previous, "hw2jax_quiet", False):
    return

  def leftover(unraisable) -> bool:
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and "Event loop is closed" in str(value):
      return True
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    return any("orbax/checkpoint/_src/serialization" in f.filename for f in frames)

  def hook(unraisable):
    if not leftover(unraisable):
      previous(unraisable)

  hook.hw2jax_quiet = True
  sys.unraisablehook = hook


def newest_meta(workdir: str | Path, key: str | None = None) -> tuple[int, dict] | None:
  """(epoch, meta) of the newest step under <workdir>/checkpoints whose meta reads as a JSON
  object matching its fingerprint (holding `key`, if given), straight from disk: no Orbax
  manager, nothing written or moved, so the check before a resume and read-only commands can
  use it. None if none."""
  root = Path(workdir) / "checkpoints"
  steps = sorted((int(p.name) for p in root.iterdir() if p.is_dir() and _STEP_RE.match(p.name)),
                 reverse=True) if root.is_dir() else []
  for epoch in steps:
    try:
      meta = json.loads((root / str(epoch) / "meta" / "metadata").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
      continue
    if (isinstance(meta, dict) and meta_intact(meta)
        and (key is None or isinstance(meta.get(key), dict))):
      return epoch, meta
  return None


def _ranking(metrics: dict) -> tuple[float, int]:
  """Orbax sorts ascending and keeps the last: the higher score wins, the earlier epoch on ties
  (as `fit`, whose best is the first epoch that reached the best value)."""
  return metrics["score"], -metrics["epoch"]


def _disk_full(e: BaseException) -> bool:
  return (_caused_by(e, errno.ENOSPC, "No space left on device")
          or _caused_by(e, errno.ENOSPC, "RESOURCE_EXHAUSTED: Disk"))


def _caused_by(e: BaseException, code: int, text: str) -> bool:
  """Whether `e` or an exception behind it is the OSError `code`, or says `text` (TensorStore
  reports file-system errors as a ValueError with the system's message in it)."""
  while e is not None:
    if (isinstance(e, OSError) and e.errno == code) or text in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


class Checkpoints:
  """Saves and restores TrainStates (+ JSON metadata) under `<workdir>/checkpoints`.

  The best checkpoint is the one with the highest (`best_mode='max'`) or lowest ('min') value
  of `best_metric` in its epoch's record. `read_only` (--predict, --to_torch): nothing is
  created, written or moved; a damaged step is skipped, not set aside.
  """

  def __init__(self, workdir: str | Path, *, best_metric: str, best_mode: str = "max",
               keep_latest: int = 2, log: Callable[[str], None] = print,
               read_only: bool = False):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.root = Path(workdir).resolve() / "checkpoints"
    refuse_old_layout(self.root)
    self.log = log
    self.best_metric = best_metric
    self.read_only = read_only
    self._sign = 1.0 if best_mode == "max" else -1.0
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(keep_latest),
        policies.BestN(get_metric_fn=_ranking, n=1, keep_checkpoints_without_metrics=True)])
    _quiet_orbax_leftovers()
    self._set_aside_unparseable()
    if not read_only:
      self._rankings_from_meta()
    with _ORBAX:
      self._manager = ocp.CheckpointManager(
          self.root, item_names=("state", "meta"),
          # A run killed mid-save leaves <epoch>.orbax-checkpoint-tmp*: removed on start.
          options=ocp.CheckpointManagerOptions(
              preservation_policy=policy, best_fn=_ranking, best_mode="max",
              create=not read_only, cleanup_tmp_directories=not read_only,
              read_only=read_only))
      if not read_only:
        self._set_aside_uncommitted()

  def _rankings_from_meta(self) -> None:
    """Orbax ranks steps (and its BestN policy keeps or deletes them) by <step>/metrics/metrics,
    which no fingerprint covers: one that disagrees with the newest intact meta's history is
    rewritten from it, so an edited file can neither pick the best nor get the best deleted."""
    newest = newest_meta(self.root.parent)
    history = newest[1].get("history") if newest else None
    for record in history if isinstance(history, list) else []:
      score = record.get(self.best_metric) if isinstance(record, dict) else None
      path = (self.root / str(record.get("epoch")) / "metrics" / "metrics"
              if isinstance(score, (int, float)) else None)
      if path is None or not path.is_file() or record.get("diverged"):
        continue
      want = {"score": self._sign * score, "epoch": record["epoch"]}
      try:
        have = json.loads(path.read_text())
        same = have["epoch"] == want["epoch"] and math.isclose(have["score"], want["score"])
      except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError):
        same = False
      if not same:
        cache.write_file(path, json.dumps(want))
        self.log(f"checkpoint of epoch {want['epoch']}: Orbax's metrics file disagreed with the "
                 "fingerprinted history; rewritten from it")

  # -- saving -----------------------------------------------------------------------------------

  def save(self, epoch: int, state: TrainState, meta: dict[str, Any],
           record: dict[str, Any]) -> None:
    """Saves `state` as epoch `epoch` (asynchronously); `record` (the epoch's metrics) ranks
    it for the best checkpoint (without `best_metric`, e.g. diverged: never the best)."""
    meta = {**meta, X64: x64_enabled(), CHECKSUM: checksum(state)}
    meta = json.loads(json.dumps(meta))
    meta[META_FINGERPRINT] = meta_fingerprint(meta)        # of the meta as it will read back
    score = record.get(self.best_metric)
    metrics = None if score is None else {"score": self._sign * score, "epoch": epoch}
    with self._disk_errors():
      with _ORBAX:
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state_tree(state)), meta=ocp.args.JsonSave(meta)),
            metrics=metrics, force=True)

  def wait(self) -> None:
    with self._disk_errors():
      with _ORBAX:
        self._manager.wait_until_finished()

  def close(self) -> None:
    with _ORBAX:
      self._manager.close()

  # -- reading ----------------------------------------------------------------------------------

  def epochs(self) -> list[int]:
    with _ORBAX:
      return sorted(self._manager.all_steps())

  def best_epoch(self) -> int | None:
    with _ORBAX:
      return self._manager.best_step()

  def restore(self, template: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    """The newest readable checkpoint, restored onto `template`'s structure; None if there is
    none. Unreadable ones are moved to checkpoints/corrupt/ on the way."""
    for epoch in reversed(self.epochs()):
      restored = self.read(epoch, template)
      if restored is not None:
        return restored
    return None

  def restore_best(self, template: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    """The best checkpoint (None if there is none, or it is unreadable: it is moved aside): the
    epoch the newest intact meta names (its fingerprint covers it), else Orbax's ranking (its
    metrics files carry no fingerprint; an edited one must not pick another epoch)."""
    newest = newest_meta(self.root.parent)
    named = newest and isinstance(newest[1].get("best"), dict) and newest[1]["best"].get("epoch")
    epoch = named if named in self.epochs() else self.best_epoch()
    return None if epoch is None else self.read(epoch, template)

  def read(self, epoch: int, template: TrainState) -> tuple[TrainState, dict] | None:
    """Epoch `epoch`'s state and meta; None (and the step set aside) if it cannot be read."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state_tree(template))
    with _ORBAX:
      self._manager.wait_until_finished()
    try:
      with _ORBAX:
        restored = self._manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      state, meta = template.replace(**restored["state"]), dict(restored["meta"])
      if ((CHECKSUM in meta and checksum(state) != meta[CHECKSUM])
              or ("fingerprint" in meta and fingerprint(state) != meta["fingerprint"])):
        raise ValueError("its arrays do not match the fingerprint saved with them")
      if not meta_intact(meta):
        raise ValueError("its metadata does not match the fingerprint saved with it")
      if meta.get("epoch") != epoch:
        raise ValueError(f"its metadata is of epoch {meta.get('epoch')}")
    except Exception as e:  # a damaged checkpoint must not end or wedge the run: set it aside
      first = str(e).split(". See full TensorStore")[0].splitlines()[0] if str(e) else ""
      if _MISFIT.search(str(e)):   # healthy, but of another model: not damage, nothing moved
        raise UserError(f"the checkpoint of epoch {epoch} in {self.root} holds arrays of another "
                        f"shape than this model's ({first[:160]}); use the settings it was "
                        "trained with, or --fresh to archive it and start over") from None
      self._set_aside(epoch, f"{type(e).__name__}: {first[:120]}" if first else
                      type(e).__name__)
      return None
    return state, meta

  # -- damage -----------------------------------------------------------------------------------

  def _set_aside(self, epoch: int | str, why: str, reload: bool = True) -> None:
    """Moves the step folder to checkpoints/corrupt/<epoch>-<time>/ and forgets it (read-only:
    says so and leaves it)."""
    if self.read_only:
      self.log(f"checkpoint of epoch {epoch} is unreadable ({why}); skipped (left in place: "
               "this command only reads)")
      return
    source = self.root / str(epoch)
    target = self.root / CORRUPT / f"{epoch}-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}"
    if jax.process_index() == 0 and source.exists():
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(source), str(target))
    self.log(f"checkpoint of epoch {epoch} is unreadable ({why}); moved it to {target} and "
             "using the previous one")
    if reload:
      with _ORBAX:
        self._manager.reload()

  def _step_dirs(self) -> list[Path]:
    return sorted((p for p in self.root.iterdir() if p.is_dir() and _STEP_RE.match(p.name)),
                  key=lambda p: int(p.name)) if self.root.is_dir() else []

  def _set_aside_unparseable(self) -> None:
    """Orbax reads every step's metadata and metrics when the manager opens, so a damaged one
    would fail the manager itself: such steps are set aside before it opens. A command that
    only reads may move nothing, so it cannot open the folder at all: one line says why."""
    for step in self._step_dirs():
      for name in ("_CHECKPOINT_METADATA", "metrics/metrics"):
        f = step / name
        try:
          if f.is_file():
            json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError) as e:
          if self.read_only:
            raise UserError(
                f"the checkpoint of epoch {step.name} in {self.root} is damaged ({name}: "
                f"{type(e).__name__}) and this command only reads, so it leaves it in place; "
                "rerun the training command in this workdir (it moves the step to corrupt/) "
                "or move the step away yourself") from None
          self._set_aside(step.name, f"{name}: {type(e).__name__}", reload=False)
          break

  def _set_aside_uncommitted(self) -> None:
    """Step folders Orbax does not list (their commit marker is gone) would block a new save of
    the same epoch: they are damaged too."""
    known = {str(s) for s in self._manager.all_steps()}
    for path in self._step_dirs():
      if path.name not in known:
        self._set_aside(path.name, "no commit marker")

  # -- errors -----------------------------------------------------------------------------------

  def _finish_earlier_saves(self) -> None:
    """An earlier epoch's save may still be writing when a later one fails: it finishes (or
    fails for the same full disk) first, so that the message names the epoch a rerun will
    really resume from."""
    try:
      with _ORBAX:
        self._manager.wait_until_finished()
    except Exception as e:
      if not _disk_full(e):
        raise

  @contextlib.contextmanager
  def _disk_errors(self):
    """A full disk (now, or in an asynchronous write that failed) becomes one line."""
    try:
      yield
    except Exception as e:
      # The failed save leaves Orbax coroutines unawaited; each would warn at exit.
      warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
      if _caused_by(e, errno.ENAMETOOLONG, "File name too long"):
        raise AbandonedWorkError(
            f"a checkpoint file under {self.root} has a longer path than the file system allows "
            "(File name too long); use a shorter --workdir") from None
      if not _disk_full(e):
        raise
      self._finish_earlier_saves()
      committed = [int(p.name) for p in self._step_dirs()]
      raise UserError(f"disk full while writing checkpoints into {self.root}; free space and "
                      f"rerun: the run resumes from epoch {max(committed, default=0)}") from None
