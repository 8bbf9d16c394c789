"""The phoneme-to-grapheme experiment (the homework's Q3): train, decode the test set, write the
workdir; the seed report's Tables 3.1-3.3.

`train_and_evaluate` is one run (resumable) and returns a `P2GRunSummary`, the typed form of its
summary.json: training through `hw2jax.train.fit` with the validation set decoded greedily after
every epoch (the best-CER checkpoint is kept), then the test set decoded from that checkpoint
greedily, and by beam search and nucleus sampling when asked (`spellings`). `tables_3` renders
the tables (for tables.md and the report); `p2g_predict` spells new pronunciations with a
workdir's best checkpoint. The absl main in experiments/p2g.py only parses flags and calls these.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from hw2jax import files, markdown, plots, records
from hw2jax.data import phonemes
from hw2jax.data.fingerprint import fingerprint_splits
from hw2jax.errors import UserError
from hw2jax.models import seq2seq
from hw2jax.recipes import p2g_evaluation
from hw2jax.recipes.p2g_evaluation import TABLES, Decoding, Scores
from hw2jax.train import optimizer as optimizer_lib, run as run_lib, sharding
from hw2jax.train import trainer as trainer_lib
from hw2jax.train.fit import fit
from hw2jax.train.run import Card, Run

COURSE_VOCAB = (107, 93)
EXPECTED_PARAMS = {False: 256_093, True: 321_757}        # Flax, course vocabularies
EXPECTED_TORCH_PARAMS = {False: 257_117, True: 322_781}  # PyTorch's convention
VOCAB, CER_PLOT = "vocab.json", "cer.png"
RUN_FILES = (run_lib.METRICS, run_lib.SUMMARY, run_lib.CONFIG, VOCAB, TABLES, CER_PLOT,
             p2g_evaluation.PREDICTIONS, p2g_evaluation.ATTENTION_PLOT, run_lib.CHECKPOINTS,
             run_lib.TB)


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run; the defaults are the course's."""
  attention: bool = False
  learning_rate: float = 0.003
  batch_size: int = 64
  epochs: int = 20
  hidden_size: int = 128
  dropout: float = 0.3
  seed: int = 42
  max_train_words: int = 0
  # Batches are random samples of the training set, like the course's loader; each is padded to
  # the narrowest of `widths` padded widths that holds it (fewer: more padding, fewer programs).
  widths: int = 5
  unroll: int = 1
  epoch_mode: str = "auto"
  eval_batch_size: int = 1000
  tensorboard: bool = True           # event files in <workdir>/tb/ (metrics.jsonl regardless)
  devices: int = 0                   # data parallelism over the first N devices (0: all)

  def validate(self) -> "Config":
    records.require([
        (records.positive(self.learning_rate),
         f"--lr={self.learning_rate} must be a positive number"),
        optimizer_lib.rate_check(self.learning_rate),
        (self.epochs >= 1, f"--epochs={self.epochs} must be at least 1"),
        (self.batch_size >= 1, f"--batch_size={self.batch_size} must be at least 1"),
        (self.hidden_size >= 2 and self.hidden_size % 2 == 0,
         f"--hidden_size={self.hidden_size} must be a positive even number (two encoder "
         "directions of half the size)"),
        (0 <= self.dropout < 1, f"--dropout={self.dropout} must be in [0, 1)"),
        records.seed_check(self.seed),
        (self.max_train_words >= 0, f"--max_train_words={self.max_train_words} must be >= 0"),
        (self.widths >= 1, f"--widths={self.widths} must be at least 1"),
        (self.unroll >= 1, f"--unroll={self.unroll} must be at least 1"),
        (self.eval_batch_size >= 1, f"eval batch size {self.eval_batch_size} must be >= 1"),
        (self.devices >= 0, f"--devices={self.devices} must be all or a positive number"),
        (self.epoch_mode in trainer_lib.EPOCH_MODES,
         f"--epoch_mode={self.epoch_mode!r} is not one of {', '.join(trainer_lib.EPOCH_MODES)}"),
    ])
    return self

  def check_data(self, data: phonemes.P2GData) -> "Config":
    """Settings that depend on the data: a batch must not be larger than the training set."""
    n = len(data.train)
    if self.batch_size > n:
      raise UserError(f"--batch_size={self.batch_size} is larger than the training set ({n:,} "
                      f"pairs); use at most {n:,}")
    return self

  def build_model(self, src_vocab: int, tgt_vocab: int) -> seq2seq.Seq2Seq:
    """One shared instance per architecture: jit keys the train step on `model.apply`."""
    return _model(src_vocab, tgt_vocab, self.hidden_size, self.attention, self.dropout,
                  self.unroll)

  def to_json(self) -> dict:
    return records.to_json(self)

  @classmethod
  def from_json(cls, d: dict) -> "Config":
    return records.from_json(cls, d)

  def name(self) -> str:
    return "attention" if self.attention else "noattention"


