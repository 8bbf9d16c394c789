"""Q2 experiments: train the course CNN on Intel images, evaluate, write the run's workdir.

`train_and_evaluate` is one run (resumable); `sweep` runs several learning rates on one compiled
program and writes the seed report's Table 2.1. The absl main in experiments/cnn.py only parses
flags into a `Config` and calls these.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from hw2jax import classifier, cnn, fit as fit_lib, runlog, training
from hw2jax import sharding, tensorboard as tb, workdir as workdir_lib
from hw2jax.data import intel
from hw2jax.errors import UserError

MODELS = ("vanilla", "bn_gap")
# The seed report (test accuracy, validation accuracy) after 40 epochs, batch 8, plain SGD.
SEED_REPORT = {("vanilla", 0.1): (0.5533, 0.5734), ("vanilla", 0.01): (0.6907, 0.7123),
               ("vanilla", 0.001): (0.6203, 0.6353), ("bn_gap", 0.01): (0.7440, 0.7279)}
EXPECTED_PARAMS = {"vanilla": 5_340_742, "bn_gap": 755_718}
IMAGE_SIZE = intel.IMAGE_SIZE
MAX_POOLED_BLOCKS = 6           # 48 -> 24 -> 12 -> 6 -> 3 -> 1: the sixth block sees 1x1
CURVES = "curves.png"
TABLE = "table_2_1.md"
# What a run leaves in its workdir; --fresh moves these aside (nothing else is touched).
RUN_FILES = (runlog.METRICS, runlog.SUMMARY, CURVES, "checkpoints", TABLE, "sweep.json")


@dataclasses.dataclass(frozen=True)
class Config:
  """One Q2 run; the defaults are the course skeleton's."""
  model: str = "vanilla"
  learning_rate: float = 0.01
  epochs: int = 40
  batch_size: int = 8
  optimizer: str = "sgd"
  l2_decay: float = 0.0
  dropout: float = 0.1
  seed: int = 42
  kernel_size: int = 3
  maxpool: bool = True
  channels: tuple[int, ...] = (32, 64, 128)
  init: str = "torch"
  epoch_mode: str = "auto"
  eval_batch_size: int = 1000
  tensorboard: bool = True           # event files in <workdir>/tb/ (metrics.jsonl regardless)
  devices: int = 0                   # data parallelism over the first N devices (0: all)

  def validate(self) -> "Config":
    checks = [
        (self.model in MODELS, f"--model={self.model!r} is not one of {', '.join(MODELS)}"),
        (self.optimizer in ("sgd", "adam"), f"--optimizer={self.optimizer!r}: use sgd or adam"),
        (self.learning_rate > 0 and math.isfinite(self.learning_rate),
         f"--lr={self.learning_rate} must be a positive number"),
        (self.epochs >= 1, f"--epochs={self.epochs} must be at least 1"),
        (self.batch_size >= 1, f"--batch_size={self.batch_size} must be at least 1"),
        (self.eval_batch_size >= 1, f"eval batch size {self.eval_batch_size} must be >= 1"),
        (self.devices >= 0, f"--devices={self.devices} must be all or a positive number"),
        (self.l2_decay >= 0, f"--l2_decay={self.l2_decay} must be >= 0"),
        (0 <= self.dropout < 1, f"--dropout={self.dropout} must be in [0, 1)"),
        (self.kernel_size >= 1 and self.kernel_size % 2 == 1,
         f"--kernel_size={self.kernel_size} must be a positive odd number ('same' padding)"),
        (len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
         f"--channels={','.join(map(str, self.channels))} must be positive widths"),
        (min(self.feature_map_sizes()) >= 1,
         f"--channels={','.join(map(str, self.channels))}: {len(self.channels)} blocks with "
         f"2x2 max-pooling shrink a {IMAGE_SIZE}x{IMAGE_SIZE} image to nothing; use at most "
         f"{MAX_POOLED_BLOCKS} blocks, or --nomaxpool"),
        (self.kernel_size <= max(1, min(self.feature_map_sizes())),
         f"--kernel_size={self.kernel_size} is larger than the smallest feature map it "
         f"convolves ({min(self.feature_map_sizes())}x{min(self.feature_map_sizes())}"
         f"{' after max-pooling' if self.maxpool and len(self.channels) > 1 else ''}); use at "
         f"most {_largest_odd(min(self.feature_map_sizes()))}"),
        (self.init in ("torch", "flax"), f"--init={self.init!r}: use torch or flax"),
        (self.epoch_mode in training.EPOCH_MODES,
         f"--epoch_mode={self.epoch_mode!r} is not one of {', '.join(training.EPOCH_MODES)}"),
    ]
    for ok, message in checks:
      if not ok:
        raise UserError(message)
    return self

  def feature_map_sizes(self) -> list[int]:
    """Height (= width) of the input of every conv block: 48, 24, 12 with max-pooling."""
    return [IMAGE_SIZE // 2 ** (i if self.maxpool else 0) for i in range(len(self.channels))]

  def check_data(self, data: intel.IntelData) -> "Config":
    """Settings that depend on the data: a batch must not be larger than the training set."""
    n = data.sizes()["train"]
    if self.batch_size > n:
      raise UserError(f"--batch_size={self.batch_size} is larger than the training set ({n:,} "
                      f"images); use at most {n:,}")
    return self

  def build_model(self) -> cnn.CNN:
    """The config's model: one shared instance per architecture, because the train state holds
    `model.apply` and jit keys its programs on it (a new, equal module would compile again)."""
    return _model(self.model == "bn_gap", tuple(self.channels), self.kernel_size, self.maxpool,
                  self.dropout, self.init)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["channels"] = list(self.channels)
    return d

  def label(self) -> str:
    return f"{self.model} lr={self.learning_rate:g}"

  def run_name(self, sweep: bool = False) -> str:
    """The default workdir's name: the model, the learning rate (or 'sweep') and every other
    setting that differs from the course's, e.g. 'bn_gap-lr0.01-k5-nopool'. Settings a run may
    change when resumed (epochs, epoch mode) are left out."""
    default = Config()
    parts = [self.model, "sweep" if sweep else f"lr{self.learning_rate:g}"]
    for field, fmt in _NAME_PARTS:
      value = getattr(self, field)
      if value != getattr(default, field):
        parts.append(fmt(value))
    return "-".join(parts)


# How a setting that differs from the default shows in a run's default workdir name.
_NAME_PARTS = (
    ("kernel_size", lambda v: f"k{v}"), ("maxpool", lambda v: "maxpool" if v else "nopool"),
    ("channels", lambda v: "ch" + "_".join(map(str, v))), ("batch_size", lambda v: f"bs{v}"),
    ("optimizer", str), ("l2_decay", lambda v: f"l2_{v:g}"), ("dropout", lambda v: f"drop{v:g}"),
    ("seed", lambda v: f"seed{v}"), ("init", lambda v: f"init_{v}"),
)   # epochs, epoch_mode, eval_batch_size, tensorboard, devices: see workdir.RESUMABLE


def _largest_odd(n: int) -> int:
  return n if n % 2 else n - 1


def param_count(config: Config) -> int:
  model = config.build_model()
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                             jnp.zeros((1, 48, 48, 3), jnp.uint8), train=False))
  return cnn.count_params(shapes["params"])


