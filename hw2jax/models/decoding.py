"""Batched decoding on the device: greedy, nucleus (top-p) sampling and beam search.

Every decoder is one jitted program: the encoder runs once, then a `lax.while_loop` emits one
token per step for the whole batch and stops when every row has produced EOS or after `max_len`
steps (the course's 50). Rows that have finished emit PAD, add nothing to their score and get
zero attention. Tokens are returned without the leading SOS; EOS is included when emitted.

Shapes: B words, S source positions, L = max_len steps, k samples, N beams, V target symbols.
"""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from hw2jax.models.seq2seq import EOS, NEG, PAD, SOS, Seq2Seq

MAX_LEN = 50


@struct.dataclass
class Decoded:
  """Decoder output. Leading axes: (B,) greedy, (B, k) samples, (B, N) beams (best first)."""
  tokens: jax.Array                 # (..., L) int32: ids after SOS, EOS included, PAD after
  scores: jax.Array                 # (...,) float32: sum of log-probabilities of the tokens
  attention: jax.Array | None = None  # (..., L, S) per-step weights (with attention only)


def _encode(model: Seq2Seq, params, src, src_len):
  return model.apply({"params": params}, src, src_len, method=Seq2Seq.encode)


def _step(model: Seq2Seq, params, memory, carry, tokens):
  return model.apply({"params": params}, memory, carry, tokens, method=Seq2Seq.step)


def _repeat(tree, n: int):
  """Every array of `tree` repeated n times along the batch axis (row b -> rows b*n..b*n+n-1)."""
  return jax.tree_util.tree_map(lambda a: jnp.repeat(a, n, axis=0), tree)


def nucleus_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
  """logits (R, V) with everything outside each row's nucleus set to -inf.

  The nucleus is the smallest set of most probable tokens whose probabilities sum to at least
  top_p (R,); it always holds the most probable token, so top_p -> 0 leaves only the argmax.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  ranked = -jnp.sort(-probs, axis=-1)
  before = jnp.cumsum(ranked, axis=-1) - ranked           # mass of the more probable tokens
  keep = (before < top_p[:, None]).at[:, 0].set(True)
  threshold = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(probs >= threshold, logits, -jnp.inf)


def _generate(model, params, memory, carry, choose, max_len: int):
  """The shared loop: `choose(t, logits (R, V)) -> tokens (R,)` picks every row's next token."""
  R = memory.mask.shape[0]
  S = memory.mask.shape[1]
  attend = model.attention

  def cond(loop):
    t, _, _, _, finished, _, _ = loop
    return (t < max_len) & ~jnp.all(finished)

  def body(loop):
    t, prev, carry, out, finished, scores, attn = loop
    carry, logits, weights = _step(model, params, memory, carry, prev)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.where(finished, PAD, choose(t, logits)).astype(jnp.int32)
    gain = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
    scores = scores + jnp.where(finished, 0.0, gain)
    out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], t, axis=1)
    if attend:
      weights = jnp.where(finished[:, None], 0.0, weights)
      attn = jax.lax.dynamic_update_slice_in_dim(attn, weights[:, None], t, axis=1)
    return t + 1, tok, carry, out, finished | (tok == EOS), scores, attn

  loop = (jnp.zeros((), jnp.int32), jnp.full((R,), SOS, jnp.int32), carry,
          jnp.full((R, max_len), PAD, jnp.int32), jnp.zeros((R,), bool),
          jnp.zeros((R,), jnp.float32),
          jnp.zeros((R, max_len, S) if attend else (0,), jnp.float32))
  _, _, _, out, _, scores, attn = jax.lax.while_loop(cond, body, loop)
  return Decoded(tokens=out, scores=scores, attention=attn if attend else None)


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def greedy(model: Seq2Seq, params, src: jax.Array, src_len: jax.Array,
           max_len: int = MAX_LEN) -> Decoded:
  """Argmax decoding of src (B, S) -> tokens (B, L), scores (B,), attention (B, L, S)."""
  memory, carry = _encode(model, params, src, src_len)
  return _generate(model, params, memory, carry, lambda t, logits: jnp.argmax(logits, -1),
                   max_len)