@functools.lru_cache(maxsize=None)
def _model(src_vocab, tgt_vocab, hidden_size, attention, dropout, unroll) -> seq2seq.Seq2Seq:
  return seq2seq.Seq2Seq(src_vocab, tgt_vocab, hidden_size=hidden_size, attention=attention,
                         dropout=dropout, unroll=unroll)


# ----------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class SeedScores:
  """The seed report's test numbers: Table 3.1 (no attention), 3.2 (attention), 3.3 (nucleus
  sampling, p = 0.8, 3 samples)."""
  noattention: Scores
  attention: Scores
  nucleus: Scores


SEED_REPORT = SeedScores(noattention=Scores(cer=0.2992, wer=0.7970),
                         attention=Scores(cer=0.2033, wer=0.7160),
                         nucleus=Scores(cer=0.2242, wer=0.7660, wer_at_k=0.6340))


@dataclasses.dataclass(frozen=True)
class P2GDataSizes:
  """The data of a run; the report also says whether it is the course's (`course`)."""
  source: str
  train: int
  valid: int
  test: int
  source_vocab: int
  target_vocab: int
  course: bool | None = records.optional()


@dataclasses.dataclass(frozen=True)
class P2GBestEpoch:
  """The best-validation (lowest CER) epoch and its validation numbers."""
  epoch: int
  val_cer: float | None
  val_wer: float | None
  val_loss: float | None


@dataclasses.dataclass(frozen=True)
class P2GRunSummary:
  """What one run did: <workdir>/summary.json, typed. `test` maps 'greedy', 'beam<N>' and
  'nucleus' to their scores on the test set."""
  config: Config
  decoding: Decoding
  trainable_params: int
  trainable_params_torch_convention: int
  data: P2GDataSizes
  epochs_done: int
  diverged_at: int | None
  status: str
  evaluated_checkpoint: str
  best_val: P2GBestEpoch | None
  test: dict[str, Scores]
  seed_report: SeedScores
  train_seconds_total: float
  train_seconds_this_call: float
  device: str
  jax_version: str

  def to_json(self) -> dict:
    return records.to_json(self)

  @classmethod
  def from_json(cls, data: dict) -> "P2GRunSummary":
    return records.from_json(cls, data)


def param_counts(config: Config, src_vocab: int, tgt_vocab: int) -> tuple[int, int]:
  """(Flax count, PyTorch-convention count) of the model for these vocabulary sizes."""
  model = config.build_model(src_vocab, tgt_vocab)
  x = jnp.zeros((1, 2), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, x,
                                             jnp.ones((1,), jnp.int32), x))
  n = trainer_lib.count_params(shapes["params"])
  return n, seq2seq.torch_param_count(n, config.hidden_size)


def describe_params(config: Config) -> str:
  """The parameter-count line the CLI prints: the model on the course's vocabularies."""
  n, t = param_counts(config, *COURSE_VOCAB)
  return (f"{config.name()}, hidden {config.hidden_size}: {n:,} trainable parameters with the "
          f"course's vocabularies {COURSE_VOCAB[0]}/{COURSE_VOCAB[1]} (Flax, one bias per LSTM "
          f"gate; {t:,} in PyTorch's convention of two)")


def describe_data_params(config: Config, vocab_sizes: tuple[int, int]) -> str:
  n, t = param_counts(config, *vocab_sizes)
  return (f"with this data's vocabularies {vocab_sizes[0]}/{vocab_sizes[1]}: {n:,} trainable "
          f"parameters ({t:,} in PyTorch's convention)")


def make_trainer(config: Config) -> trainer_lib.Trainer:
  """The config's trainer; data-parallel over the chosen devices when there are several."""
  return trainer_lib.trainer_for(seq2seq.loss_fn, seq2seq.eval_fn, config)


def train_widths(config: Config, data: phonemes.P2GData, trainer: trainer_lib.Trainer
                 ) -> trainer_lib.Widths:
  """The training pairs at `config.widths` padded widths, on the trainer's device(s)."""
  copies, narrowest = phonemes.padded_widths(data.train, data.src_vocab, data.tgt_vocab,
                                             config.widths, config.batch_size)
  return trainer_lib.Widths([trainer.put(c) for c in copies], narrowest)