@functools.lru_cache(maxsize=None)
def _model(batch_norm, channels, kernel_size, maxpool, dropout, init) -> cnn.CNN:
  return cnn.CNN(batch_norm=batch_norm, channels=channels, kernel_size=kernel_size,
                 maxpool=maxpool, dropout=dropout, init_scheme=init)


def describe_params(config: Config) -> str:
  """The parameter-count line the CLI prints; it names Table 2.3 only for the course's two
  architectures (kernel size, pooling and widths of the ablations change the count)."""
  n = param_count(config)
  default = Config()
  course = (config.kernel_size, config.maxpool, tuple(config.channels)) == (
      default.kernel_size, default.maxpool, default.channels)
  return f"{config.model}: {n:,} trainable parameters" + (" (Table 2.3)" if course else "")


def device_data(data: intel.IntelData, trainer: training.Trainer) -> dict:
  """Every split onto the trainer's device(s) once: {'train'|'val'|'test': {'image', 'label'}}."""
  return {split: trainer.put(classifier.as_dataset(*data.split(split)))
          for split in intel.SPLITS}


def make_trainer(config: Config) -> training.Trainer:
  """The config's trainer; data-parallel over all devices when there are several."""
  return training.Trainer(classifier.loss_fn, classifier.eval_fn, batch_size=config.batch_size,
                          eval_batch_size=config.eval_batch_size, epoch_mode=config.epoch_mode,
                          mesh=sharding.data_mesh(sharding.select_devices(config.devices)))


