"""Spelling whole splits with a trained P2G model: the batched decoders over a split, how the test
set is decoded (`Decoding`), its scores (CER, WER, WER@k) and the files they leave
(test_predictions.tsv, attention.png). Used by `hw2jax.recipes.p2g` for training runs,
`--predict` and models loaded from PyTorch."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from hw2jax import files, metrics, plots, records
from hw2jax.data import phonemes
from hw2jax.errors import UserError
from hw2jax.models import decoding, seq2seq
from hw2jax.train import trainer as trainer_lib
from hw2jax.train import run as run_lib

PREDICTIONS = "test_predictions.tsv"
ATTENTION_PLOT = "attention.png"
ATTENTION_WORDS = 4
# What an evaluation of the test set writes (a training run's and a PyTorch model's).
TABLES = "tables.md"             # a run's tables, beside its summary
EVALUATION_FILES = (run_lib.SUMMARY, TABLES, PREDICTIONS, ATTENTION_PLOT)
MAX_BEAM = MAX_SAMPLES = 64      # bounds the decoders' memory and time per word


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How the test set (and --predict) is decoded; may change between runs of one workdir."""
  top_p: float | None = None     # nucleus sampling (Table 3.3) when set
  k: int = 3                     # samples per word
  beam: int = 0                  # beam width (0: no beam search)
  max_len: int = decoding.MAX_LEN

  def validate(self) -> "Decoding":
    records.require([
        (self.top_p is None or 0 < self.top_p <= 1, f"--topp={self.top_p} must be in (0, 1]"),
        (1 <= self.k <= MAX_SAMPLES, f"--k={self.k} must be in 1..{MAX_SAMPLES}"),
        (0 <= self.beam <= MAX_BEAM, f"--beam={self.beam} must be in 0..{MAX_BEAM} (0: no beam "
                                     "search)"),
        (self.max_len >= 1, f"max_len={self.max_len} must be >= 1"),
    ])
    return self


@dataclasses.dataclass(frozen=True)
class Scores:
  """CER and WER of one way of decoding a split; for sampling also WER@k (and its p, k)."""
  cer: float
  wer: float
  wer_at_k: float | None = records.optional()
  top_p: float | None = records.optional()
  k: int | None = records.optional()


def scores(predictions: Sequence[str], golds: Sequence[str]) -> Scores:
  return Scores(cer=metrics.cer(predictions, golds), wer=metrics.wer(predictions, golds))


def sample_scores(samples: Sequence[Sequence[str]], golds: Sequence[str], top_p: float,
                  k: int) -> Scores:
  """CER/WER averaged over all k samples of every word, and WER@k."""
  flat = [s for ss in samples for s in ss]
  repeated = [g for ss, g in zip(samples, golds) for _ in ss]
  return Scores(cer=metrics.cer(flat, repeated), wer=metrics.wer(flat, repeated),
                wer_at_k=metrics.wer_at_k(samples, golds), top_p=top_p, k=k)


@dataclasses.dataclass
class Split:
  """One evaluation split ready for the decoders: host arrays and gold spellings."""
  pairs: list
  src: np.ndarray            # (N, W) source ids, W shared by valid and test
  src_len: np.ndarray        # (N,)
  golds: list[str]


def evaluation_splits(data: phonemes.P2GData) -> dict[str, Split]:
  """'valid' and 'test' encoded with the training vocabulary at one common width."""
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
  return jax.random.fold_in(trainer_lib.prng_key(seed), 2)


def decode_test(options: Decoding, decoders: Decoders, params, test: Split, seed: int,
                workdir: Path, log: Callable[[str], None]) -> dict[str, Scores]:
  """Greedy (+ beam, + nucleus) decoding of the test split: {'greedy': ..., 'beam<N>': ...,
  'nucleus': ...}; writes test_predictions.tsv and, with attention, the heat-maps."""
  set_aside_other_decoding(options, workdir, log)
  greedy, out = decoders.greedy(params, test.src, test.src_len)
  results = {"greedy": scores(greedy, test.golds)}
  columns = {"greedy": greedy}
  if options.beam:
    beams, _ = decoders.beam(params, test.src, test.src_len, options.beam)
    best = [b[0] for b in beams]
    results[f"beam{options.beam}"] = scores(best, test.golds)
    columns[f"beam{options.beam}"] = best
  if options.top_p is not None:
    samples, _ = decoders.nucleus(params, test.src, test.src_len, sampling_key(seed),
                                  options.top_p, options.k)
    results["nucleus"] = sample_scores(samples, test.golds, options.top_p, options.k)
    for i in range(options.k):
      columns[f"sample{i + 1}"] = [s[i] for s in samples]
  header = "\t".join(["phonemes", "gold", *columns])
  rows = ["\t".join([" ".join(p), g, *(c[i] for c in columns.values())])
          for i, (p, g) in enumerate(test.pairs)]
  files.write_file(workdir / PREDICTIONS, "\n".join([header, *rows]) + "\n")
  if out.attention is not None:
    plot_attention(test.pairs[:ATTENTION_WORDS], greedy[:ATTENTION_WORDS],
                   out.attention[:ATTENTION_WORDS], workdir / ATTENTION_PLOT)
  return results


def set_aside_other_decoding(options: Decoding, workdir: Path,
                             log: Callable[[str], None]) -> None:
  """An evaluation made with other decoding options (--beam, --topp, --k) is moved to
  archive/<time>/ before this one is written: a rerun never silently replaces results."""
  try:
    before = files.read_json(workdir / run_lib.SUMMARY)["decoding"]
  except (OSError, UserError, KeyError, TypeError):
    return
  if before != records.to_json(options):
    archived = run_lib.archive(workdir, EVALUATION_FILES)
    if archived:
      log(f"the test set was decoded with other options before ({before}); that evaluation "
          f"moved to {archived}")


def plot_attention(pairs: Sequence, predictions: Sequence[str], weights: np.ndarray,
                   path: Path) -> Path:
  """Heat-maps of the greedy decoder's attention (output characters x source phonemes)."""
  n = len(pairs)
  with plots.figure(path, dpi=120, figsize=(3.6 * n + 1.0, 4.0)) as fig:
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