def new_state(config: Config, model: seq2seq.Seq2Seq) -> trainer_lib.TrainState:
  optimizer = optimizer_lib.make_optimizer("adam", config.learning_rate,
                                         update_scale=seq2seq.torch_update_scale)
  one = jnp.ones((1, 2), jnp.int32)
  return trainer_lib.create_train_state(model, (one, jnp.ones((1,), jnp.int32), one), optimizer,
                                        config.seed)


# ----------------------------------------------------------------------------------------------
# Runs


def train_and_evaluate(config: Config, data: phonemes.P2GData, workdir: str | Path, *,
                       decoding_options: Decoding = Decoding(), fresh: bool = False,
                       log: Callable[[str], None] = print, progress: bool = True
                       ) -> P2GRunSummary:
  """One run: trains (resuming from `workdir`), decodes valid/test with the best checkpoint,
  writes summary.json, tables.md, test_predictions.tsv and the plots; `progress` shows the
  steps inside each epoch."""
  config = keep_former_widths(config.validate(), workdir, fresh, log).check_data(data)
  decoding_options.validate()
  trainer = make_trainer(config)                # checks the batch against the devices
  vocab = {"source": list(data.src_vocab.symbols), "target": list(data.tgt_vocab.symbols)}
  card = Card(config.to_json(), data.source,
              fingerprint_splits({s: data.split(s) for s in phonemes.SPLITS}), vocab)
  with Run.train(workdir, card, fresh=fresh, run_files=RUN_FILES,
                 tensorboard=config.tensorboard, log=log) as run:
    return _train_and_evaluate(config, data, run, trainer, decoding_options=decoding_options,
                               progress=progress)


# The default number of padded widths until 2026-12 (then 5: epochs about 1.3x faster for about
# 4 s more compilation, BUILD.md). Padded shapes shape the dropout masks, so the widths are part
# of a run's identity.
FORMER_WIDTHS = 3


def keep_former_widths(config: Config, workdir: str | Path, fresh: bool,
                       log: Callable[[str], None]) -> Config:
  """`config`, or, when it asks the default widths of a run in `workdir` started at the former
  default, that run's: resumed as it began, instead of refused (the report's Q3 runs too)."""
  if fresh or config.widths != Config.widths or not Path(workdir).is_dir():
    return config                   # (a workdir that is no folder: Run.train says what it is)
  card = run_lib.stored_card(workdir)
  if card is None or card.config.get("widths") != FORMER_WIDTHS:
    return config
  log(f"{workdir}: a run started with --widths={FORMER_WIDTHS}, the former default; it goes on "
      f"with them (--fresh starts anew at {Config.widths})")
  return dataclasses.replace(config, widths=FORMER_WIDTHS)