@functools.partial(jax.jit, static_argnames=("model", "k", "max_len", "with_greedy"))
def nucleus(model: Seq2Seq, params, src: jax.Array, src_len: jax.Array, key: jax.Array,
            top_p: float | jax.Array = 0.8, k: int = 3, max_len: int = MAX_LEN,
            with_greedy: bool = False) -> Decoded | tuple[Decoded, Decoded]:
  """k nucleus samples per word: tokens (B, k, L), scores (B, k), attention (B, k, L, S).

  The step-t draw of every row uses `fold_in(key, t)`, so a key fixes all samples. `top_p` = 0
  is greedy. `with_greedy` also returns the greedy decoding of every word, computed in the same
  loop as extra rows (one program for the course's greedy + k samples): (greedy, samples).
  """
  B = src.shape[0]
  memory, carry = _encode(model, params, src, src_len)
  copies = k + int(with_greedy)
  row_p = jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), (k,))
  row_p = jnp.tile(jnp.concatenate([jnp.zeros((1,)), row_p]) if with_greedy else row_p, B)

  def choose(t, logits):
    sampled = jax.random.categorical(jax.random.fold_in(key, t), nucleus_filter(logits, row_p))
    return jnp.where(row_p > 0, sampled, jnp.argmax(logits, -1))

  out = _generate(model, params, _repeat(memory, copies), _repeat(carry, copies), choose, max_len)
  out = jax.tree_util.tree_map(lambda a: a.reshape((B, copies) + a.shape[1:]), out)
  if not with_greedy:
    return out
  return (jax.tree_util.tree_map(lambda a: a[:, 0], out),
          jax.tree_util.tree_map(lambda a: a[:, 1:], out))


@functools.partial(jax.jit, static_argnames=("model", "width", "max_len"))
def beam(model: Seq2Seq, params, src: jax.Array, src_len: jax.Array, width: int,
         max_len: int = MAX_LEN) -> Decoded:
  """Beam search with `width` beams scored by the sum of log-probabilities (no length penalty):
  the `width` best spellings of every word, best first: tokens (B, N, L), scores (B, N).

  A finished beam keeps its score and competes with the live ones; the search stops when all
  kept beams have finished, at which point no live extension can beat them.
  """
  B, N = src.shape[0], width
  memory, carry = _encode(model, params, src, src_len)
  memory, carry = _repeat(memory, N), _repeat(carry, N)
  V = model.tgt_vocab

  def gather_beams(a, parent):     # a (B*N, ...) rows of each word's beams, parent (B, N)
    a = a.reshape((B, N) + a.shape[1:])
    a = jnp.take_along_axis(a, parent.reshape((B, N) + (1,) * (a.ndim - 2)), axis=1)
    return a.reshape((B * N,) + a.shape[2:])

  def cond(loop):
    t, _, _, _, finished, _ = loop
    return (t < max_len) & ~jnp.all(finished)

  def body(loop):
    t, prev, carry, out, finished, scores = loop
    carry, logits, _ = _step(model, params, memory, carry, prev)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(B, N, V)
    live = scores[..., None] + logp
    done = jnp.full((B, N, V), NEG).at[..., PAD].set(scores)    # one way on: PAD, same score
    cand = jnp.where(finished[..., None], done, live).reshape(B, N * V)
    scores, flat = jax.lax.top_k(cand, N)
    parent, tok = flat // V, (flat % V).astype(jnp.int32)
    carry = jax.tree_util.tree_map(lambda a: gather_beams(a, parent), carry)
    out = jnp.take_along_axis(out, parent[..., None], axis=1)
    out = jax.lax.dynamic_update_slice_in_dim(out, tok[..., None], t, axis=2)
    finished = jnp.take_along_axis(finished, parent, axis=1) | (tok == EOS)
    return t + 1, tok.reshape(B * N), carry, out, finished, scores

  scores = jnp.full((B, N), NEG, jnp.float32).at[:, 0].set(0.0)
  loop = (jnp.zeros((), jnp.int32), jnp.full((B * N,), SOS, jnp.int32), carry,
          jnp.full((B, N, max_len), PAD, jnp.int32), jnp.zeros((B, N), bool), scores)
  _, _, _, out, _, scores = jax.lax.while_loop(cond, body, loop)
  return Decoded(tokens=out, scores=scores)


def strings(tokens, vocab) -> list:
  """Token ids (..., L) -> spellings, nested like the leading axes (cut at EOS)."""
  tokens = np.asarray(tokens)
  if tokens.ndim == 1:
    return vocab.decode(tokens)
  flat = vocab.decode_rows(tokens.reshape(-1, tokens.shape[-1]))
  for size in reversed(tokens.shape[1:-1]):
    flat = [flat[i:i + size] for i in range(0, len(flat), size)]
  return flat


def in_batches(fn, src: np.ndarray, src_len: np.ndarray, batch_size: int,
               key: jax.Array | None = None):
  """`fn(src, src_len)` (or `fn(src, src_len, key)`) over many words in chunks of exactly
  `batch_size` rows, so every chunk reuses one compiled program (the last chunk is padded with
  copies of the first word; chunk i gets `fold_in(key, i)`). Returns the outputs of all words
  concatenated along the first axis, as numpy arrays."""
  n = src.shape[0]
  outs = []
  for i, start in enumerate(range(0, n, batch_size)):
    rows = np.arange(start, start + batch_size)
    rows = np.where(rows < n, rows, 0)
    extra = () if key is None else (jax.random.fold_in(key, i),)
    outs.append(jax.device_get(fn(src[rows], src_len[rows], *extra)))
  return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0)[:n], *outs)
