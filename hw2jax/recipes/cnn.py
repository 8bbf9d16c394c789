"""The CNN experiment (Q2): `train_and_evaluate` is one resumable run into its workdir, returning
a `CnnRunSummary` (its summary.json, typed); its tables are `cnn_tables`'. experiments/cnn.py only
parses flags into a `Config` and calls these."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from hw2jax import files, markdown, plots, records
from hw2jax.data import intel
from hw2jax.data.intel import printable
from hw2jax.data.fingerprint import fingerprint_splits
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError
from hw2jax.models import cnn as cnn_model, dropout, registry
from hw2jax.train import optimizer as optimizer_lib, run as run_lib, sharding
from hw2jax.train import trainer as trainer_lib
from hw2jax.train.fit import fit
from hw2jax.train.run import Card, Run

# The CLI's data, and what a model's size is computed for before any data is read (Table 2.3).
IMAGE_SIZE = intel.IMAGE_SIZE
INTEL_SHAPE = (intel.IMAGE_SIZE, intel.IMAGE_SIZE, intel.CHANNELS)
INTEL_CLASSES = len(intel.CLASSES)
CURVES = "curves.png"
TABLE = "table_2_1.md"
SWEEP = "sweep.json"
# What a run leaves in its workdir; --fresh moves these aside (nothing else is touched).
RUN_FILES = (run_lib.METRICS, run_lib.SUMMARY, CURVES, run_lib.CHECKPOINTS, TABLE, SWEEP,
             run_lib.TB)


@dataclasses.dataclass(frozen=True)
class Config:
  """One run; the defaults are the course skeleton's."""
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
  pixels: str = "correct"            # intel.PIXELS: "course" reproduces the skeleton's reshape
  epoch_mode: str = "auto"
  eval_batch_size: int = 1000
  tensorboard: bool = True           # event files in <workdir>/tb/ (metrics.jsonl regardless)
  devices: int = 0                   # data parallelism over the first N devices (0: all)
  max_train_images: int = 0          # a seeded class-stratified subset of the training split

  def validate(self) -> "Config":
    """Checks every setting; the ones that depend on the image size against Intel's 48x48
    (`check_data` checks them again against the data's own)."""
    registry.get(self.model)                      # a family some module registers
    records.require([
        (self.optimizer in ("sgd", "adam"), f"--optimizer={self.optimizer!r}: use sgd or adam"),
        (records.positive(self.learning_rate),
         f"--lr={self.learning_rate} must be a positive number"),
        optimizer_lib.rate_check(self.learning_rate),
        (self.epochs >= 1, f"--epochs={self.epochs} must be at least 1"),
        (self.batch_size >= 1, f"--batch_size={self.batch_size} must be at least 1"),
        (self.eval_batch_size >= 1, f"eval batch size {self.eval_batch_size} must be >= 1"),
        (records.non_negative(self.l2_decay),
         f"--l2_decay={self.l2_decay} must be a finite number >= 0"),
        (0 <= self.dropout < 1 and dropout.keep_threshold(self.dropout) >= 1,
         f"--dropout={self.dropout} must be in [0, {dropout.MAX_RATE:.7f}] (the CNN's dropout "
         "keeps units in steps of 1/65536)"),
        records.seed_check(self.seed),
        (self.kernel_size >= 1 and self.kernel_size % 2 == 1,
         f"--kernel_size={self.kernel_size} must be a positive odd number ('same' padding)"),
        (len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
         f"--channels={','.join(map(str, self.channels))} must be positive widths"),
        *self._size_checks(IMAGE_SIZE),
        (self.init in ("torch", "flax"), f"--init={self.init!r}: use torch or flax"),
        (self.pixels in intel.PIXELS,
         f"--pixels={self.pixels!r} is not one of {', '.join(intel.PIXELS)}"),
        (self.epoch_mode in trainer_lib.EPOCH_MODES,
         f"--epoch_mode={self.epoch_mode!r} is not one of {', '.join(trainer_lib.EPOCH_MODES)}"),
        (self.devices >= 0, f"--devices={self.devices} must be all or a positive number"),
        (self.max_train_images >= 0,
         f"--max_train_images={self.max_train_images} must be >= 0 (0: all)"),
    ])
    return self

  def feature_map_sizes(self, image_size: int = IMAGE_SIZE) -> list[int]:
    """Height (= width) of the input of every conv block: 48, 24, 12 with max-pooling."""
    return [image_size // 2 ** (i if self.maxpool else 0) for i in range(len(self.channels))]

  def _size_checks(self, image_size: int) -> list[tuple[bool, str]]:
    """The conv blocks must leave a feature map, and a kernel fit the smallest one."""
    smallest = min(self.feature_map_sizes(image_size)) if self.channels else 0
    blocks = max(1, image_size.bit_length())            # 48 -> 24 -> 12 -> 6 -> 3 -> 1: six
    return [
        (smallest >= 1,
         f"--channels={','.join(map(str, self.channels))}: {len(self.channels)} blocks with "
         f"2x2 max-pooling shrink a {image_size}x{image_size} image to nothing; use at most "
         f"{blocks} blocks, or --nomaxpool"),
        (self.kernel_size <= max(1, smallest),
         f"--kernel_size={self.kernel_size} is larger than the smallest feature map it "
         f"convolves ({smallest}x{smallest}"
         f"{' after max-pooling' if self.maxpool and len(self.channels) > 1 else ''}); use at "
         f"most {smallest if smallest % 2 else smallest - 1}")]

  def training_data(self, data: ImageData) -> ImageData:
    """`data` with the training images this config trains on (`max_train_images`)."""
    return data.limit_train(self.max_train_images, self.seed)

  def check_data(self, data: ImageData) -> "Config":
    """Settings that depend on the data: a batch no larger than the training set, the course's
    pixel reading only on its image shape, blocks and kernels that fit its images."""
    n = data.sizes()["train"]
    if self.batch_size > n:
      raise UserError(f"--batch_size={self.batch_size} is larger than the training set ({n:,} "
                      f"images); use at most {n:,}")
    if self.pixels == "course" and data.image_shape != INTEL_SHAPE:
      raise UserError(f"--pixels=course reshapes 48x48x3 images as the course skeleton did; "
                      f"{data.name}'s are {'x'.join(map(str, data.image_shape))}: leave it out")
    records.require(self._size_checks(min(data.image_shape[:2])))
    return self

  def build_model(self, num_classes: int = INTEL_CLASSES):
    """The config's model (a Flax module of its `registry` family): one shared instance per
    architecture, because the train state holds `model.apply` and jit keys its programs on it
    (a new, equal module would compile again)."""
    return _model(self.model, tuple(self.channels), self.kernel_size, self.maxpool,
                  self.dropout, self.init, num_classes)

  def to_json(self) -> dict:
    return records.to_json(self)

  def label(self) -> str:
    """For logs and the curves' title (which adds init, batch, optimizer): the model, the rate
    and every other network setting that is not the course's, so an ablation's figures say
    which one they are: 'bn_gap lr=0.01, 5x5 kernels, no max-pool'."""
    return ", ".join([f"{self.model} lr={self.learning_rate:g}"] + [
        fmt(getattr(self, f)) for f, fmt in _LABEL_PARTS if getattr(self, f) != _DEFAULTS[f]])

  def run_name(self, sweep: bool = False) -> str:
    """The default workdir's name: the model, the learning rate (or 'sweep') and every other
    setting that differs from the course's, e.g. 'bn_gap-lr0.01-k5-nopool'. Settings a run may
    change when resumed (run.RESUMABLE) are left out."""
    default = Config()
    parts = [self.model, "sweep" if sweep else f"lr{self.learning_rate:g}"]
    for field, fmt in _NAME_PARTS:
      value = getattr(self, field)
      if value != getattr(default, field):
        parts.append(fmt(value))
    return files.path_component("-".join(parts))      # one folder, whatever a family is named


def pooling_label(maxpool: bool) -> str:
  """The words every log, title and table uses for the pooling setting."""
  return "max-pool" if maxpool else "no max-pool"


# How a setting that differs from the default shows in a run's label (and the curves' title).
_LABEL_PARTS = (("kernel_size", lambda v: f"{v}x{v} kernels"),
                ("maxpool", pooling_label),
                ("channels", lambda v: "channels " + "-".join(map(str, v))),
                ("dropout", lambda v: f"dropout {v:g}"), ("l2_decay", lambda v: f"L2 {v:g}"),
                ("seed", lambda v: f"seed {v}"),
                ("pixels", lambda v: f"{v} pixels"),
                ("max_train_images", lambda v: f"{v} training images"))
_DEFAULTS = {f: getattr(Config(), f) for f, _ in _LABEL_PARTS}
# How a setting that differs from the default shows in a run's default workdir name.
_NAME_PARTS = (
    ("kernel_size", lambda v: f"k{v}"), ("maxpool", lambda v: "maxpool" if v else "nopool"),
    ("channels", lambda v: "ch" + "_".join(map(str, v))), ("batch_size", lambda v: f"bs{v}"),
    ("optimizer", str), ("l2_decay", lambda v: f"l2_{v:g}"), ("dropout", lambda v: f"drop{v:g}"),
    ("seed", lambda v: f"seed{v}"), ("init", lambda v: f"init_{v}"),
    ("pixels", lambda v: f"pixels_{v}"), ("max_train_images", lambda v: f"train{v}"),
)
# Settings added after runs were written: a stored identity without one used this value.
ADDED_SETTINGS = {"pixels": "correct", "max_train_images": 0}


@functools.lru_cache(maxsize=None)
def _model(family, channels, kernel_size, maxpool, dropout, init, num_classes):
  return registry.get(family).build(num_classes=num_classes, channels=channels,
                                    kernel_size=kernel_size, maxpool=maxpool, dropout=dropout,
                                    init_scheme=init)


@dataclasses.dataclass(frozen=True)
class Accuracies:
  """Validation and test accuracy of one model (the seed report gives these two)."""
  val_accuracy: float | None
  test_accuracy: float | None


# The seed report's accuracies after 40 epochs, batch 8, plain SGD, by (model, learning rate).
SEED_REPORT = {("vanilla", 0.1): Accuracies(val_accuracy=0.5734, test_accuracy=0.5533),
               ("vanilla", 0.01): Accuracies(val_accuracy=0.7123, test_accuracy=0.6907),
               ("vanilla", 0.001): Accuracies(val_accuracy=0.6353, test_accuracy=0.6203),
               ("bn_gap", 0.01): Accuracies(val_accuracy=0.7279, test_accuracy=0.7440)}


@dataclasses.dataclass(frozen=True)
class DataSizes:
  """What a run trained on: the source, each split's size and the class names."""
  source: str
  train: int
  val: int
  test: int
  classes: tuple[str, ...] = ()      # empty in summaries written before datasets had names

  @classmethod
  def of(cls, data: ImageData) -> "DataSizes":
    return cls(data.source, **data.sizes(), classes=data.classes)


@dataclasses.dataclass(frozen=True)
class FinalMetrics:
  """The last epoch's numbers, and the test set evaluated with its state."""
  train_loss: float | None
  val_loss: float | None
  val_accuracy: float | None
  test_loss: float | None
  test_accuracy: float | None


@dataclasses.dataclass(frozen=True)
class CnnBestEpoch:
  """The best-validation epoch, and the test accuracy of its checkpoint."""
  epoch: int                        # 1-based; the earliest one on ties
  val_accuracy: float
  test_accuracy: float | None       # None when its checkpoint could not be read


@dataclasses.dataclass(frozen=True)
class CnnRunSummary:
  """What one run did: <workdir>/summary.json, typed."""
  config: Config
  trainable_params: int
  data: DataSizes
  epochs_done: int
  diverged_at: int | None
  status: str
  final: FinalMetrics
  best_val: CnnBestEpoch | None
  train_seconds_total: float
  train_seconds_this_call: float
  device: str
  jax_version: str
  seed_report: Accuracies | None

  def to_json(self) -> dict:
    return records.to_json(self)

  @classmethod
  def from_json(cls, data: dict) -> "CnnRunSummary":
    return records.from_json(cls, data)


def param_count(config: Config, image_shape: tuple[int, ...] = INTEL_SHAPE,
                num_classes: int = INTEL_CLASSES) -> int:
  """Trainable parameters of the config's model on images of `image_shape` (H, W, C)."""
  model = config.build_model(num_classes)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                             jnp.zeros((1, *image_shape), jnp.uint8), train=False))
  return trainer_lib.count_params(shapes["params"])


