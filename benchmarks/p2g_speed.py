r"""P2G speed: the JAX trainer and batched decoders against the course's PyTorch loop, one device.

  python -m benchmarks.p2g_speed --data_path=../shared/data/p2g           # the issue's numbers
  python -m benchmarks.p2g_speed --train_words=2000 --torch_decode_words=100   # a quick CPU run

Training: one epoch of the same model (attention by default), batch 64, Adam 0.003, dropout 0.3.
  PyTorch as the course wrote it (benchmarks.torch_baselines.Seq2Seq, the skeleton's module
  names): a DataLoader-style loop padding each batch to its longest word, nn.LSTM(bidirectional)
  over pack_padded_sequence, the decoder LSTM over the whole target, zero_grad / backward / step
  per batch.
  JAX: hw2jax's Trainer over random batches padded to a few widths (one lax.scan per epoch on
  GPU/TPU, a loop of jitted steps on CPU).
  Both frameworks' achieved GFLOP/s: the epoch's arithmetic as XLA counts the JAX step at its
  padded widths, over each one's epoch time, beside a 2048x2048 float32 matmul timed in each in
  the same run (benchmarks/flops.py).
  Both report the median of --repeats timed epochs after one untimed warm-up epoch
  (compilation), each framework with the threads it takes by default (printed). --profile=DIR
  writes per-op tables of one more epoch of each (DIR/p2g_{jax,torch}_ops.txt).
Decoding: --decode_words test words, greedy + k nucleus samples (p 0.8) each.
  PyTorch as the course: one word at a time (batch 1), one step at a time, stopping at EOS.
  JAX: one jitted program for all words (`decoding.nucleus(with_greedy=True)`), timed from host
  arrays to spellings (everything but compilation).
Prints both, the ratios, and writes them as JSON with --out.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags

from benchmarks import flops, profiling, ratios
from hw2jax import cli
from hw2jax.data import phonemes, sources
from hw2jax.recipes import p2g, p2g_evaluation
from hw2jax.errors import UserError
from hw2jax.models import decoding
from hw2jax.train import trainer as trainer_lib

flags.DEFINE_string("data_path", None, "Course TSV folder (default: the CMUdict split).")
flags.DEFINE_bool("attention", True, "Benchmark the attention model.")
flags.DEFINE_integer("hidden_size", 128, "Model size.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_integer("train_words", 0, "Use only this many training pairs (0: all).")
flags.DEFINE_integer("repeats", 3, "Timed epochs per framework (after one warm-up epoch); the "
                     "median is reported.")
flags.DEFINE_string("profile", None, "Write per-op time tables of one epoch of each framework "
                    "into this folder.")
flags.DEFINE_integer("decode_words", 1000, "Test words JAX decodes (greedy + k samples).")
flags.DEFINE_integer("torch_decode_words", 0, "Test words PyTorch decodes one at a time (0: as "
                     "--decode_words); its time is scaled to --decode_words.")
flags.DEFINE_integer("k", 3, "Nucleus samples per word.")
flags.DEFINE_float("topp", 0.8, "Nucleus p.")
flags.DEFINE_integer("widths", p2g.Config.widths, "JAX padded widths of the training batches "
                     "(as p2g.Config).")
flags.DEFINE_integer("unroll", 1, "JAX scan unroll of the LSTM recurrences.")
flags.DEFINE_enum("epoch_mode", "auto", ["auto", "scan", "loop"], "JAX epoch runner.")
flags.DEFINE_bool("torch", True, "Also run the PyTorch baseline.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS
MAX_LEN = decoding.MAX_LEN


# -- JAX ----------------------------------------------------------------------------------------


def jax_side(data: phonemes.P2GData, words: list) -> dict:
  config = p2g.Config(attention=FLAGS.attention, hidden_size=FLAGS.hidden_size,
                     batch_size=FLAGS.batch_size, widths=FLAGS.widths, unroll=FLAGS.unroll,
                     epoch_mode=FLAGS.epoch_mode)
  model = config.build_model(len(data.src_vocab), len(data.tgt_vocab))
  trainer = p2g.make_trainer(config)
  train = p2g.train_widths(config, data, trainer)
  state = trainer.put(p2g.new_state(config, model))
  epoch_flops = flops.epoch_flops(trainer, state, train)
  t0 = time.perf_counter()
  state, _ = trainer.train_epoch(state, train, 0)
  warmup = time.perf_counter() - t0
  times = []
  for epoch in range(1, FLAGS.repeats + 1):
    t0 = time.perf_counter()
    state, m = trainer.train_epoch(state, train, epoch)
    times.append(time.perf_counter() - t0)
  if FLAGS.profile:
    steps = trainer_lib.num_batches(len(data.train), FLAGS.batch_size)
    table = profiling.jax_table(lambda: trainer.train_epoch(state, train, FLAGS.repeats + 1),
                                steps, Path(FLAGS.profile) / "hlo")
    (Path(FLAGS.profile) / "p2g_jax_ops.txt").write_text(table)
  key = p2g_evaluation.sampling_key(0)

  def decode():
    arrays = phonemes.encode_sources(words, data.src_vocab)
    greedy, samples = decoding.nucleus(model, state.params, arrays["src"], arrays["src_len"],
                                       key, top_p=FLAGS.topp, k=FLAGS.k, with_greedy=True)
    greedy, samples = jax.device_get((greedy.tokens, samples.tokens))
    return decoding.strings(greedy, data.tgt_vocab), decoding.strings(samples, data.tgt_vocab)

  t0 = time.perf_counter()
  decode()
  decode_warmup = time.perf_counter() - t0
  decode_times = []
  for _ in range(3):
    t0 = time.perf_counter()
    decode()
    decode_times.append(time.perf_counter() - t0)
  return {"epoch_seconds": statistics.median(times), "epoch_seconds_all": times,
          "first_epoch_seconds_with_compile": warmup, "last_loss": m["loss"],
          "mode": trainer.mode, "decode_seconds": float(np.median(decode_times)),
          "decode_first_call_seconds_with_compile": decode_warmup,
          "params": trainer_lib.count_params(state.params), "epoch_flops": epoch_flops}


# -- PyTorch, as the course wrote it ------------------------------------------------------------


def torch_side(data: phonemes.P2GData, words: list) -> dict:
  import torch
  from torch import nn

  from benchmarks import torch_baselines

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(42)
  H = FLAGS.hidden_size

  model = torch_baselines.Seq2Seq(len(data.src_vocab), len(data.tgt_vocab), FLAGS.attention,
                                  hidden=H).to(device)
  n_params = sum(p.numel() for p in model.parameters())
  optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
  criterion = nn.CrossEntropyLoss(ignore_index=phonemes.PAD)
  src_ids = [data.src_vocab.encode(p) for p, _ in data.train]
  tgt_ids = [[phonemes.SOS] + data.tgt_vocab.encode(w) + [phonemes.EOS] for _, w in data.train]

  def pad(seqs):
    out = np.zeros((len(seqs), max(map(len, seqs))), np.int64)
    for i, s in enumerate(seqs):
      out[i, :len(s)] = s
    return torch.from_numpy(out)

  def epoch(seed):
    model.train()
    order = np.random.default_rng(seed).permutation(len(src_ids))
    total = 0.0
    for start in range(0, len(order), FLAGS.batch_size):
      rows = order[start:start + FLAGS.batch_size]
      src = pad([src_ids[i] for i in rows]).to(device)
      lengths = torch.tensor([len(src_ids[i]) for i in rows], device=device)
      tgt = pad([tgt_ids[i] for i in rows]).to(device)
      optimizer.zero_grad()
      logits = model(src, lengths, tgt[:, :-1])
      loss = criterion(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1))
      loss.backward()
      optimizer.step()
      total += loss.item()
    return total

  t0 = time.perf_counter()
  epoch(0)
  warmup = time.perf_counter() - t0
  times = []
  for e in range(1, FLAGS.repeats + 1):
    t0 = time.perf_counter()
    epoch(e)
    times.append(time.perf_counter() - t0)
  if FLAGS.profile:
    table = profiling.torch_table(lambda: epoch(FLAGS.repeats + 1),
                                  math.ceil(len(src_ids) / FLAGS.batch_size))
    (Path(FLAGS.profile) / "p2g_torch_ops.txt").write_text(table)

  @torch.no_grad()
  def decode_word(word, top_p):
    src = torch.tensor([data.src_vocab.encode(word)], device=device)
    memory, mask, state = model.encode(src, torch.tensor([src.shape[1]], device=device))
    prev, out = torch.tensor([[phonemes.SOS]], device=device), []
    for _ in range(MAX_LEN):
      logits, state = model.decode(prev, memory, mask, state)
      probs = torch.softmax(logits[0, -1], -1)
      if top_p is None:
        token = int(probs.argmax().item())
      else:
        ranked, order = torch.sort(probs, descending=True)
        keep = (torch.cumsum(ranked, 0) - ranked) < top_p
        ranked = ranked * keep
        token = int(order[torch.multinomial(ranked / ranked.sum(), 1)].item())
      if token == phonemes.EOS:
        break
      out.append(token)
      prev = torch.tensor([[token]], device=device)
    return data.tgt_vocab.decode(out)

  model.eval()
  n = FLAGS.torch_decode_words or len(words)
  t0 = time.perf_counter()
  for word in words[:n]:
    decode_word(word, None)
    for _ in range(FLAGS.k):
      decode_word(word, FLAGS.topp)
  decode_seconds = time.perf_counter() - t0
  return {"epoch_seconds": statistics.median(times), "epoch_seconds_all": times,
          "first_epoch_seconds": warmup, "device": str(device), "params": n_params,
          "decode_words_timed": n, "decode_seconds_measured": decode_seconds,
          "decode_seconds": decode_seconds * len(words) / n, "torch_version": torch.__version__,
          "threads": torch.get_num_threads()}


def main(argv):
  del argv
  if FLAGS.repeats < 1:
    raise UserError(f"--repeats={FLAGS.repeats} must be at least 1")
  if FLAGS.profile:
    Path(FLAGS.profile).mkdir(parents=True, exist_ok=True)
    profiling.dump_hlo_to(Path(FLAGS.profile).absolute() / "hlo")
  data = sources.load_p2g(FLAGS.data_path, FLAGS.train_words)
  words = [p for p, _ in data.test][:FLAGS.decode_words]
  if len(words) < FLAGS.decode_words:
    words = (words * math.ceil(FLAGS.decode_words / len(words)))[:FLAGS.decode_words]
  dev = jax.devices()[0]
  print(f"data: {data.source}; {len(data.train):,} training pairs, {len(words):,} decoded words; "
        f"JAX on {dev.platform}:{getattr(dev, 'device_kind', '')} (jax {jax.__version__})",
        flush=True)
  if FLAGS.torch:
    print(profiling.threads(), flush=True)
  ceilings = flops.ceilings(with_torch=FLAGS.torch)
  results = {"data": data.source, "train_pairs": len(data.train), "decode_words": len(words),
             "attention": FLAGS.attention, "jax_device": f"{dev.platform}:{dev.device_kind}",
             "jax_version": jax.__version__, "jax": jax_side(data, words)}
  j = results["jax"]
  print(f"JAX ({j['mode']}): epoch {j['epoch_seconds']:.3f} s (first, with compilation, "
        f"{j['first_epoch_seconds_with_compile']:.1f} s); decoding greedy + {FLAGS.k} samples "
        f"of {len(words)} words {j['decode_seconds']:.3f} s", flush=True)
  results["jax_matmul_gflops"] = ceilings["jax"]
  rates = [flops.achieved("JAX", j["epoch_flops"], j["epoch_seconds"], ceilings["jax"])]
  if FLAGS.torch:
    t = results["torch"] = torch_side(data, words)
    print(f"PyTorch ({t['device']}, {t['threads']} threads): epoch {t['epoch_seconds']:.3f} s; "
          f"decoding {t['decode_seconds']:.2f} s (measured on {t['decode_words_timed']} words, "
          f"{t['decode_seconds_measured']:.2f} s)", flush=True)
    results["epoch_speedup"] = t["epoch_seconds"] / j["epoch_seconds"]
    results["decode_speedup"] = t["decode_seconds"] / j["decode_seconds"]
    print(f"parameters: JAX {j['params']:,} (one bias per LSTM gate), PyTorch {t['params']:,}",
          flush=True)
    results["torch_matmul_gflops"] = ceilings["torch"]
    rates.append(flops.achieved("PyTorch", j["epoch_flops"], t["epoch_seconds"],
                                ceilings["torch"]))
    print(f"training epoch: {ratios.jax_versus(j['epoch_seconds'], t['epoch_seconds'])}; "
          f"decoding: {ratios.jax_versus(j['decode_seconds'], t['decode_seconds'], digits=1)}",
          flush=True)
  print(f"training epoch, the same arithmetic (XLA's count of the JAX step at its padded widths; "
        f"the ceiling a {flops.MATMUL_N}x{flops.MATMUL_N} float32 matmul): {'; '.join(rates)}",
        flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
