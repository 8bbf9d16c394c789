"""Batched decoders: greedy on a memorised set, nucleus (p -> 0, samples in the nucleus), beam."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import p2g_pairs
from hw2jax.models import decoding, seq2seq as s2s
from hw2jax.train import optimizer as optimizer_lib, trainer as trainer_lib
from hw2jax.data import phonemes as ph

H = 16


@pytest.fixture(scope="module")
def words():
  pairs = [(tuple(p.split()), w) for p, w in p2g_pairs(8, seed=5, max_len=4)]
  src_vocab = ph.Vocab.build(p for p, _ in pairs)
  tgt_vocab = ph.Vocab.build(w for _, w in pairs)
  arrays = ph.encode(pairs, src_vocab, tgt_vocab, src_width=6)
  return pairs, src_vocab, tgt_vocab, arrays


@pytest.fixture(scope="module")
def model(words):
  _, src_vocab, tgt_vocab, _ = words
  return s2s.Seq2Seq(len(src_vocab), len(tgt_vocab), hidden_size=H, attention=True, dropout=0.0)


@pytest.fixture(scope="module")
def untrained(model, words):
  arrays = words[3]
  return trainer_lib.create_train_state(model, (arrays["src"][:1], arrays["src_len"][:1],
                                             arrays["tgt"][:1, :-1]),
                                     optimizer_lib.make_optimizer("adam", 0.02), 0).params


@pytest.fixture(scope="module")
def memorised(model, words):
  """Params that reproduce the 8 training words (full-batch Adam until the loss is tiny)."""
  arrays = jax.device_put(words[3])
  state = trainer_lib.create_train_state(model, (arrays["src"][:1], arrays["src_len"][:1],
                                              arrays["tgt"][:1, :-1]),
                                      optimizer_lib.make_optimizer("adam", 0.02), 0)
  trainer = trainer_lib.Trainer(s2s.loss_fn, s2s.eval_fn, batch_size=8, epoch_mode="loop")
  for epoch in range(400):
    state, m = trainer.train_epoch(state, arrays, epoch)
    if m["loss"] < 0.01:
      break
  assert m["loss"] < 0.05, m
  return state.params


def teacher_forced_logp(model, params, src, src_len, tokens):
  """log p of every position of `tokens` (R, L) (after SOS), by teacher forcing."""
  tgt_in = jnp.concatenate([jnp.full((tokens.shape[0], 1), s2s.SOS), tokens[:, :-1]], 1)
  logits = jax.jit(model.apply)({"params": params}, src, src_len, tgt_in.astype(jnp.int32))
  return np.asarray(jax.nn.log_softmax(logits))


def test_greedy_reproduces_a_memorised_set(model, memorised, words):
  pairs, _, tgt_vocab, arrays = words
  out = decoding.greedy(model, memorised, arrays["src"], arrays["src_len"])
  chex.assert_shape(out.tokens, (8, decoding.MAX_LEN))
  assert decoding.strings(out.tokens, tgt_vocab) == [w for _, w in pairs]
  tokens = np.asarray(out.tokens)
  for row, (_, w) in zip(tokens, pairs):           # EOS right after the word, PAD after it
    assert row[len(w)] == s2s.EOS and np.all(row[len(w) + 1:] == s2s.PAD)
  # Scores are the log-probabilities of the emitted tokens, EOS included.
  logp = teacher_forced_logp(model, memorised, arrays["src"], arrays["src_len"], out.tokens)
  expected = [sum(logp[i, t, tokens[i, t]] for t in range(len(w) + 1))
              for i, (_, w) in enumerate(pairs)]
  np.testing.assert_allclose(out.scores, expected, rtol=1e-4, atol=1e-5)


def test_greedy_attention_weights(model, memorised, words):
  pairs, _, _, arrays = words
  out = decoding.greedy(model, memorised, arrays["src"], arrays["src_len"])
  w = np.asarray(out.attention)
  chex.assert_shape(out.attention, (8, decoding.MAX_LEN, 6))
  n = np.asarray(arrays["src_len"])
  for i, (_, word) in enumerate(pairs):
    steps = len(word) + 1
    np.testing.assert_allclose(w[i, :steps].sum(-1), 1.0, rtol=1e-5)
    assert np.all(w[i, :, n[i]:] == 0) and np.all(w[i, steps:] == 0)


def test_greedy_compiles_once_per_shape(model, memorised, untrained, words):
  arrays = words[3]
  decoding.greedy(model, untrained, arrays["src"], arrays["src_len"])
  before = decoding.greedy._cache_size()
  decoding.greedy(model, memorised, arrays["src"], arrays["src_len"])
  decoding.greedy(model, untrained, arrays["src"] + 0, arrays["src_len"])
  assert decoding.greedy._cache_size() == before


@pytest.mark.parametrize("top_p", [0.0, 1e-6])
def test_nucleus_with_tiny_p_is_greedy(model, untrained, words, top_p):
  arrays = words[3]
  greedy = decoding.greedy(model, untrained, arrays["src"], arrays["src_len"])
  samples = decoding.nucleus(model, untrained, arrays["src"], arrays["src_len"],
                             trainer_lib.prng_key(3), top_p=top_p, k=2)
  chex.assert_shape(samples.tokens, (8, 2, decoding.MAX_LEN))
  for j in range(2):
    np.testing.assert_array_equal(samples.tokens[:, j], greedy.tokens)
    np.testing.assert_allclose(samples.scores[:, j], greedy.scores, rtol=1e-5)


def test_nucleus_with_greedy_rows(model, untrained, words):
  arrays = words[3]
  key = trainer_lib.prng_key(4)
  greedy = decoding.greedy(model, untrained, arrays["src"], arrays["src_len"])
  g, samples = decoding.nucleus(model, untrained, arrays["src"], arrays["src_len"], key,
                                top_p=0.9, k=3, with_greedy=True)
  np.testing.assert_array_equal(g.tokens, greedy.tokens)
  chex.assert_shape(samples.tokens, (8, 3, decoding.MAX_LEN))
  assert len({tuple(r) for r in np.asarray(samples.tokens).reshape(24, -1)}) > 8


def reference_nucleus(logp_row, p):
  """The smallest set of most probable tokens whose probability reaches p."""
  probs = np.exp(logp_row)
  order = np.argsort(-probs, kind="stable")
  mass, keep = 0.0, []
  for t in order:
    keep.append(int(t))
    mass += probs[t]
    if mass >= p:
      break
  return set(keep)


def test_nucleus_samples_stay_inside_the_nucleus(model, untrained, words):
  arrays = words[3]
  p, k = 0.6, 4
  out = decoding.nucleus(model, untrained, arrays["src"], arrays["src_len"],
                         trainer_lib.prng_key(7), top_p=p, k=k)
  tokens = np.asarray(out.tokens).reshape(8 * k, -1)
  src = jnp.repeat(arrays["src"], k, 0)
  src_len = jnp.repeat(arrays["src_len"], k, 0)
  logp = teacher_forced_logp(model, untrained, src, src_len, jnp.asarray(tokens))
  checked = 0
  for r in range(tokens.shape[0]):
    for t in range(tokens.shape[1]):
      nucleus = reference_nucleus(logp[r, t], p)
      assert tokens[r, t] in nucleus, (r, t, tokens[r, t], nucleus)
      checked += 1
      if tokens[r, t] == s2s.EOS:
        break
  assert checked > 8 * k
  # Different keys give different samples; the same key the same ones.
  again = decoding.nucleus(model, untrained, arrays["src"], arrays["src_len"],
                           trainer_lib.prng_key(7), top_p=p, k=k)
  other = decoding.nucleus(model, untrained, arrays["src"], arrays["src_len"],
                           trainer_lib.prng_key(8), top_p=p, k=k)
  np.testing.assert_array_equal(again.tokens, out.tokens)
  assert not np.array_equal(other.tokens, out.tokens)


def test_nucleus_filter_keeps_the_smallest_covering_set():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
  kept = lambda p: np.isfinite(np.asarray(decoding.nucleus_filter(logits, jnp.array(p))))
  np.testing.assert_array_equal(kept([0.5, 0.5]), [[1, 0, 0, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(kept([0.79, 0.35]), [[1, 1, 0, 0], [0, 0, 0, 1]])
  np.testing.assert_array_equal(kept([0.0, 1.0]), [[1, 0, 0, 0], [1, 1, 1, 1]])


def test_beam_width_one_is_greedy(model, untrained, memorised, words):
  arrays = words[3]
  for params in (untrained, memorised):
    greedy = decoding.greedy(model, params, arrays["src"], arrays["src_len"])
    beam = decoding.beam(model, params, arrays["src"], arrays["src_len"], width=1)
    chex.assert_shape(beam.tokens, (8, 1, decoding.MAX_LEN))
    np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
    np.testing.assert_allclose(beam.scores[:, 0], greedy.scores, rtol=1e-5)


def test_beam_returns_distinct_sorted_scored_spellings(model, untrained, memorised, words):
  pairs, _, tgt_vocab, arrays = words
  width = 3
  out = decoding.beam(model, untrained, arrays["src"], arrays["src_len"], width=width)
  scores = np.asarray(out.scores)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)
  tokens = np.asarray(out.tokens)
  logp = teacher_forced_logp(model, untrained, jnp.repeat(arrays["src"], width, 0),
                             jnp.repeat(arrays["src_len"], width, 0),
                             jnp.asarray(tokens.reshape(8 * width, -1)))
  for r, row in enumerate(tokens.reshape(8 * width, -1)):
    end = np.argmax(row == s2s.EOS) if (row == s2s.EOS).any() else len(row) - 1
    assert np.all(row[end + 1:] == s2s.PAD)
    expected = sum(logp[r, t, row[t]] for t in range(end + 1))
    assert scores.reshape(-1)[r] == pytest.approx(expected, rel=1e-4, abs=1e-4)
  for b in range(8):
    assert len({tuple(t) for t in tokens[b]}) == width
  best = decoding.beam(model, memorised, arrays["src"], arrays["src_len"], width=width)
  assert [s[0] for s in decoding.strings(best.tokens, tgt_vocab)] == [w for _, w in pairs]


def test_in_batches_equals_one_call(model, untrained, words):
  arrays = jax.device_get(words[3])
  whole = decoding.greedy(model, untrained, arrays["src"], arrays["src_len"])
  fn = functools.partial(decoding.greedy, model, untrained)
  chunked = decoding.in_batches(fn, arrays["src"], arrays["src_len"], 3)   # 3 + 3 + 2 (padded)
  np.testing.assert_array_equal(chunked.tokens, whole.tokens)
  np.testing.assert_allclose(chunked.scores, whole.scores, rtol=1e-5)