def describe_params(config: Config, image_shape: tuple[int, ...] = INTEL_SHAPE,
                    num_classes: int = INTEL_CLASSES) -> str:
  """The parameter-count line the CLI prints, of the model sized for the data; it names Table
  2.3 only for the course's two architectures on Intel-shaped data (a new family, the
  ablations' kernel size, pooling and widths, and other data change the count)."""
  default = Config()
  course = (registry.get(config.model).expected_params is not None
            and (config.kernel_size, config.maxpool, tuple(config.channels)) == (
                default.kernel_size, default.maxpool, default.channels)
            and (tuple(image_shape), num_classes) == (INTEL_SHAPE, INTEL_CLASSES))
  count = param_count(config, image_shape, num_classes)
  return (f"{config.model}: {count:,} trainable parameters"
          + (" (Table 2.3)" if course else ""))


def device_data(data: ImageData, trainer: trainer_lib.Trainer, pixels: str = "correct"
                ) -> dict:
  """Every split onto the trainer's device(s) once, its pixels read as `pixels` says
  (intel.PIXELS): {'train'|'val'|'test': {'image', 'label'}}."""
  return {split: trainer.put(cnn_model.as_dataset(intel.model_pixels(images, pixels), labels))
          for split, (images, labels) in ((s, data.split(s)) for s in intel.SPLITS)}


