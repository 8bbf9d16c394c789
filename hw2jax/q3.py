"""Q3 experiments: train the phoneme-to-grapheme model, decode the test set, write the workdir.

`train_and_evaluate` is one run (resumable): training through `hw2jax.fit` with the validation
set decoded greedily after every epoch (the best-CER checkpoint is kept), then the test set
decoded from that checkpoint greedily, and by beam search and nucleus sampling when asked; the
results are printed as the seed report's Tables 3.1-3.3. `predict` spells new pronunciations with
a workdir's best checkpoint. The absl main in experiments/p2g.py only parses flags into `Config`
and `Decoding` and calls these.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hw2jax import decoding, fit as fit_lib, metrics, runlog, seq2seq, training
from hw2jax import sharding, tensorboard as tb, workdir as workdir_lib
from hw2jax.data import phonemes
from hw2jax.errors import UserError

# The seed report's test numbers: Table 3.1 (no attention), 3.2 (attention), 3.3 (nucleus).
SEED_REPORT = {"noattention": {"cer": 0.2992, "wer": 0.7970},
               "attention": {"cer": 0.2033, "wer": 0.7160},
               "nucleus": {"cer": 0.2242, "wer": 0.7660, "wer_at_k": 0.6340}}
COURSE_VOCAB = (107, 93)
EXPECTED_PARAMS = {False: 256_093, True: 321_757}        # Flax, course vocabularies
EXPECTED_TORCH_PARAMS = {False: 257_117, True: 322_781}  # PyTorch's convention
CONFIG, VOCAB, TABLES = workdir_lib.CONFIG, "vocab.json", "tables.md"
PREDICTIONS = "test_predictions.tsv"
CER_PLOT, ATTENTION_PLOT = "cer.png", "attention.png"
RUN_FILES = (runlog.METRICS, runlog.SUMMARY, CONFIG, VOCAB, TABLES, PREDICTIONS, CER_PLOT,
             ATTENTION_PLOT, "checkpoints")
ATTENTION_WORDS = 4


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
  widths: int = 3
  unroll: int = 1
  epoch_mode: str = "auto"
  eval_batch_size: int = 1000
  tensorboard: bool = True           # event files in <workdir>/tb/ (metrics.jsonl regardless)
  devices: int = 0                   # data parallelism over the first N devices (0: all)

  def validate(self) -> "Config":
    checks = [
        (self.learning_rate > 0 and math.isfinite(self.learning_rate),
         f"--lr={self.learning_rate} must be a positive number"),
        (self.epochs >= 1, f"--epochs={self.epochs} must be at least 1"),
        (self.batch_size >= 1, f"--batch_size={self.batch_size} must be at least 1"),
        (self.hidden_size >= 2 and self.hidden_size % 2 == 0,
         f"--hidden_size={self.hidden_size} must be a positive even number (two encoder "
         "directions of half the size)"),
        (0 <= self.dropout < 1, f"--dropout={self.dropout} must be in [0, 1)"),
        (self.max_train_words >= 0, f"--max_train_words={self.max_train_words} must be >= 0"),
        (self.widths >= 1, f"--widths={self.widths} must be at least 1"),
        (self.unroll >= 1, f"--unroll={self.unroll} must be at least 1"),
        (self.eval_batch_size >= 1, f"eval batch size {self.eval_batch_size} must be >= 1"),
        (self.devices >= 0, f"--devices={self.devices} must be all or a positive number"),
        (self.epoch_mode in training.EPOCH_MODES,
         f"--epoch_mode={self.epoch_mode!r} is not one of {', '.join(training.EPOCH_MODES)}"),
    ]
    for ok, message in checks:
      if not ok:
        raise UserError(message)
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
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Config":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})

  def name(self) -> str:
    return "attention" if self.attention else "noattention"


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How the test set (and --predict) is decoded; may change between runs of one workdir."""
  top_p: float | None = None     # nucleus sampling (Table 3.3) when set
  k: int = 3                     # samples per word
  beam: int = 0                  # beam width (0: no beam search)
  max_len: int = decoding.MAX_LEN

  def validate(self) -> "Decoding":
    checks = [
        (self.top_p is None or 0 < self.top_p <= 1, f"--topp={self.top_p} must be in (0, 1]"),
        (self.k >= 1, f"--k={self.k} must be at least 1"),
        (self.beam >= 0, f"--beam={self.beam} must be >= 0 (0: no beam search)"),
        (self.max_len >= 1, f"max_len={self.max_len} must be >= 1"),
    ]
    for ok, message in checks:
      if not ok:
        raise UserError(message)
    return self


