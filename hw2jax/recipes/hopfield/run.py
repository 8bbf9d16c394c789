"""The Hopfield experiment (the homework's Q1): the claims checked (`claims`), image retrieval
(`retrieval`) and storage capacity (`capacity`), run together into one workdir.

`Config` holds every knob of the three parts, flat, as the CLI's flags and summary.json name
them; `claims()`, `retrieval()` and `capacity()` give each part its own small config. `run`
does the parts asked for and returns a `HopfieldSummary` (summary.json, typed). The absl main in
experiments/hopfield.py only parses flags into a `Config` and calls `run`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import jax

from hw2jax import files, records
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError
from hw2jax.recipes.hopfield import capacity as capacity_lib
from hw2jax.recipes.hopfield import claims as claims_lib
from hw2jax.recipes.hopfield import retrieval as retrieval_lib
from hw2jax.train import run as run_lib, sharding

PARTS = ("check", "retrieval", "capacity")
# What a run leaves in its workdir; a new run moves these to <workdir>/archive/<time>/ first.
RUN_FILES = (run_lib.SUMMARY, claims_lib.TABLE, *retrieval_lib.FIGURES, capacity_lib.FIGURE)


class _Parts:
  """What `Config` adds to its fields: each part's own config, and validation of them all."""

  def claims(self) -> claims_lib.Config:
    return _part(claims_lib.Config, self)

  def retrieval(self) -> retrieval_lib.Config:
    return _part(retrieval_lib.Config, self)

  def capacity(self) -> capacity_lib.Config:
    return _part(capacity_lib.Config, self)

  def validate(self):
    records.require([(len(self.parts) >= 1 and all(p in PARTS for p in self.parts),
                      f"--parts={','.join(self.parts)}: use some of {', '.join(PARTS)}"),
                     records.seed_check(self.seed)])
    self.claims().validate()
    self.retrieval().validate()
    self.capacity().validate()
    return self

  def to_json(self) -> dict:
    return records.to_json(self)


def _part(cls, config):
  return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def _flat_fields() -> list[tuple]:
  """`parts`, then every field of the three part configs once (seed and recall_tol are shared:
  one value for every part that has them), each with its part's own default."""
  fields = {"parts": ("parts", "tuple[str, ...]", dataclasses.field(default=PARTS))}
  for cls in (claims_lib.Config, retrieval_lib.Config, capacity_lib.Config):
    for f in dataclasses.fields(cls):
      fields.setdefault(f.name, (f.name, f.type, dataclasses.field(default=f.default)))
  return list(fields.values())


# One run: which parts, and the knobs of each, flat as the CLI's flags and summary.json name
# them; every knob is defined once, in its part's config.
Config = dataclasses.make_dataclass("Config", _flat_fields(), bases=(_Parts,), frozen=True)
Config.__module__ = __name__      # where its field types resolve (typing.get_type_hints)


@dataclasses.dataclass(frozen=True)
class HopfieldSummary:
  """What one run did: <workdir>/summary.json, typed; a part not run is None."""
  config: Config
  device: str
  jax_version: str
  check: claims_lib.Claims | None = records.optional()
  retrieval: retrieval_lib.Result | None = records.optional()
  capacity: capacity_lib.Result | None = records.optional()

  def to_json(self) -> dict:
    return records.to_json(self)

  @classmethod
  def from_json(cls, data: dict) -> "HopfieldSummary":
    return records.from_json(cls, data)


def run(config: Config, workdir: str | Path, data_path: str | None = None,
        log: Callable[[str], None] = print, download: str = "never",
        data: ImageData | None = None) -> HopfieldSummary:
  """Runs `config.parts` and writes summary.json (+ check.md and PNGs) into `workdir`.

  The data is loaded (or `data` used) before the workdir is touched, so bad input changes
  nothing there.
  """
  config.validate()
  patterns = None
  if "retrieval" in config.parts:
    patterns = retrieval_lib.load_patterns(config.retrieval(), data_path, log=log,
                                           download=download, data=data)
  with run_lib.locked(workdir) as workdir:
    found = [name for name in (run_lib.CHECKPOINTS, run_lib.CONFIG) if (workdir / name).exists()]
    if found:             # archiving would move that run's summary, and figures mix in
      raise UserError(f"{workdir} holds a training run ({', '.join(found)}); "
                      "experiments.hopfield writes into a folder of its own: use another --workdir")
    return _run(config, patterns, workdir, log)


def _run(config: Config, patterns, workdir: Path, log) -> HopfieldSummary:
  archived = run_lib.archive(workdir, RUN_FILES)
  if archived:
    log(f"moved the previous run's outputs to {archived}")
  check = retrieval = capacity = None
  if "check" in config.parts:
    check, table = claims_lib.check(config.claims(), log=log)
    files.write_file(workdir / claims_lib.TABLE, table)
  if "retrieval" in config.parts:
    retrieval = retrieval_lib.retrieval(config.retrieval(), patterns, workdir, log=log)
  if "capacity" in config.parts:
    capacity = capacity_lib.capacity(config.capacity(), workdir, log=log)
  summary = HopfieldSummary(config=config, device=sharding.device_name(sharding.data_mesh()),
                            jax_version=jax.__version__, check=check, retrieval=retrieval,
                            capacity=capacity)
  files.write_json(workdir / run_lib.SUMMARY, summary.to_json())
  return summary