def make_trainer(config: Config) -> trainer_lib.Trainer:
  """The config's trainer; data-parallel over the chosen devices when there are several."""
  return trainer_lib.trainer_for(cnn_model.loss_fn, cnn_model.eval_fn, config)


def new_state(config: Config, image_shape: tuple[int, ...] = INTEL_SHAPE,
              num_classes: int = INTEL_CLASSES) -> trainer_lib.TrainState:
  """The config's initial train state for images of `image_shape` (H, W, C) and `num_classes`
  classes (also the template its checkpoints restore into)."""
  optimizer = optimizer_lib.make_optimizer(config.optimizer, config.learning_rate, config.l2_decay)
  return trainer_lib.create_train_state(
      config.build_model(num_classes), (jnp.zeros((1, *image_shape), jnp.uint8),), optimizer,
      config.seed, train=False)


def train_and_evaluate(config: Config, data: ImageData, workdir: str | Path, *,
                       fresh: bool = False, arrays: dict | None = None,
                       trainer: trainer_lib.Trainer | None = None,
                       log: Callable[[str], None] = print, prefix: str = "",
                       progress: bool = True) -> CnnRunSummary:
  """One run: trains (resuming from `workdir`), evaluates val/test, writes summary and plot.

  `arrays` (from `device_data`) and `trainer` can be shared between runs of a sweep;
  `progress` shows the steps inside each epoch.
  """
  data = config.validate().training_data(data)
  config.check_data(data)
  trainer = trainer or make_trainer(config)     # checks the batch against the devices
  with Run.train(workdir, card(config, data), fresh=fresh, run_files=RUN_FILES,
                 added_settings=ADDED_SETTINGS, tensorboard=config.tensorboard, log=log,
                 prefix=prefix) as run:
    return _train_and_evaluate(config, data, run, arrays=arrays, trainer=trainer,
                               progress=progress)