@functools.lru_cache(maxsize=None)
def _model(src_vocab, tgt_vocab, hidden_size, attention, dropout, unroll) -> seq2seq.Seq2Seq:
  return seq2seq.Seq2Seq(src_vocab, tgt_vocab, hidden_size=hidden_size, attention=attention,
                         dropout=dropout, unroll=unroll)


def param_counts(config: Config, src_vocab: int, tgt_vocab: int) -> tuple[int, int]:
  """(Flax count, PyTorch-convention count) of the model for these vocabulary sizes."""
  model = config.build_model(src_vocab, tgt_vocab)
  x = jnp.zeros((1, 2), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, x,
                                             jnp.ones((1,), jnp.int32), x))
  n = seq2seq.count_params(shapes["params"])
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


def make_trainer(config: Config) -> training.Trainer:
  """The config's trainer; data-parallel over all devices when there are several."""
  return training.Trainer(seq2seq.loss_fn, seq2seq.eval_fn, batch_size=config.batch_size,
                          eval_batch_size=config.eval_batch_size, epoch_mode=config.epoch_mode,
                          mesh=sharding.data_mesh(sharding.select_devices(config.devices)))


def train_widths(config: Config, data: phonemes.P2GData, trainer: training.Trainer
                 ) -> training.Widths:
  """The training pairs at `config.widths` padded widths, on the trainer's device(s)."""
  copies, need = phonemes.padded_widths(data.train, data.src_vocab, data.tgt_vocab,
                                        config.widths, config.batch_size)
  return training.Widths([trainer.put(c) for c in copies], need)


def new_state(config: Config, model: seq2seq.Seq2Seq) -> training.TrainState:
  tx = training.make_optimizer("adam")
  one = jnp.ones((1, 2), jnp.int32)
  return training.create_train_state(model, (one, jnp.ones((1,), jnp.int32), one), tx,
                                     config.seed, learning_rate=config.learning_rate)


@dataclasses.dataclass
class Split:
  """One evaluation split ready for the decoders: host arrays and gold spellings."""
  pairs: list
  src: np.ndarray            # (N, W) source ids, W shared by valid and test
  src_len: np.ndarray        # (N,)
  golds: list[str]


def _splits(data: phonemes.P2GData) -> dict[str, Split]:
  width = max(len(p) for split in ("valid", "test") for p, _ in data.split(split))
  out = {}
  for name in ("valid", "test"):
    pairs = data.split(name)
    arrays = phonemes.encode_sources([p for p, _ in pairs], data.src_vocab, width)
    out[name] = Split(pairs, arrays["src"], arrays["src_len"], [w for _, w in pairs])
  return out


class Decoders:
  """The jitted decoders of one model, run over whole splits in fixed-size chunks."""

  def __init__(self, model: seq2seq.Seq2Seq, vocab: phonemes.Vocab, batch_size: int,
               max_len: int = decoding.MAX_LEN):
    self.model, self.vocab, self.batch_size, self.max_len = model, vocab, batch_size, max_len

  def _run(self, fn, src, src_len, key=None):
    return decoding.in_batches(fn, src, src_len, min(self.batch_size, len(src)), key=key)

  def greedy(self, params, src, src_len) -> tuple[list[str], decoding.Decoded]:
    fn = functools.partial(decoding.greedy, self.model, params, max_len=self.max_len)
    out = self._run(fn, src, src_len)
    return decoding.strings(out.tokens, self.vocab), out

  def beam(self, params, src, src_len, width: int) -> tuple[list[list[str]], decoding.Decoded]:
    fn = functools.partial(decoding.beam, self.model, params, width=width, max_len=self.max_len)
    out = self._run(fn, src, src_len)
    return decoding.strings(out.tokens, self.vocab), out

  def nucleus(self, params, src, src_len, key, top_p: float, k: int
              ) -> tuple[list[list[str]], decoding.Decoded]:
    def fn(s, n, key):
      return decoding.nucleus(self.model, params, s, n, key, top_p=top_p, k=k,
                              max_len=self.max_len)
    out = self._run(fn, src, src_len, key)
    return decoding.strings(out.tokens, self.vocab), out


def sampling_key(seed: int) -> jax.Array:
  """The key of the test set's (and --predict's) nucleus samples: fixed by the run's seed."""
  return jax.random.fold_in(training.prng_key(seed), 2)


def scores(predictions: Sequence[str], golds: Sequence[str]) -> dict:
  return {"cer": metrics.cer(predictions, golds), "wer": metrics.wer(predictions, golds)}