def _train_and_evaluate(config, data, run, trainer, *, decoding_options, progress):
  run.write(VOCAB, run.card.vocab)
  model = config.build_model(len(data.src_vocab), len(data.tgt_vocab))
  train = train_widths(config, data, trainer)
  val_tf = trainer.put(phonemes.encode(data.valid, data.src_vocab, data.tgt_vocab))
  splits = p2g_evaluation.evaluation_splits(data)
  decoders = p2g_evaluation.Decoders(model, data.tgt_vocab, config.eval_batch_size,
                                     decoding_options.max_len)
  state = trainer.put(new_state(config, model))
  n_params = trainer_lib.count_params(state.params)

  def evaluate(s):
    val = splits["valid"]
    predictions, _ = decoders.greedy(s.params, val.src, val.src_len)
    m = p2g_evaluation.scores(predictions, val.golds)
    return {"val_loss": trainer.evaluate(s, val_tf)["loss"], "val_cer": m.cer,
            "val_wer": m.wer}

  result = fit(trainer, state, train, run, epochs=config.epochs, evaluate=evaluate,
               best_metric="val_cer", best_mode="min",
               progress_keys=("train_loss", "val_loss", "val_cer", "val_wer"), unit="words",
               progress=progress)
  best_state = None
  if result.best is not None:
    best_state = run.best_state(result.state)
  evaluated = best_state if best_state is not None else result.state
  test = {} if result.diverged_at else p2g_evaluation.decode_test(   # a diverged run has no scores
      decoding_options, decoders, evaluated.params, splits["test"], config.seed, run.workdir,
      run.log)
  best = result.best
  summary = P2GRunSummary(
      config=config, decoding=decoding_options, trainable_params=n_params,
      trainable_params_torch_convention=seq2seq.torch_param_count(n_params, config.hidden_size),
      data=P2GDataSizes(data.source, **data.sizes(), source_vocab=len(data.src_vocab),
                        target_vocab=len(data.tgt_vocab)),
      epochs_done=len(result.history), diverged_at=result.diverged_at,
      status=result.status(config.epochs),
      evaluated_checkpoint=("none (diverged)" if result.diverged_at else "last epoch" if best_state
                            is None else f"best validation CER, epoch {best['epoch']}"),
      best_val=best and P2GBestEpoch(best["epoch"], best.get("val_cer"), best.get("val_wer"),
                                     best.get("val_loss")),
      test=test, seed_report=SEED_REPORT, train_seconds_total=result.train_seconds_total,
      train_seconds_this_call=result.train_seconds, device=sharding.device_name(trainer.mesh),
      jax_version=jax.__version__)
  run.finish(summary.to_json(), {f"test_{name}_{k}": v for name, m in test.items()
                                 for k, v in records.to_json(m).items()})
  table = tables_3([TableRow(config.attention, [summary])]) + (
      f"\nCheckpoint: {summary.evaluated_checkpoint}. Seed numbers: the course data (this run: "
      f"{data.source}).\n")
  files.write_file(run.path(TABLES), table)
  if result.history:
    plots.plot_history(
        result.history, run.path(CER_PLOT),
        title=f"P2G {config.name()}: validation CER per epoch (greedy decoding)",
        panels=(("character error rate", ("val_cer",)),
                ("loss", ("train_loss", "val_loss"))))
  greedy = test.get("greedy")
  run.log(f"{config.name()}: {summary.status}; test CER {markdown.fmt(greedy and greedy.cer)} "
          f"WER {markdown.fmt(greedy and greedy.wer)} ({summary.evaluated_checkpoint})")
  run.log(table)
  return summary


# ----------------------------------------------------------------------------------------------
# Tables


@dataclasses.dataclass(frozen=True)
class TableRow:
  """The runs (one per seed) of the model without or with attention."""
  attention: bool
  runs: Sequence[P2GRunSummary]


def tables_3(rows: Sequence[TableRow]) -> str:
  """The seed report's Tables 3.1-3.3: our test CER / WER / WER@3 (mean ± std over seeds)
  beside the seed report's, for greedy decoding, beam search and nucleus sampling."""
  out = []
  for row in rows:
    name = "attention" if row.attention else "noattention"
    number = "3.2" if row.attention else "3.1"
    tests = [r.test for r in row.runs]
    seed = getattr(SEED_REPORT, name)
    out.append([number, name, "greedy", *_cells(tests, "greedy"), markdown.DASH,
                markdown.fmt(seed.cer), markdown.fmt(seed.wer), markdown.DASH])
    for key in (k for k in dict.fromkeys(k for t in tests for k in t) if k.startswith("beam")):
      out.append([number, name, f"beam {key[4:]} (best beam)", *_cells(tests, key),
                  markdown.DASH, markdown.DASH, markdown.DASH, markdown.DASH])
    n = next((t["nucleus"] for t in tests if "nucleus" in t), None)
    if n is not None:
      course = SEED_REPORT.nucleus if (n.top_p, n.k) == (0.8, 3) else None
      out.append(["3.3", name, f"nucleus p={n.top_p:g}, {n.k} samples",
                  *_cells(tests, "nucleus"),
                  markdown.mean_std([t["nucleus"].wer_at_k for t in tests if "nucleus" in t]),
                  markdown.fmt(course and course.cer), markdown.fmt(course and course.wer),
                  markdown.fmt(course and course.wer_at_k)])
  return (markdown.table(["table", "model", "decoding", "CER", "WER", "WER@3", "seed CER",
                          "seed WER", "seed WER@3"], out)
          + "\nTest set. CER and WER of nucleus sampling average all samples; WER@3: none of the "
            "3 samples is the gold spelling. — in a seed column: the seed report has no such "
            "row (it ran no beam search); in the WER@3 column: only sampling draws several "
            "spellings per word.\n")


def _cells(tests: Sequence[dict[str, Scores]], key: str) -> list[str]:
  return [markdown.mean_std([t[key].cer for t in tests if key in t]),
          markdown.mean_std([t[key].wer for t in tests if key in t])]