def card(config: Config, data: ImageData) -> Card:
  """What a run of `config` on `data` is made from (its workdir holds no other run)."""
  return Card(config.to_json(), data.source,
              fingerprint_splits({s: data.split(s) for s in intel.SPLITS}),
              images={"shape": list(data.image_shape), "classes": list(data.classes)})


def _train_and_evaluate(config, data, run, *, arrays, trainer, progress):
  arrays = arrays or device_data(data, trainer, config.pixels)
  state = trainer.put(new_state(config, data.image_shape, data.num_classes))

  def evaluate(s):
    m = trainer.evaluate(s, arrays["val"])
    return {"val_loss": m["loss"], "val_accuracy": m["accuracy"]}

  result = fit(trainer, state, arrays["train"], run, epochs=config.epochs, evaluate=evaluate,
               best_metric="val_accuracy",
               progress_keys=("train_loss", "val_loss", "val_accuracy"), unit="images",
               progress=progress)
  last = dict(result.history[-1]) if result.history else {}
  # Diverged weights are NaN: their "accuracy" would be the share of one class.
  test = ({"loss": None, "accuracy": None} if result.diverged_at else
          trainer.evaluate(result.state, arrays["test"]))
  best = None
  if result.best is not None and not result.diverged_at:
    best_state = run.best_state(result.state)
    best_test = trainer.evaluate(best_state, arrays["test"]) if best_state is not None else None
    best = CnnBestEpoch(epoch=result.best["epoch"], val_accuracy=result.best["val_accuracy"],
                        test_accuracy=best_test and best_test["accuracy"])
  summary = CnnRunSummary(
      config=config, trainable_params=trainer_lib.count_params(state.params),
      data=DataSizes.of(data), epochs_done=len(result.history),
      diverged_at=result.diverged_at, status=result.status(config.epochs),
      final=FinalMetrics(last.get("train_loss"), last.get("val_loss"), last.get("val_accuracy"),
                         test["loss"], test["accuracy"]),
      best_val=best, train_seconds_total=result.train_seconds_total,
      train_seconds_this_call=result.train_seconds, device=sharding.device_name(trainer.mesh),
      jax_version=jax.__version__,
      seed_report=(SEED_REPORT.get((config.model, config.learning_rate))
                   if data.name == "intel" else None))     # the seed's numbers are Intel's
  run.finish(summary.to_json(), {**records.to_json(summary.final),
                                 "best_val_test_accuracy": best and best.test_accuracy})
  if result.history:
    plots.plot_history(
        result.history, run.path(CURVES),
        title=f"{config.label()}{'' if data.name == 'intel' else f' on {data.name} data'}: "
              f"{config.init} init, batch {config.batch_size}, {config.optimizer}"
              + (f" (diverged at epoch {result.diverged_at})" if result.diverged_at else ""),
        panels=(("validation accuracy", ("val_accuracy",)),
                ("loss", ("train_loss", "val_loss"))),
        running_mean_of="train_loss",
        note="solid training loss: true mean over each epoch; dashed (a ring for one epoch): "
             "running mean since epoch 1, which is what the course skeleton plotted")
  run.log(f"{run.prefix}{config.label()}: {summary.status}; final val acc "
      f"{markdown.fmt(summary.final.val_accuracy)}, test acc "
      f"{markdown.fmt(summary.final.test_accuracy)}")
  return summary


