"""The P2G model: exact parameter counts, shapes, length masking, attention, teacher forcing."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hw2jax.models import seq2seq as s2s
from hw2jax.train import trainer as trainer_lib

SRC_V, TGT_V, H = 12, 10, 8


def count(attention, src_v=107, tgt_v=93, hidden=128):
  model = s2s.Seq2Seq(src_v, tgt_v, hidden_size=hidden, attention=attention)
  x = jnp.ones((1, 3), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, x,
                                             jnp.ones((1,), jnp.int32), x))
  return trainer_lib.count_params(shapes["params"]), shapes["params"]


@pytest.mark.parametrize("attention, flax_count, torch_count", [
    (False, 256_093, 257_117), (True, 321_757, 322_781)])
def test_exact_parameter_counts(attention, flax_count, torch_count):
  n, params = count(attention)
  assert n == flax_count
  assert s2s.torch_param_count(n, 128) == torch_count
  per_part = {k: trainer_lib.count_params(v) for k, v in params.items()}
  expected = {"src_embed": 107 * 128, "tgt_embed": 93 * 128, "out_bias": 93,
              "encoder": 2 * (4 * 64 * (128 + 64) + 4 * 64),
              "decoder": 4 * 128 * (128 + 128) + 4 * 128}
  if attention:
    expected["attend"] = 128 * 128 * 2 + 128 + 256 * 128
  assert per_part == expected


@pytest.fixture(scope="module")
def models():
  return {a: s2s.Seq2Seq(SRC_V, TGT_V, hidden_size=H, attention=a, dropout=0.3)
          for a in (False, True)}


@pytest.fixture(scope="module")
def params(models):
  x = jnp.ones((1, 3), jnp.int32)
  return {a: jax.jit(m.init)({"params": trainer_lib.prng_key(a)}, x, jnp.ones((1,), jnp.int32),
                             x)["params"] for a, m in models.items()}


def apply_fn(model, method, **static):
  return jax.jit(functools.partial(model.apply, method=method, **static))


@pytest.fixture(scope="module")
def fns(models):
  """Jitted entry points, shared by the tests (one compilation each per shape)."""
  out = {}
  for a, m in models.items():
    out[a] = {"call": apply_fn(m, s2s.Seq2Seq.__call__),
              "encode": apply_fn(m, s2s.Seq2Seq.encode),
              "decode": apply_fn(m, s2s.Seq2Seq.decode),
              "step": apply_fn(m, s2s.Seq2Seq.step)}
  return out


def batch(pad_value=0, width=7, seed=0):
  """3 words of lengths 5, 2, 7 padded to `width` with `pad_value`; targets of 6 tokens."""
  rng = np.random.default_rng(seed)
  lengths = np.array([5, 2, 7], np.int32)
  src = rng.integers(4, SRC_V, (3, width)).astype(np.int32)
  src[np.arange(width)[None] >= lengths[:, None]] = pad_value
  tgt = np.concatenate([np.full((3, 1), s2s.SOS), rng.integers(3, TGT_V, (3, 5))], 1)
  return jnp.asarray(src), jnp.asarray(lengths), jnp.asarray(tgt, jnp.int32)


@pytest.mark.parametrize("attention", [False, True])
def test_shapes(models, params, fns, attention):
  src, n, tgt = batch()
  logits = fns[attention]["call"]({"params": params[attention]}, src, n, tgt)
  chex.assert_shape(logits, (3, 6, TGT_V))
  memory, (h, c) = fns[attention]["encode"]({"params": params[attention]}, src, n)
  chex.assert_shape((h, c), (3, H))
  chex.assert_shape(memory.mask, (3, 7))
  if attention:
    chex.assert_shape((memory.outputs, memory.keys), (3, 7, H))


@pytest.mark.parametrize("attention", [False, True])
def test_padding_content_changes_nothing(params, fns, attention):
  src0, n, tgt = batch(pad_value=0)
  src1, _, _ = batch(pad_value=5)
  variables = {"params": params[attention]}
  chex.assert_trees_all_close(fns[attention]["call"](variables, src0, n, tgt),
                              fns[attention]["call"](variables, src1, n, tgt), atol=1e-6)
  m0, carry0 = fns[attention]["encode"](variables, src0, n)
  m1, carry1 = fns[attention]["encode"](variables, src1, n)
  chex.assert_trees_all_close(carry0, carry1, atol=1e-6)
  if attention:
    chex.assert_trees_all_close(m0.outputs, m1.outputs, atol=1e-6)
    mask = np.arange(7)[None, :, None] < np.asarray(n)[:, None, None]
    assert np.all(np.asarray(m0.outputs)[~np.broadcast_to(mask, m0.outputs.shape)] == 0)


def test_attention_puts_no_mass_on_padding(params, fns):
  src, n, tgt = batch()
  variables = {"params": params[True]}
  memory, carry = fns[True]["encode"](variables, src, n)
  _, weights = fns[True]["decode"](variables, memory, carry, tgt)
  chex.assert_shape(weights, (3, 6, 7))
  pad = np.arange(7)[None, None, :] >= np.asarray(n)[:, None, None]
  w = np.asarray(weights)
  assert np.all(w[np.broadcast_to(pad, w.shape)] == 0.0)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


def reference_lstm(x, wi, wh, b):
  """A plain per-step LSTM over x (T, E), PyTorch gate order; returns outputs and (h, c)."""
  h = c = np.zeros(wh.shape[0], np.float32)
  outs = []
  for t in range(x.shape[0]):
    h, c = s2s.lstm_update(x[t] @ wi + h @ wh + b, c)
    h, c = np.asarray(h), np.asarray(c)
    outs.append(h)
  return np.stack(outs), (h, c)


def test_bilstm_matches_a_per_word_reference(params, fns):
  # Each word alone, at its true length, forward and reversed: what PyTorch's packed
  # bidirectional LSTM computes. The padded batch must give exactly that.
  src, n, _ = batch(pad_value=7)
  p = params[False]
  _, (h, c) = fns[False]["encode"]({"params": p}, src, n)
  enc = jax.tree_util.tree_map(np.asarray, p["encoder"])
  emb = np.asarray(p["src_embed"]["embedding"])
  for i, length in enumerate(np.asarray(n)):
    x = emb[np.asarray(src[i, :length])]
    _, (hf, cf) = reference_lstm(x, enc["wi"][0], enc["wh"][0], enc["b"][0])
    _, (hb, cb) = reference_lstm(x[::-1], enc["wi"][1], enc["wh"][1], enc["b"][1])
    np.testing.assert_allclose(h[i], np.concatenate([hf, hb]), atol=1e-5)
    np.testing.assert_allclose(c[i], np.concatenate([cf, cb]), atol=1e-5)


def test_bilstm_outputs_match_the_reference():
  model = s2s.BiLSTM(4)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
  n = jnp.array([3, 5])
  variables = jax.jit(model.init)(jax.random.PRNGKey(2), x, n)
  outputs, _ = jax.jit(model.apply)(variables, x, n)
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  for i, length in enumerate([3, 5]):
    xi = np.asarray(x[i, :length])
    fwd, _ = reference_lstm(xi, p["wi"][0], p["wh"][0], p["b"][0])
    bwd, _ = reference_lstm(xi[::-1], p["wi"][1], p["wh"][1], p["b"][1])
    np.testing.assert_allclose(outputs[i, :length], np.concatenate([fwd, bwd[::-1]], -1),
                               atol=1e-5)
    assert np.all(np.asarray(outputs[i, length:]) == 0)


def test_reverse_within_length_is_an_involution():
  x = jnp.arange(12).reshape(2, 6)
  n = jnp.array([4, 6])
  r = s2s.reverse_within_length(x, n)
  np.testing.assert_array_equal(r, [[3, 2, 1, 0, 4, 5], [11, 10, 9, 8, 7, 6]])
  np.testing.assert_array_equal(s2s.reverse_within_length(r, n), x)


@pytest.mark.parametrize("attention", [False, True])
def test_teacher_forcing_equals_step_by_step(params, fns, attention):
  src, n, tgt = batch()
  variables = {"params": params[attention]}
  memory, carry = fns[attention]["encode"](variables, src, n)
  logits, weights = fns[attention]["decode"](variables, memory, carry, tgt)
  for t in range(tgt.shape[1]):
    carry, step_logits, step_weights = fns[attention]["step"](variables, memory, carry,
                                                               tgt[:, t])
    np.testing.assert_allclose(step_logits, logits[:, t], atol=1e-5)
    if attention:
      np.testing.assert_allclose(step_weights, weights[:, t], atol=1e-6)


def test_dropout_only_in_training(models, params):
  model, p = models[True], params[True]
  src, n, tgt = batch()
  run = jax.jit(lambda key: model.apply({"params": p}, src, n, tgt, train=True,
                                        rngs={"dropout": key}))
  a, b, c = run(trainer_lib.prng_key(0)), run(trainer_lib.prng_key(0)), run(trainer_lib.prng_key(1))
  chex.assert_trees_all_equal(a, b)
  assert not np.allclose(a, c)


def test_pad_row_of_embeddings_starts_at_zero(params):
  for p in params.values():
    assert np.all(np.asarray(p["src_embed"]["embedding"][s2s.PAD]) == 0)
    assert np.all(np.asarray(p["tgt_embed"]["embedding"][s2s.PAD]) == 0)


def test_loss_counts_target_tokens_and_ignores_pad(models, params):
  model, p = models[True], params[True]
  src, n, _ = batch()
  tgt = jnp.array([[s2s.SOS, 5, 6, s2s.EOS, 0, 0], [s2s.SOS, 7, s2s.EOS, 0, 0, 0],
                   [s2s.SOS, 4, 4, 4, 4, s2s.EOS]], jnp.int32)
  b = {"src": src, "src_len": n, "tgt": tgt}
  mask = jnp.array([1.0, 1.0, 0.0])                       # the third row is batch padding
  sums = jax.jit(functools.partial(s2s.eval_fn, model.apply))({"params": p}, b, mask)
  assert float(sums["count"]) == 3 + 2
  logits = jax.jit(model.apply)({"params": p}, src, n, tgt[:, :-1])
  logp = np.asarray(jax.nn.log_softmax(logits))
  target = np.asarray(tgt[:, 1:])
  nll = sum(-logp[i, t, target[i, t]] for i in range(2) for t in range(5) if target[i, t])
  assert float(sums["loss"]) == pytest.approx(nll, rel=1e-5)
  loss, (_, train_sums) = jax.jit(functools.partial(s2s.loss_fn, model.apply))(
      p, {}, b, mask, trainer_lib.prng_key(0))
  assert float(train_sums["count"]) == 5
  assert float(loss) == pytest.approx(float(train_sums["loss"]) / 5, rel=1e-6)