def sample_scores(samples: Sequence[Sequence[str]], golds: Sequence[str]) -> dict:
  """CER/WER averaged over all k samples of every word, and WER@k."""
  flat = [s for ss in samples for s in ss]
  repeated = [g for ss, g in zip(samples, golds) for _ in ss]
  return {**scores(flat, repeated), "wer_at_k": metrics.wer_at_k(samples, golds)}


def train_and_evaluate(config: Config, data: phonemes.P2GData, workdir: str | Path, *,
                       decoding_options: Decoding = Decoding(), fresh: bool = False,
                       log: Callable[[str], None] = print) -> dict:
  """One run: trains (resuming from `workdir`), decodes valid/test with the best checkpoint,
  writes summary.json, tables.md, test_predictions.tsv and the plots; returns the summary."""
  config.validate().check_data(data)
  decoding_options.validate()
  trainer = make_trainer(config)                # checks the batch against the devices
  with workdir_lib.locked(workdir) as workdir:
    return _train_and_evaluate(config, data, workdir, trainer, decoding_options=decoding_options,
                               fresh=fresh, log=log)


def _train_and_evaluate(config, data, workdir, trainer, *, decoding_options, fresh, log) -> dict:
  workdir = workdir_lib.prepare(workdir, config.to_json(), data.source, fresh=fresh,
                                run_files=RUN_FILES, log=log)
  runlog.write_json(workdir / VOCAB, {"source": list(data.src_vocab.symbols),
                                      "target": list(data.tgt_vocab.symbols)})
  model = config.build_model(len(data.src_vocab), len(data.tgt_vocab))
  train = train_widths(config, data, trainer)
  val_tf = trainer.put(phonemes.encode(data.valid, data.src_vocab, data.tgt_vocab))
  splits = _splits(data)
  decoders = Decoders(model, data.tgt_vocab, config.eval_batch_size, decoding_options.max_len)
  state = trainer.put(new_state(config, model))
  n_params = seq2seq.count_params(state.params)

  def evaluate(s):
    val = splits["valid"]
    predictions, _ = decoders.greedy(s.params, val.src, val.src_len)
    m = scores(predictions, val.golds)
    return {"val_loss": trainer.evaluate(s, val_tf)["loss"], "val_cer": m["cer"],
            "val_wer": m["wer"]}

  result = fit_lib.fit(trainer, state, train, epochs=config.epochs, evaluate=evaluate,
                       workdir=workdir, best_metric="val_cer", best_mode="min",
                       progress_keys=("train_loss", "val_loss", "val_cer", "val_wer"), log=log,
                       tensorboard=config.tensorboard)
  best_state = None
  if result.best is not None:
    best_state = fit_lib.restore_best(workdir, result.state, best_metric="val_cer",
                                      best_mode="min", log=log)
  evaluated = best_state if best_state is not None else result.state
  test = evaluate_test(config, decoding_options, decoders, evaluated.params, splits["test"],
                       workdir)
  summary = {
      "config": config.to_json(),
      "decoding": dataclasses.asdict(decoding_options),
      "trainable_params": n_params,
      "trainable_params_torch_convention": seq2seq.torch_param_count(n_params,
                                                                     config.hidden_size),
      "data": {"source": data.source, **data.sizes(),
               "source_vocab": len(data.src_vocab), "target_vocab": len(data.tgt_vocab)},
      "epochs_done": len(result.history),
      "diverged_at": result.diverged_at,
      "status": (f"diverged at epoch {result.diverged_at}" if result.diverged_at else
                 "completed" if len(result.history) >= config.epochs else
                 f"stopped at epoch {len(result.history)} of {config.epochs}"),
      "evaluated_checkpoint": ("best validation CER, epoch " + str(result.best["epoch"])
                               if best_state is not None else "last epoch"),
      "best_val": result.best and {k: result.best.get(k) for k in
                                   ("epoch", "val_cer", "val_wer", "val_loss")},
      "test": test["metrics"],
      "seed_report": SEED_REPORT,
      "train_seconds_total": result.train_seconds_total,
      "train_seconds_this_call": result.train_seconds,
      "device": _device_name(trainer),
      "jax_version": jax.__version__,
  }
  runlog.write_json(workdir / runlog.SUMMARY, summary)
  tb.write_hparams(workdir, config.to_json(), {
      f"test_{name}_{k}": v for name, m in test["metrics"].items() for k, v in m.items()},
      enabled=config.tensorboard)
  table = tables(summary)
  (workdir / TABLES).write_text(table)
  if result.history:
    runlog.plot_history(
        result.history, workdir / CER_PLOT,
        title=f"P2G {config.name()}: validation CER per epoch (greedy decoding)",
        panels=(("character error rate", ("val_cer",)),
                ("loss", ("train_loss", "val_loss"))))
  log(f"{config.name()}: {summary['status']}; test CER {test['metrics']['greedy']['cer']:.4f} "
      f"WER {test['metrics']['greedy']['wer']:.4f} ({summary['evaluated_checkpoint']})")
  log(table)
  return summary


