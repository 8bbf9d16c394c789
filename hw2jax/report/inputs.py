"""What a report's parts are made from (their data, its content included, seeds and settings),
and the refusals to redo a finished part on other inputs or to mix a --quick and a full report
in one workdir. `run` checks these before anything is redone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hw2jax import files, records
from hw2jax.data.fingerprint import fingerprint_splits
from hw2jax.data.images import SPLITS, ImageData
from hw2jax.errors import UserError
from hw2jax.report import results as R
from hw2jax.report.config import PART_TITLES, Config

RESULTS, REPORT_CONFIG = "report.json", "report_config.json"
SEAL = "fingerprint"              # report.json's hash of the rest of itself

# Inputs added after reports were written: an earlier report without them is not compared on
# them (its data was what it was; today's is checked from now on).
ADDED_INPUTS = ("intel_fingerprint", "p2g_fingerprint")


def part_inputs(config: Config, intel_path: Path | None, p2g_data,
                intel: ImageData | None = None) -> dict[str, dict]:
  """What each requested part's results depend on (besides the schedule, checked separately):
  a rerun may only continue a finished part with the same inputs, the data's content
  included."""
  intel_data = str(intel_path.resolve()) if intel_path is not None else None
  intel_print = _digest({s: intel.split(s) for s in SPLITS}) if intel is not None else None
  seeds = list(config.seeds)
  # Reports from before --pixels existed used correct pixels and do not name them.
  q2 = {"intel_data": intel_data, "intel_fingerprint": intel_print, "seeds": seeds,
        "layout": config.layout,
        **({"pixels": config.pixels} if config.pixels != "correct" else {})}
  every = {
      "q1": {"intel_data": intel_data, "intel_fingerprint": intel_print}, "q2": q2,
      "q2_ablations": {**q2, "kernel_sizes": list(config.ablation_kernel_sizes),
                       "pooling": list(config.ablation_pooling)},
      "q3": {"p2g_data": p2g_data.source if p2g_data is not None else None,
             "p2g_fingerprint": (_digest({"train": p2g_data.train, "valid": p2g_data.valid,
                                          "test": p2g_data.test})
                                 if p2g_data is not None else None),
             "seeds": seeds, "hidden_size": config.q3_hidden_size, "beam": config.q3_beam},
  }
  return {part: every[part] for part in config.parts}


def _digest(splits: dict) -> str:
  """One short hash of a dataset's splits (`fingerprint_splits`'s, combined)."""
  prints = fingerprint_splits(splits)
  return hashlib.blake2b(json.dumps(prints, sort_keys=True).encode(), digest_size=8).hexdigest()


def sealed(results: R.Results) -> dict:
  """report.json's JSON with a hash of itself: the parts left out of --parts are rendered from
  it, so a hand-edited file must be found, not rendered into REPORT.md."""
  data = json.loads(json.dumps(files.finite(results.to_json())))
  return {**data, SEAL: records.json_digest(data)}


def earlier_results(workdir: Path) -> R.Results | None:
  """The results of the report's previous invocation (report.json), None if there is none; one
  changed since the report wrote it is refused (one written before the seal is taken as is)."""
  path = workdir / RESULTS
  if not path.is_file():
    return None
  earlier = files.read_record(path, R.Results)
  data = files.read_json(path)
  if SEAL in data and data.pop(SEAL) != records.json_digest(data):
    raise UserError(f"{path} was changed after the report wrote it (its fingerprint does not "
                    "match), so its results cannot be kept; restore it, or use --fresh to "
                    "archive the report and start over")
  return earlier


def file_digest(path: Path) -> str:
  return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def check_nothing_replaced(workdir: Path, earlier: R.Results | None,
                            inputs: dict[str, dict]) -> None:
  """A part that finished with other inputs (other data, seeds, ablations) is not redone over
  its results: the rerun is refused, naming the difference."""
  for part, now in inputs.items():
    before = earlier.part(part) if earlier is not None else None
    if before is None or not before.done or not before.inputs:
      continue
    diffs = [f"{k} {before.inputs.get(k)!r} (now {v!r})" for k, v in now.items()
             if before.inputs.get(k) != v and (k in before.inputs or k not in ADDED_INPUTS)]
    if not diffs:
      continue
    raise UserError(f"{workdir} holds a finished {PART_TITLES[part]} made with other inputs: "
                    f"{'; '.join(diffs)}. To keep it, rerun with the same data and settings, "
                    f"or leave {part} out of --parts; to replace the report, --fresh (it is "
                    "archived); or use another --workdir")


def check_same_report(workdir: Path, config: Config) -> None:
  """A workdir holds one kind of report: --quick and the course schedule never mix."""
  path = workdir / REPORT_CONFIG
  if path.exists():
    have = files.read_json(path)
    if not isinstance(have, dict) or not isinstance(have.get("quick"), bool):
      raise UserError(f"{path} is damaged (its 'quick' is not true or false); repair or remove "
                      "it, or use --fresh to archive the report and start over")
    if have.get("quick") != config.quick:
      kind = "a --quick" if have.get("quick") else "a full (course-schedule)"
      raise UserError(f"{workdir} holds {kind} report; use another --workdir, or --fresh to "
                      "archive it and start over")
  files.write_json(path, {"quick": config.quick, "schedule": records.to_json(config.schedule)})


