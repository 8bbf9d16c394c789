"""Orbax checkpoints of a run: <workdir>/checkpoints/<epoch>/{state,meta,card}, the latest
epochs and the best one. `meta` is JSON (epoch, history, best record, the JAX_ENABLE_X64
setting, a checksum of the state, a fingerprint of itself and the card); `card` is what the run
is made from (`run.Card`; runs before cards kept it in the meta). A step that cannot be read or
fails a check is moved to checkpoints/corrupt/<epoch>-<time>/, never deleted, and the previous
one is used; a full disk or a path too long is one line."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import re
import shutil
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from hw2jax import records
from hw2jax.errors import AbandonedWorkError, UserError
from hw2jax.train import sharding
from hw2jax.train.trainer import TrainState

# Orbax keys the signals between its threads by a process-global operation id, so the
# synchronous parts of two saves in two threads (the report's Q3 beside Q2) must not interleave.
_ORBAX = threading.RLock()
FOLDER, CORRUPT = "checkpoints", "corrupt"
LEGACY = ("latest", "best")          # the two managers of the layout before 2026-12-02
X64, CHECKSUM, CARD_DIGEST = "jax_enable_x64", "state_checksum", "card_digest"  # meta keys
META_FINGERPRINT = "meta_fingerprint"
# How Orbax/TensorStore say that a stored array does not fit the template it is restored into.
_MISFIT = re.compile(r"not compatible with the stored shape|[Ss]hape mismatch|"
                     r"[Rr]equested shape")


def state_tree(state: TrainState) -> dict:
  """What a checkpoint holds of a TrainState (its arrays, no functions)."""
  return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
          "step": state.step, "key": state.key}


def checksum(state: TrainState) -> str:
  """Each leaf's dtype and shape and two wrapping 32-bit sums of its words, one weighted by
  position, summed on the device: a save copies a few bytes to the host, not the state."""
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
  """A hash of the state's arrays on the host: the check of checkpoints before `checksum`."""
  h = hashlib.blake2b(digest_size=16)
  for leaf in jax.tree_util.tree_leaves(state_tree(state)):
    a = np.ascontiguousarray(sharding.to_host(leaf))
    h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
  return h.hexdigest()


def x64_enabled() -> bool:
  """Whether JAX computes in 64 bits (JAX_ENABLE_X64), the setting each checkpoint records."""
  return bool(jax.config.read("jax_enable_x64"))


def meta_fingerprint(meta: dict) -> str:
  """A hash of a checkpoint's meta as JSON reads it back (every key but this hash itself)."""
  return records.json_digest({k: v for k, v in meta.items() if k != META_FINGERPRINT})


def meta_intact(meta: dict) -> bool:
  """Whether `meta` matches its fingerprint (a meta older than fingerprints has no X64 either)."""
  if META_FINGERPRINT not in meta:
    return X64 not in meta
  return meta[META_FINGERPRINT] == meta_fingerprint(meta)


def refuse_old_layout(root: Path) -> None:
  """One line, nothing moved, for checkpoints/latest/ and best/ (hw2jax before 2026-12-02)."""
  folders = [name for name in LEGACY if (Path(root) / name).is_dir()]
  if folders:
    old = ", ".join(f"{n}/" for n in folders)
    raise UserError(f"{root} holds checkpoints of hw2jax's layout before 2026-12-02 ({old}), "
                    "which this version does not read; train again with --fresh (the old run "
                    "is archived), or resume it with that version")


def _quiet_orbax_leftovers() -> None:
  """After a failed read or write Orbax closes its event loop while TensorStore finishes the
  checkpoint's other I/O: those callbacks and coroutines fail harmlessly, and Python would print
  each as a traceback. Only they are silenced; `Checkpoints` reports the failure in one line."""
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


@dataclasses.dataclass(frozen=True)
class Stored:
  """A step's meta and card as read straight from disk (`newest`)."""
  epoch: int
  meta: dict
  card: dict | None


def newest(root: Path, with_card: bool = False) -> Stored | None:
  """The newest step under `root` whose meta matches its fingerprint (`with_card`: and that
  holds a card), read from disk: no Orbax manager, nothing written or moved."""
  for step in reversed(_steps(root)):
    epoch = int(step.name)
    meta, card = (_json_file(step / item / "metadata") for item in ("meta", "card"))
    if not (isinstance(meta, dict) and meta_intact(meta)):
      continue
    if card is None and isinstance(meta.get("identity"), dict):    # a run older than cards
      card = {**meta["identity"], "vocab": meta.get("vocab")}
    elif card is not None and not _card_intact(meta, card):
      continue
    if card is not None or not with_card:
      return Stored(epoch, meta, card)
  return None


def _card_intact(meta: dict, card: Any) -> bool:
  """Whether `card` is the one `meta` names (a meta older than cards names none)."""
  return CARD_DIGEST not in meta or records.json_digest(card) == meta[CARD_DIGEST]


def _steps(root: Path) -> list[Path]:
  """The step folders under `root`, oldest first."""
  steps = [p for p in root.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()
           ] if root.is_dir() else []
  return sorted(steps, key=lambda p: int(p.name))


def _json_file(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError, UnicodeDecodeError):
    return None


@dataclasses.dataclass
class _KeepBest:
  """An Orbax preservation policy keeping the epoch the fingerprinted history names best
  (Orbax's BestN ranks by metrics files that nothing verifies)."""
  epoch: int | None = None

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    return [info.step == self.epoch for info in checkpoints]


