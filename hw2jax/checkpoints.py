"""Orbax checkpoints of a run: the latest epochs (for resuming) and the best-validation one.

Layout: <workdir>/checkpoints/latest/<epoch>/{state,meta} (the last two kept) and
<workdir>/checkpoints/best/<epoch>/{state,meta}. `meta` is JSON (epoch, history, best value).
A checkpoint that cannot be read is reported and the previous one is used instead.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from hw2jax.errors import UserError
from hw2jax.training import TrainState


# Orbax keeps process-global state for a save (its current operation id keys the signals between
# its threads), so the synchronous parts of two saves in two threads (the report runs Q3 beside
# Q2) must not interleave: every call into Orbax holds this lock. The asynchronous writes still
# overlap training.
_ORBAX = threading.RLock()


def _state_tree(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
          "step": state.step, "key": state.key}


class Checkpoints:
  """Saves and restores TrainStates (+ JSON metadata) under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str | Path, *, keep_latest: int = 2,
               log: Callable[[str], None] = print):
    self.root = Path(workdir).resolve() / "checkpoints"
    self.log = log
    with _ORBAX:
      self._managers = {
          name: ocp.CheckpointManager(
              self.root / name, item_names=("state", "meta"),
              # A run killed mid-save leaves <epoch>.orbax-checkpoint-tmp*: removed on start.
              options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                   cleanup_tmp_directories=True))
          for name, keep in (("latest", keep_latest), ("best", 1))}

  def save(self, epoch: int, state: TrainState, meta: dict[str, Any], *, best: bool) -> None:
    """Saves `state` as epoch `epoch` (asynchronously); also as the best one if `best`."""
    for name in ("latest", "best") if best else ("latest",):
      with _ORBAX:
        self._managers[name].save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_state_tree(state)), meta=ocp.args.JsonSave(meta)),
            force=True)

  def epochs(self, which: str = "latest") -> list[int]:
    with _ORBAX:
      return sorted(self._managers[which].all_steps())

  def restore(self, template: TrainState, which: str = "latest"
              ) -> tuple[TrainState, dict[str, Any]] | None:
    """The newest readable checkpoint of `which`, restored onto `template`'s structure.

    None when there is no checkpoint. If there are checkpoints but none can be read, a
    UserError: silently starting over would throw the user's training away.
    """
    manager = self._managers[which]
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _state_tree(template))
    with _ORBAX:
      manager.wait_until_finished()
      epochs = sorted(manager.all_steps(), reverse=True)
    for epoch in epochs:
      try:
        with _ORBAX:
          restored = manager.restore(epoch, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # a damaged checkpoint must not end the run: fall back
        self.log(f"checkpoint {which}/{epoch} is unreadable ({type(e).__name__}: "
                 f"{str(e).splitlines()[0][:120]}); trying the previous one")
        continue
      tree = restored["state"]
      return template.replace(**tree), dict(restored["meta"])
    if epochs:
      raise UserError(f"none of the checkpoints in {self.root / which} (epochs "
                      f"{', '.join(map(str, sorted(epochs)))}) can be read; move them away or "
                      "use --fresh to start over")
    return None

  def wait(self) -> None:
    for manager in self._managers.values():
      with _ORBAX:
        manager.wait_until_finished()

  def close(self) -> None:
    for manager in self._managers.values():
      with _ORBAX:
        manager.close()
