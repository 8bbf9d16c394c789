"""The report's results, typed: what `report.run` produces, `report.render` turns into
REPORT.md, and report.json holds (the same JSON as before these types existed).

Every part has a status ('done', 'skipped', 'not requested'), a reason when not done, its
timing in this invocation, the inputs its results depend on and the seeds of its runs; a done
part carries its runs, each with the experiment's own typed summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from typing import Any

from hw2jax import records
from hw2jax.recipes import cnn, p2g
from hw2jax.recipes.hopfield import run as hopfield
from hw2jax.report.config import PARTS, Config, Schedule

DONE, SKIPPED, NOT_REQUESTED = "done", "skipped", "not requested"


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
  platform: str
  device_kind: str
  device_count: int
  process_count: int
  jax_version: str
  python: str
  host_cpus: int | None
  devices: list[str]

  @classmethod
  def here(cls) -> "DeviceInfo":
    import jax
    devices = jax.devices()
    kinds = sorted({getattr(d, "device_kind", d.platform) for d in devices})
    return cls(platform=devices[0].platform, device_kind=", ".join(kinds),
               device_count=len(devices), process_count=jax.process_count(),
               jax_version=jax.__version__, python=platform.python_version(),
               host_cpus=os.cpu_count(), devices=[str(d) for d in devices])

  def describe(self) -> str:
    return (f"{self.device_count} x {self.device_kind} ({self.platform}), jax "
            f"{self.jax_version}, Python {self.python}, {self.host_cpus} host CPUs")


@dataclasses.dataclass(frozen=True)
class Meta:
  command: str
  device: DeviceInfo
  quick: bool
  seeds: list[int]
  parts: list[str]
  date: str
  intel_data: str | None
  p2g_data: str | None
  seed_runs_seconds: float | None = None
  overlap: bool = False
  wall_seconds: float | None = None

  @staticmethod
  def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Part:
  """What every part has; `earlier`: kept from an earlier invocation (not in --parts now)."""
  status: str
  reason: str | None = records.optional()
  wall_seconds: float | None = records.optional()
  started_seconds: float | None = records.optional()
  finished_seconds: float | None = records.optional()
  inputs: dict[str, Any] | None = records.optional()
  seeds: list[int] | None = records.optional()
  earlier: bool | None = records.optional()

  @property
  def done(self) -> bool:
    return self.status == DONE


@dataclasses.dataclass(frozen=True, kw_only=True)
class Q1(Part):
  dir: str | None = records.optional()
  summary: hopfield.HopfieldSummary | None = records.optional()
  reused: bool | None = records.optional()
  check_table: str | None = records.optional()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
  """One training run of a part: its seed, its workdir (relative to the report's), and how long
  this invocation's call took."""
  seed: int
  dir: str
  wall_seconds: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CnnRun(Run):
  model: str
  lr: float
  summary: cnn.CnnRunSummary


@dataclasses.dataclass(frozen=True)
class ParamCount:
  ours: int
  expected: int | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Q2(Part):
  data: cnn.DataSizes | None = records.optional()
  epochs: int | None = records.optional()
  runs: list[CnnRun] | None = records.optional()
  params: dict[str, ParamCount] | None = records.optional()
  figure: str | None = records.optional()


@dataclasses.dataclass(frozen=True, kw_only=True)
class AblationRun(Run):
  kernel_size: int
  maxpool: bool
  summary: cnn.CnnRunSummary
  shared_with_q2: bool = False          # the same setting as Q2's BN+GAP run: trained once


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ablations(Part):
  data: cnn.DataSizes | None = records.optional()
  epochs: int | None = records.optional()
  runs: list[AblationRun] | None = records.optional()
  vanilla_nopool_params: int | None = records.optional()


@dataclasses.dataclass(frozen=True, kw_only=True)
class P2GRun(Run):
  attention: bool
  summary: p2g.P2GRunSummary


@dataclasses.dataclass(frozen=True, kw_only=True)
class Q3(Part):
  data: p2g.P2GDataSizes | None = records.optional()
  epochs: int | None = records.optional()
  runs: list[P2GRun] | None = records.optional()
  course_vocab_params: dict[str, tuple[int, int]] | None = records.optional()


PART_TYPES = {"q1": Q1, "q2": Q2, "q2_ablations": Ablations, "q3": Q3}


@dataclasses.dataclass(frozen=True)
class Results:
  """report.json, typed; `missing` is what the completeness check found absent."""
  meta: Meta
  config: Config
  schedule: Schedule
  q1: Q1
  q2: Q2
  q2_ablations: Ablations
  q3: Q3
  missing: list[str] = dataclasses.field(default_factory=list)

  def part(self, name: str) -> Part:
    return getattr(self, name)

  def to_json(self) -> dict:
    return records.to_json(self)

  @classmethod
  def from_json(cls, data: dict) -> "Results":
    parts = {name: data.get(name) or {"status": NOT_REQUESTED} for name in PARTS}
    return records.from_json(cls, {**data, **parts})