def _caused_by(e: BaseException, code: int, *texts: str) -> bool:
  """Whether `e` or an exception behind it is the OSError `code` or says one of `texts`
  (TensorStore reports file-system errors as a ValueError with the system's message)."""
  while e is not None:
    if (isinstance(e, OSError) and e.errno == code) or any(t in str(e) for t in texts):
      return True
    e = e.__cause__ or e.__context__
  return False


def _disk_full(e: BaseException) -> bool:
  return _caused_by(e, errno.ENOSPC, "No space left on device", "RESOURCE_EXHAUSTED: Disk")


class Checkpoints:
  """TrainStates with their meta and card under `<workdir>/checkpoints`. `read_only`: nothing
  is created, written or moved; a damaged step is skipped, not set aside."""

  def __init__(self, workdir: str | Path, *, keep_latest: int = 2,
               log: Callable[[str], None] = print, read_only: bool = False):
    self.root = Path(workdir).resolve() / FOLDER
    refuse_old_layout(self.root)
    self.log, self.read_only = log, read_only
    stored = newest(self.root)
    self._best = _KeepBest(stored and (stored.meta.get("best") or {}).get("epoch"))
    _quiet_orbax_leftovers()
    self._set_aside_unparseable()
    with _ORBAX:
      self._manager = ocp.CheckpointManager(
          self.root, item_names=("state", "meta", "card"),
          # A run killed mid-save leaves <epoch>.orbax-checkpoint-tmp*: removed on start.
          options=ocp.CheckpointManagerOptions(
              preservation_policy=policies.AnyPreservationPolicy(
                  [policies.LatestN(keep_latest), self._best]),
              create=not read_only, cleanup_tmp_directories=not read_only,
              read_only=read_only))
      if not read_only:
        self._set_aside_uncommitted()

  def save(self, epoch: int, state: TrainState, meta: dict[str, Any], card: dict) -> None:
    """`state` as epoch `epoch`, asynchronously, with `meta` (whose "best" is kept) and `card`."""
    card = json.loads(json.dumps(card))
    meta = {**meta, X64: x64_enabled(), CHECKSUM: checksum(state),
            CARD_DIGEST: records.json_digest(card)}
    meta = json.loads(json.dumps(meta))
    meta[META_FINGERPRINT] = meta_fingerprint(meta)        # of the meta as it will read back
    self._best.epoch = (meta.get("best") or {}).get("epoch")
    with self._disk_errors():
      with _ORBAX:
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state_tree(state)), meta=ocp.args.JsonSave(meta),
            card=ocp.args.JsonSave(card)), force=True)

  def wait(self) -> None:
    with self._disk_errors():
      with _ORBAX:
        self._manager.wait_until_finished()

  def close(self) -> None:
    with self._disk_errors():
      with _ORBAX:
        self._manager.close()

  def epochs(self) -> list[int]:
    with _ORBAX:
      return sorted(self._manager.all_steps())

  def restore(self, template: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    """(state, meta) of the newest readable step onto `template`, damaged ones set aside."""
    for epoch in reversed(self.epochs()):
      restored = self.read(epoch, template)
      if restored is not None:
        return restored
    return None

  def restore_best(self, template: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    """(state, meta) of the best step, as the newest intact meta or this run's saves name it."""
    self.wait()
    return self.read(self._best.epoch, template) if self._best.epoch in self.epochs() else None

  def read(self, epoch: int, template: TrainState) -> tuple[TrainState, dict] | None:
    """Epoch `epoch`'s state and meta; None (and the step set aside) if it cannot be read."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state_tree(template))
    self.wait()
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
      card = _json_file(self.root / str(epoch) / "card" / "metadata")
      if not _card_intact(meta, card):
        raise ValueError("its card is missing or does not match its metadata")
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

  def _set_aside_unparseable(self) -> None:
    """Orbax reads every step's metadata (and metrics) when it opens: a damaged one, which would
    fail the manager, is set aside first; a reader, which moves nothing, stops in one line."""
    for step in _steps(self.root):
      for name in ("_CHECKPOINT_METADATA", "metrics/metrics"):   # metrics: runs before cards
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
    """A step Orbax does not list (no commit marker) would block a new save of its epoch."""
    known = {str(s) for s in self._manager.all_steps()}
    for path in _steps(self.root):
      if path.name not in known:
        self._set_aside(path.name, "no commit marker")

  @contextlib.contextmanager
  def _disk_errors(self):
    """A full disk or a path too long (now, or in an asynchronous write) becomes one line."""
    try:
      yield
    except Exception as e:
      if _caused_by(e, errno.ENAMETOOLONG, "File name too long"):
        raise AbandonedWorkError(
            f"a checkpoint file under {self.root} has a longer path than the file system allows "
            "(File name too long); use a shorter --workdir") from None
      if not _disk_full(e):
        raise
      try:      # an earlier save still writing ends first: the message names the real epoch
        with _ORBAX:
          self._manager.wait_until_finished()
      except Exception as later:
        if not _disk_full(later):
          raise
      committed = [int(p.name) for p in _steps(self.root)]
      raise UserError(f"disk full while writing checkpoints into {self.root}; free space and "
                      f"rerun: the run resumes from epoch {max(committed, default=0)}") from None