@dataclasses.dataclass(frozen=True)
class TrainedCnn:
  """A trained run, read back: its settings, image shape (H, W, C), class names, and its best
  checkpoint's variables and optimizer steps."""
  config: Config
  image_shape: tuple[int, int, int]
  classes: tuple[str, ...]
  variables: dict
  step: int


def trained_run(workdir: str | Path, log: Callable[[str], None] = print) -> TrainedCnn:
  """The run trained in `workdir`, read only; a UserError if it holds none."""
  workdir = Path(workdir)
  untrained = UserError(f"{printable(workdir)} holds no trained CNN run (for a --lr sweep give "
                        "one of its lr_<lr> folders); train one first with the same --workdir")
  if not workdir.is_dir():
    raise untrained
  with Run.read(workdir, log=log) as run:
    saved = run.card.config if run.card else {}
    if "optimizer" not in saved or "from_torch" in saved:
      raise untrained
    config = records.from_json(Config, saved)
    shape, classes = images_of(run.card.images, workdir)
    state = run.best_state(new_state(config, shape, len(classes)))
  if state is None:
    raise UserError(f"{printable(workdir)} has no readable best checkpoint; train (on) in that "
                    "--workdir")
  return TrainedCnn(config, shape, classes, jax.device_get(state.variables()), int(state.step))


def images_of(images: dict | None, workdir: Path
              ) -> tuple[tuple[int, int, int], tuple[str, ...]]:
  """The image shape and class names of the run in `workdir`, whose card recorded `images`; a
  run older than that is Intel's if its summary.json names Intel's classes or none (older
  summaries named none), else a UserError."""
  if images is not None:
    return tuple(images["shape"]), tuple(images["classes"])
  path = workdir / run_lib.SUMMARY
  summary = files.read_json(path) if path.is_file() else {}
  data = summary.get("data") if isinstance(summary, dict) else None
  named = tuple((data.get("classes") if isinstance(data, dict) else None) or intel.CLASSES)
  if named != intel.CLASSES:
    raise UserError(f"{printable(workdir)} was trained on {len(named)}-class data before runs "
                    "recorded their image shape, which this command needs; train it again "
                    "with --fresh")
  return INTEL_SHAPE, intel.CLASSES