def evaluate_test(config: Config, options: Decoding, decoders: Decoders, params, test: Split,
                  workdir: Path) -> dict:
  """Greedy (+ beam, + nucleus) decoding of the test split; writes predictions and heat-maps."""
  greedy, out = decoders.greedy(params, test.src, test.src_len)
  results = {"greedy": scores(greedy, test.golds)}
  columns = {"greedy": greedy}
  if options.beam:
    beams, _ = decoders.beam(params, test.src, test.src_len, options.beam)
    best = [b[0] for b in beams]
    results[f"beam{options.beam}"] = scores(best, test.golds)
    columns[f"beam{options.beam}"] = best
  if options.top_p is not None:
    samples, _ = decoders.nucleus(params, test.src, test.src_len, sampling_key(config.seed),
                                  options.top_p, options.k)
    results["nucleus"] = {**sample_scores(samples, test.golds), "top_p": options.top_p,
                          "k": options.k}
    for i in range(options.k):
      columns[f"sample{i + 1}"] = [s[i] for s in samples]
  header = "\t".join(["phonemes", "gold", *columns])
  rows = ["\t".join([" ".join(p), g, *(c[i] for c in columns.values())])
          for i, (p, g) in enumerate(test.pairs)]
  (workdir / PREDICTIONS).write_text("\n".join([header, *rows]) + "\n")
  if config.attention and out.attention is not None:
    plot_attention(test.pairs[:ATTENTION_WORDS], greedy[:ATTENTION_WORDS],
                   out.attention[:ATTENTION_WORDS], workdir / ATTENTION_PLOT)
  return {"metrics": results}


def tables(summary: dict) -> str:
  """The seed report's Tables 3.1-3.3 as markdown: our test numbers beside the seed's."""
  c, test, seed = summary["config"], summary["test"], summary["seed_report"]
  name = "attention" if c["attention"] else "noattention"
  number = "3.2" if c["attention"] else "3.1"
  lines = ["| table | model | decoding | CER | WER | WER@k | seed CER | seed WER | seed WER@3 |",
           "|---|---|---|---|---|---|---|---|---|"]

  def row(table, decoding_name, ours, theirs):
    theirs = theirs or {}
    lines.append(f"| {table} | {name} | {decoding_name} | {_fmt(ours.get('cer'))} | "
                 f"{_fmt(ours.get('wer'))} | {_fmt(ours.get('wer_at_k'))} | "
                 f"{_fmt(theirs.get('cer'))} | {_fmt(theirs.get('wer'))} | "
                 f"{_fmt(theirs.get('wer_at_k'))} |")

  row(number, "greedy", test["greedy"], seed[name])
  for key, value in test.items():
    if key.startswith("beam"):
      row(number, f"beam {key[4:]} (best)", value, None)
  if "nucleus" in test:
    n = test["nucleus"]
    course = n["top_p"] == 0.8 and n["k"] == 3
    row("3.3", f"nucleus p={n['top_p']:g}, k={n['k']}", n, seed["nucleus"] if course else None)
  note = ("CER/WER of nucleus sampling average all k samples; WER@k: no sample is right. "
          f"Checkpoint: {summary['evaluated_checkpoint']}. Seed numbers: the course data "
          f"(this run: {summary['data']['source']}).")
  return "\n".join(lines) + "\n\n" + note + "\n"


def _fmt(x) -> str:
  return "—" if x is None else f"{x:.4f}"


def _device_name(trainer: training.Trainer) -> str:
  """'<platform>:<kind> x<devices the trainer splits batches over>'."""
  d = jax.devices()[0]
  count = 1 if trainer.mesh is None else trainer.mesh.devices.size
  return f"{d.platform}:{getattr(d, 'device_kind', '')} x{count}"


