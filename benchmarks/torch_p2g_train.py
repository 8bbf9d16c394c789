r"""The course's P2G training in PyTorch: the reference hw2jax's P2G numbers are held against.

  python -m benchmarks.torch_p2g_train --data_path=../shared/data/p2g --attention --seed=42 \
      --out=runs/torch_p2g/attention_42.json --save=runs/torch_p2g/attention_42.pt
  python -m benchmarks.torch_p2g_train --data_path=../shared/data/p2g --epochs=1 \
      --train_words=500                                        # a quick check that it runs

The course's loop (hw2-q3.py) around `benchmarks.torch_baselines.Seq2Seq` (the skeleton's
parameter names, so the saved state_dict converts to hw2jax with hw2jax.models.torch_port):
vocabularies in the course's order (first appearance in train.tsv, `phonemes.course_vocabs`),
Adam (lr 0.003), batches of 64 in a new random order every epoch (a shuffling DataLoader), each
padded to its longest word, dropout 0.3, cross-entropy ignoring PAD, full teacher forcing.
After every epoch the validation words are greedy-decoded and the weights of the epoch with
the best validation CER are kept. The test split is then decoded with those weights: greedy
(CER, WER) and, with --topp > 0, --k nucleus samples per word (CER and WER over all samples,
WER@k: a word is right if any of its samples is), as hw2jax.recipes.p2g_evaluation scores them,
with hw2jax.metrics' definitions. Decoding is batched; rows are independent, so batch 1 spells
the same. PyTorch uses its default thread count unless --threads says otherwise.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from absl import flags

from benchmarks import torch_baselines as tb
from hw2jax import cli, metrics
from hw2jax.data import phonemes
from hw2jax.errors import UserError

flags.DEFINE_string("data_path", None, "Course TSV folder: train.tsv, valid.tsv, test.tsv.")
flags.DEFINE_integer("seed", 42, "Seed of initialisation, dropout, batch order and sampling.")
flags.DEFINE_bool("attention", False, "Bahdanau attention over the encoder outputs.")
flags.DEFINE_integer("epochs", 20, "Training epochs.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_float("lr", 0.003, "Adam learning rate.")
flags.DEFINE_integer("hidden_size", 128, "Embedding and decoder size (encoder: half per "
                     "direction).")
flags.DEFINE_float("dropout", 0.3, "Dropout probability.")
flags.DEFINE_integer("train_words", 0, "Train on only the first N training pairs (0: all); the "
                     "vocabularies come from them.")
flags.DEFINE_float("topp", 0.8, "Also decode the test set by nucleus sampling with this p "
                   "(0: greedy only).")
flags.DEFINE_integer("k", 3, "Nucleus samples per word (WER@k).")
flags.DEFINE_integer("decode_batch", 500, "Words decoded at once.")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: PyTorch's default).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_string("save", None, "Save the best-validation-CER state_dict here (.pt).")
FLAGS = flags.FLAGS


def check_flags() -> None:
  if not FLAGS.data_path:
    raise UserError("--data_path is required: the course folder with train.tsv, valid.tsv, "
                    "test.tsv")
  for name in ("epochs", "batch_size", "k", "decode_batch"):
    if FLAGS[name].value < 1:
      raise UserError(f"--{name}={FLAGS[name].value} must be at least 1")
  if not 0 <= FLAGS.topp <= 1:
    raise UserError(f"--topp={FLAGS.topp} must be in [0, 1] (0: no nucleus sampling)")


class Words:
  """One split encoded with the course vocabularies: source and target id lists, golds."""

  def __init__(self, pairs, src_vocab: phonemes.Vocab, tgt_vocab: phonemes.Vocab):
    self.src = [src_vocab.encode(p) for p, _ in pairs]
    self.tgt = [[tb.SOS] + tgt_vocab.encode(w) + [tb.EOS] for _, w in pairs]
    self.golds = [w for _, w in pairs]

  def __len__(self) -> int:
    return len(self.src)

  def __getitem__(self, i):
    return self.src[i], self.tgt[i]


def collate(batch):
  """[(src ids, tgt ids)] -> src (B, S), lengths (B,), tgt (B, T), each padded to its longest."""
  src, tgt = zip(*batch)
  return tb.pad_batch(src), torch.tensor([len(s) for s in src]), tb.pad_batch(tgt)


def train_epoch(model, loader, optimizer, criterion) -> float:
  """One pass of the course loop; returns the mean loss per target token."""
  model.train()
  total, tokens = 0.0, 0
  for src, lengths, tgt in loader:
    optimizer.zero_grad()
    logits = model(src, lengths, tgt[:, :-1])
    loss = criterion(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1))
    loss.backward()
    optimizer.step()
    n = int((tgt[:, 1:] != tb.PAD).sum())
    total, tokens = total + loss.item() * n, tokens + n
  return total / max(tokens, 1)


def spell(model, words: Words, vocab: phonemes.Vocab, top_p=None, k=1, generator=None):
  """Every word decoded `k` times (greedy when top_p is None): k spellings per word."""
  out = []
  for start in range(0, len(words), FLAGS.decode_batch):
    src = words.src[start:start + FLAGS.decode_batch]
    ids = tb.generate(model, tb.pad_batch(src).repeat_interleave(k, 0),
                      torch.tensor([len(s) for s in src]).repeat_interleave(k, 0),
                      top_p=top_p, generator=generator)
    out += [vocab.decode(row) for row in ids]
  return [out[i:i + k] for i in range(0, len(out), k)]


def scores(spellings, golds) -> dict:
  """CER and WER over all spellings (k per word), and WER@k when k > 1."""
  flat = [s for ss in spellings for s in ss]
  repeated = [g for ss, g in zip(spellings, golds) for _ in ss]
  out = {"cer": metrics.cer(flat, repeated), "wer": metrics.wer(flat, repeated)}
  if len(spellings[0]) > 1:
    out["wer_at_k"] = metrics.wer_at_k(spellings, golds)
  return out


def train(model, splits, vocabs) -> tuple[dict, list, dict]:
  """The epochs with per-epoch validation: (best state_dict, history, best epoch's record)."""
  loader = torch.utils.data.DataLoader(
      splits["train"], batch_size=FLAGS.batch_size, shuffle=True, collate_fn=collate,
      generator=torch.Generator().manual_seed(FLAGS.seed))
  optimizer = torch.optim.Adam(model.parameters(), lr=FLAGS.lr)
  criterion = torch.nn.CrossEntropyLoss(ignore_index=tb.PAD)
  best, best_state, history = None, None, []
  for epoch in range(1, FLAGS.epochs + 1):
    start = time.perf_counter()
    loss = train_epoch(model, loader, optimizer, criterion)
    seconds = time.perf_counter() - start
    valid = scores(spell(model, splits["valid"], vocabs[1]), splits["valid"].golds)
    record = {"epoch": epoch, "train_loss": loss, "valid_cer": valid["cer"],
              "valid_wer": valid["wer"], "train_seconds": seconds}
    history.append(record)
    if best is None or valid["cer"] < best["valid_cer"]:
      best, best_state = record, copy.deepcopy(model.state_dict())
    print(f"epoch {epoch:2d}  loss {loss:.4f}  valid CER {valid['cer']:.4f} WER "
          f"{valid['wer']:.4f}  ({seconds:.1f} s){'  *' if best is record else ''}", flush=True)
  return best_state, history, best


def main(argv):
  del argv
  check_flags()
  if FLAGS.threads:
    torch.set_num_threads(FLAGS.threads)
  torch.manual_seed(FLAGS.seed)
  data = phonemes.load_tsv_folder(FLAGS.data_path, origin="--data_path")
  data = data.limit_train(FLAGS.train_words)
  vocabs = phonemes.course_vocabs(data.train)
  splits = {name: Words(data.split(name), *vocabs) for name in phonemes.SPLITS}
  model = tb.Seq2Seq(len(vocabs[0]), len(vocabs[1]), FLAGS.attention, hidden=FLAGS.hidden_size,
                     dropout=FLAGS.dropout)
  print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads); {data.source}; "
        f"{len(data.train):,} training pairs; vocabularies {len(vocabs[0])} / {len(vocabs[1])} "
        f"(course order); {'attention' if FLAGS.attention else 'no attention'}; "
        f"{tb.count_params(model):,} parameters", flush=True)
  best_state, history, best = train(model, splits, vocabs)
  model.load_state_dict(best_state)
  test = {"greedy": scores(spell(model, splits["test"], vocabs[1]), splits["test"].golds)}
  if FLAGS.topp > 0:
    generator = torch.Generator().manual_seed(FLAGS.seed)
    samples = spell(model, splits["test"], vocabs[1], FLAGS.topp, FLAGS.k, generator)
    test["nucleus"] = dict(scores(samples, splits["test"].golds), top_p=FLAGS.topp, k=FLAGS.k)
  for name, s in test.items():
    print(f"test {name}: " + "  ".join(f"{k} {v:.4f}" for k, v in s.items()
                                        if k in ("cer", "wer", "wer_at_k")), flush=True)
  write_outputs(best_state, {
      "framework": "pytorch", "torch_version": torch.__version__,
      "threads": torch.get_num_threads(), "data": data.source, "train_pairs": len(data.train),
      "vocab_order": "course: first appearance in train.tsv",
      "vocab_sizes": [len(v) for v in vocabs], "attention": FLAGS.attention,
      "seed": FLAGS.seed, "epochs": FLAGS.epochs, "batch_size": FLAGS.batch_size,
      "lr": FLAGS.lr, "dropout": FLAGS.dropout, "hidden_size": FLAGS.hidden_size,
      "params": tb.count_params(model), "history": history, "best_epoch": best["epoch"],
      "best_valid_cer": best["valid_cer"], "test": test,
      "train_seconds_total": float(np.sum([h["train_seconds"] for h in history]))})


def write_outputs(state_dict, results: dict) -> None:
  if FLAGS.save:
    Path(FLAGS.save).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, FLAGS.save)
    results["saved"] = str(Path(FLAGS.save).resolve())
  if FLAGS.out:
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  cli.run(main, memory_flags="--decode_batch")