def train_and_evaluate(config: Config, data: intel.IntelData, workdir: str | Path, *,
                       fresh: bool = False, arrays: dict | None = None,
                       trainer: training.Trainer | None = None,
                       log: Callable[[str], None] = print, prefix: str = "") -> dict:
  """One run: trains (resuming from `workdir`), evaluates val/test, writes summary and plot.

  `arrays` (from `device_data`) and `trainer` can be shared between runs of a sweep.
  Returns the summary that is also written to <workdir>/summary.json.
  """
  config.validate().check_data(data)
  trainer = trainer or make_trainer(config)     # checks the batch against the devices
  with workdir_lib.locked(workdir) as workdir:
    return _train_and_evaluate(config, data, workdir, fresh=fresh, arrays=arrays,
                               trainer=trainer, log=log, prefix=prefix)


def _train_and_evaluate(config, data, workdir, *, fresh, arrays, trainer, log, prefix) -> dict:
  workdir = workdir_lib.prepare(workdir, config.to_json(), data.source, fresh=fresh,
                                run_files=RUN_FILES, log=log)
  arrays = arrays or device_data(data, trainer)
  model = config.build_model()
  tx = training.make_optimizer(config.optimizer, config.l2_decay)
  example = (jnp.zeros((1, 48, 48, 3), jnp.uint8),)
  state = trainer.put(training.create_train_state(model, example, tx, config.seed,
                                                  learning_rate=config.learning_rate,
                                                  train=False))
  n_params = cnn.count_params(state.params)

  def evaluate(s):
    m = trainer.evaluate(s, arrays["val"])
    return {"val_loss": m["loss"], "val_accuracy": m["accuracy"]}

  result = fit_lib.fit(trainer, state, arrays["train"], epochs=config.epochs, evaluate=evaluate,
                       workdir=workdir, best_metric="val_accuracy", best_mode="max",
                       progress_keys=("train_loss", "val_loss", "val_accuracy"), log=log,
                       prefix=prefix, tensorboard=config.tensorboard)
  final = dict(result.history[-1]) if result.history else {}
  test = trainer.evaluate(result.state, arrays["test"])
  summary = {
      "config": config.to_json(),
      "trainable_params": n_params,
      "data": {"source": data.source, **data.sizes()},
      "epochs_done": len(result.history),
      "diverged_at": result.diverged_at,
      "status": (f"diverged at epoch {result.diverged_at}" if result.diverged_at else
                 "completed" if len(result.history) >= config.epochs else
                 f"stopped at epoch {len(result.history)} of {config.epochs}"),
      "final": {"train_loss": final.get("train_loss"), "val_loss": final.get("val_loss"),
                "val_accuracy": final.get("val_accuracy"), "test_loss": test["loss"],
                "test_accuracy": test["accuracy"]},
      "best_val": None,
      "train_seconds_total": result.train_seconds_total,
      "train_seconds_this_call": result.train_seconds,
      "device": _device_name(trainer),
      "jax_version": jax.__version__,
      "seed_report": _seed_row(config),
  }
  if result.best is not None and not result.diverged_at:
    best_state = fit_lib.restore_best(workdir, result.state, best_metric="val_accuracy",
                                        log=log)
    best_test = trainer.evaluate(best_state, arrays["test"]) if best_state is not None else None
    summary["best_val"] = {"epoch": result.best["epoch"],
                           "val_accuracy": result.best["val_accuracy"],
                           "test_accuracy": best_test and best_test["accuracy"]}
  runlog.write_json(workdir / runlog.SUMMARY, summary)
  tb.write_hparams(workdir, config.to_json(), {
      **summary["final"], "best_val_test_accuracy": (summary["best_val"] or {}).get(
          "test_accuracy")}, enabled=config.tensorboard)
  if result.history:
    runlog.plot_history(
        result.history, workdir / CURVES,
        title=f"{config.label()}: {config.init} init, batch {config.batch_size}, "
              f"{config.optimizer}" + (f" (diverged at epoch {result.diverged_at})"
                                       if result.diverged_at else ""),
        panels=(("validation accuracy", ("val_accuracy",)),
                ("loss", ("train_loss", "val_loss"))),
        running_mean_of="train_loss",
        note="solid training loss: true mean over each epoch; dashed: running mean since "
             "epoch 1, which is what the course skeleton plotted")
  log(f"{prefix}{config.label()}: {summary['status']}; final val acc "
      f"{_fmt(summary['final']['val_accuracy'])}, test acc {test['accuracy']:.4f}")
  return summary


