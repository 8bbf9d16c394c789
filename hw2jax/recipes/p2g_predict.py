"""P2G `--predict`: the spellings a trained run gives to pronunciations (greedy, the beams, the
samples), read from its workdir without writing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from hw2jax import files
from hw2jax.data import phonemes
from hw2jax.errors import UserError
from hw2jax.recipes import p2g_evaluation
from hw2jax.recipes.p2g import VOCAB, Config, new_state
from hw2jax.recipes.p2g_evaluation import Decoding
from hw2jax.train.run import Run


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The spellings of one pronunciation: greedy, the beams (best first), the samples."""
  phonemes: str
  greedy: str
  greedy_logp: float
  beams: tuple[tuple[str, float], ...] = ()
  samples: tuple[str, ...] = ()


def load_run(workdir: str | Path, log: Callable[[str], None] = print):
  """(config, source vocab, target vocab, model, best params) of a trained workdir, settings and
  vocabularies from its checkpoints (vocab.json for runs older than cards); reads only."""
  untrained = UserError(f"{workdir} holds no trained P2G model; train one first with the same "
                        "--workdir (or --attention, which picks the default workdir)")
  if not Path(workdir).is_dir():
    raise untrained
  with Run.read(workdir, log=log) as run:
    if run.card is None or not (run.card.vocab or run.path(VOCAB).is_file()):
      raise untrained
    config = Config.from_json(run.card.config)
    vocab = run.card.vocab or _vocab_file(run.path(VOCAB))
    src_vocab = phonemes.Vocab(tuple(vocab["source"]))
    tgt_vocab = phonemes.Vocab(tuple(vocab["target"]))
    model = config.build_model(len(src_vocab), len(tgt_vocab))
    state = run.best_state(new_state(config, model))
  if state is None:
    raise UserError(f"{workdir} has no readable best checkpoint; train (on) in that --workdir")
  return config, src_vocab, tgt_vocab, model, state.params


def _vocab_file(path: Path) -> dict:
  """vocab.json of a run older than vocabularies in checkpoints, checked to be one."""
  vocab = files.read_json(path)
  if not (isinstance(vocab, dict) and all(
      isinstance(vocab.get(k), list) and all(isinstance(x, str) for x in vocab[k])
      for k in ("source", "target"))):
    raise UserError(f"{path} is damaged (not the run's vocabularies); restore it, "
                    "or use --fresh to archive the run and train again")
  return vocab


def predict(workdir: str | Path, words: Sequence[Sequence[str]], options: Decoding = Decoding(),
            log: Callable[[str], None] = print) -> list[Prediction]:
  """Spells each pronunciation (a sequence of phoneme symbols) with the workdir's best
  checkpoint: greedy, the beams (with `options.beam`) and k samples (with `options.top_p`)."""
  options.validate()
  config, src_vocab, tgt_vocab, model, params = load_run(workdir, log=log)
  for i, word in enumerate(words, 1):
    unknown = src_vocab.unknown(word)
    if unknown:
      raise UserError(
          f"--predict word {i} ('{' '.join(word)}') has symbols this model never saw: "
          f"{', '.join(repr(s) for s in unknown)}; known: {' '.join(src_vocab.symbols[4:])}")
  arrays = phonemes.encode_sources(words, src_vocab)
  decoders = p2g_evaluation.Decoders(model, tgt_vocab, len(words), options.max_len)
  greedy, out = decoders.greedy(params, arrays["src"], arrays["src_len"])
  beams = [()] * len(words)
  if options.beam:
    spelled, bout = decoders.beam(params, arrays["src"], arrays["src_len"], options.beam)
    beams = [tuple(zip(b, map(float, s))) for b, s in zip(spelled, bout.scores)]
  samples = [()] * len(words)
  if options.top_p is not None:
    drawn, _ = decoders.nucleus(params, arrays["src"], arrays["src_len"],
                                p2g_evaluation.sampling_key(config.seed), options.top_p, options.k)
    samples = [tuple(ss) for ss in drawn]
  results = [Prediction(" ".join(w), g, float(s), b, ss)
             for w, g, s, b, ss in zip(words, greedy, out.scores, beams, samples)]
  for r in results:
    log(r.phonemes)
    log(f"  greedy      {r.greedy}   (log p {r.greedy_logp:.3f})")
    for j, (spelling, logp) in enumerate(r.beams, 1):
      log(f"  beam {j:<2d}     {spelling}   (log p {logp:.3f})")
    for j, s in enumerate(r.samples, 1):
      log(f"  sample {j:<2d}   {s}")
  return results