def plot_attention(pairs: Sequence, predictions: Sequence[str], weights: np.ndarray,
                   path: Path) -> Path:
  """Heat-maps of the greedy decoder's attention (output characters x source phonemes)."""
  n = len(pairs)
  with runlog.figure(path, dpi=120, figsize=(3.6 * n + 1.0, 4.0)) as fig:
    axes = fig.subplots(1, n, squeeze=False)
    image = None
    for ax, (phones, gold), pred, w in zip(axes[0], pairs, predictions, weights):
      rows = list(pred) + ["</s>"]
      w = np.asarray(w)[:len(rows), :len(phones)]
      image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
      ax.set_xticks(range(len(phones)), phones, fontsize=8)
      ax.set_yticks(range(len(rows)), rows, fontsize=8)
      ax.set_title(f"gold '{gold}'\n-> predicted '{pred}'", fontsize=9)
      ax.set_xlabel("source phoneme")
    axes[0][0].set_ylabel("output character (greedy)")
    fig.suptitle("Bahdanau attention of greedy decoding (test words): each row sums to 1")
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    bar = fig.add_axes((0.945, 0.15, 0.012, 0.7))
    fig.colorbar(image, cax=bar, label="attention weight")
  return path


# -- prediction ---------------------------------------------------------------------------------


def load_run(workdir: str | Path, log: Callable[[str], None] = print):
  """(config, source vocab, target vocab, model, best params) of a trained workdir."""
  workdir = Path(workdir)
  if not (workdir / CONFIG).is_file() or not (workdir / VOCAB).is_file():
    raise UserError(f"{workdir} holds no trained P2G model; train one first with the same "
                    "--workdir (or --attention, which picks the default workdir)")
  config = Config.from_json(runlog.read_json(workdir / CONFIG)["config"])
  vocab = runlog.read_json(workdir / VOCAB)
  src_vocab = phonemes.Vocab(tuple(vocab["source"]))
  tgt_vocab = phonemes.Vocab(tuple(vocab["target"]))
  model = config.build_model(len(src_vocab), len(tgt_vocab))
  state = fit_lib.restore_best(workdir, new_state(config, model), best_metric="val_cer",
                               best_mode="min", log=log)
  if state is None:
    raise UserError(f"{workdir} has no checkpoint yet; train first with the same --workdir")
  return config, src_vocab, tgt_vocab, model, state.params


def predict(workdir: str | Path, words: Sequence[Sequence[str]], options: Decoding = Decoding(),
            log: Callable[[str], None] = print) -> list[dict]:
  """Spells each pronunciation (a sequence of phoneme symbols) with the workdir's best
  checkpoint: greedy, the beams (with `options.beam`) and k samples (with `options.top_p`)."""
  options.validate()
  if not Path(workdir).is_dir():
    load_run(workdir, log=log)                 # says that there is no trained model
  with workdir_lib.locked(workdir):            # not while a training writes checkpoints there
    config, src_vocab, tgt_vocab, model, params = load_run(workdir, log=log)
  for i, word in enumerate(words, 1):
    unknown = src_vocab.unknown(word)
    if unknown:
      raise UserError(
          f"--predict word {i} ('{' '.join(word)}') has symbols this model never saw: "
          f"{', '.join(repr(s) for s in unknown)}; known: {' '.join(src_vocab.symbols[4:])}")
  arrays = phonemes.encode_sources(words, src_vocab)
  decoders = Decoders(model, tgt_vocab, len(words), options.max_len)
  greedy, out = decoders.greedy(params, arrays["src"], arrays["src_len"])
  results = [{"phonemes": " ".join(w), "greedy": g, "greedy_logp": float(s)}
             for w, g, s in zip(words, greedy, out.scores)]
  if options.beam:
    beams, bout = decoders.beam(params, arrays["src"], arrays["src_len"], options.beam)
    for r, b, s in zip(results, beams, bout.scores):
      r["beam"] = [{"spelling": x, "logp": float(y)} for x, y in zip(b, s)]
  if options.top_p is not None:
    samples, _ = decoders.nucleus(params, arrays["src"], arrays["src_len"],
                                  sampling_key(config.seed), options.top_p, options.k)
    for r, ss in zip(results, samples):
      r["samples"] = list(ss)
  for r in results:
    log(r["phonemes"])
    log(f"  greedy      {r['greedy']}   (log p {r['greedy_logp']:.3f})")
    for j, b in enumerate(r.get("beam", []), 1):
      log(f"  beam {j:<2d}     {b['spelling']}   (log p {b['logp']:.3f})")
    for j, s in enumerate(r.get("samples", []), 1):
      log(f"  sample {j:<2d}   {s}")
  return results