def sweep(config: Config, learning_rates: Sequence[float], data: intel.IntelData,
          workdir: str | Path, *, fresh: bool = False, log: Callable[[str], None] = print
          ) -> list[dict]:
  """One run per learning rate in <workdir>/lr_<lr>/ (one compiled program for all), then
  Table 2.1 as markdown in <workdir>/table_2_1.md and the summaries in <workdir>/sweep.json."""
  if len(set(learning_rates)) != len(learning_rates):
    raise UserError(f"--lr={','.join(f'{lr:g}' for lr in learning_rates)} repeats a learning "
                    "rate; give each rate once")
  for lr in learning_rates:
    dataclasses.replace(config, learning_rate=lr).validate().check_data(data)
  with workdir_lib.locked(workdir) as workdir:
    return _sweep(config, learning_rates, data, workdir, fresh=fresh, log=log)


def _sweep(config, learning_rates, data, workdir, *, fresh, log) -> list[dict]:
  if fresh:
    archived = workdir_lib.archive(workdir, (*RUN_FILES, workdir_lib.CONFIG), globs=("lr_*",))
    if archived:
      log(f"--fresh: moved the previous sweep's files to {archived}")
  trainer = make_trainer(config)
  arrays = device_data(data, trainer)
  summaries = []
  for lr in learning_rates:
    run_config = dataclasses.replace(config, learning_rate=lr)
    log(f"== {run_config.label()} ==")
    summaries.append(train_and_evaluate(run_config, data, workdir / f"lr_{lr:g}", arrays=arrays,
                                        trainer=trainer, log=log, prefix=f"[lr {lr:g}] "))
  table = table_2_1(summaries)
  (workdir / TABLE).write_text(table)
  runlog.write_json(workdir / "sweep.json", summaries)
  log(table)
  return summaries


def table_2_1(summaries: Sequence[dict]) -> str:
  """The seed's Table 2.1: accuracies per learning rate, ours beside the seed report's."""
  lines = ["| model | learning rate | val acc | test acc | seed val acc | seed test acc | "
           "status | curves |",
           "|---|---|---|---|---|---|---|---|"]
  for s in summaries:
    c, f = s["config"], s["final"]
    seed = s.get("seed_report") or {}
    lines.append(
        f"| {c['model']} | {c['learning_rate']:g} | {_fmt(f['val_accuracy'])} | "
        f"{_fmt(f['test_accuracy'])} | {_fmt(seed.get('val_accuracy'))} | "
        f"{_fmt(seed.get('test_accuracy'))} | {s['status']} | lr_{c['learning_rate']:g}/"
        f"{CURVES} |")
  return "\n".join(lines) + "\n"


def _seed_row(config: Config) -> dict | None:
  seed = SEED_REPORT.get((config.model, config.learning_rate))
  if seed is None:
    return None
  return {"test_accuracy": seed[0], "val_accuracy": seed[1]}


def _fmt(x) -> str:
  return "—" if x is None else f"{x:.4f}"


def _device_name(trainer: training.Trainer) -> str:
  """'<platform>:<kind> x<devices the trainer splits batches over>'."""
  d = jax.devices()[0]
  count = 1 if trainer.mesh is None else trainer.mesh.devices.size
  return f"{d.platform}:{getattr(d, 'device_kind', '')} x{count}"