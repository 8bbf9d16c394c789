"""The course's phoneme-to-grapheme model: BiLSTM encoder, LSTM decoder, Bahdanau attention.

Shapes: B batch, S source positions, T target positions, H hidden size (decoder; each encoder
direction has H/2), V vocabulary. Sources are right-padded with PAD and carry their true
lengths; nothing past a word's length reaches the encoder's outputs, its final state or the
attention weights.

Speed levers (the recurrences are chains of small matmuls): every LSTM computes the input
projections of all time steps in one matmul before its scan, so the scan body holds only the
recurrent matmul; the encoder runs both directions in one scan (the backward direction reads
each word reversed within its length, so padding stays at the end); attention has no feedback
into the decoder LSTM (the course's design), so under teacher forcing it is computed for all
target positions at once after the scan.

Initialisation follows PyTorch's defaults, which produced the course's numbers: LSTM weights
U(+-1/sqrt(H)), the single Flax bias the sum of PyTorch's two such biases, embeddings N(0, 1)
with a zero PAD row, linear layers U(+-1/sqrt(fan_in)).
"""

from __future__ import annotations

import math

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

PAD, SOS, EOS, UNK = 0, 1, 2, 3
# Masked attention logits: exp(NEG - max) is exactly 0 in float32, so padding gets no mass.
NEG = -1e9


def uniform(bound: float, summed: int = 1):
  """U(-bound, bound) initialiser; `summed` > 1 adds that many draws (PyTorch's two biases)."""
  def init(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, summed)
    return sum(jax.random.uniform(k, shape, dtype, -bound, bound) for k in keys)
  return init


def embedding_init(key, shape, dtype=jnp.float32):
  """nn.Embedding's N(0, 1), with the PAD row zero."""
  return jax.random.normal(key, shape, dtype).at[PAD].set(0.0)


def linear(features: int, fan_in: int, name: str) -> nn.Dense:
  """A bias-free Dense with PyTorch's nn.Linear initialisation."""
  return nn.Dense(features, use_bias=False, kernel_init=uniform(1 / math.sqrt(fan_in)),
                  name=name)


def lstm_update(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(..., 4H) pre-activations in PyTorch's gate order i, f, g, o and cell (..., H) -> (h, c)."""
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c), c


def reverse_within_length(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """x (B, S, ...) with each row's first `lengths[b]` positions reversed, padding left in place.

  Its own inverse.
  """
  S = x.shape[1]
  pos = jnp.arange(S)[None, :]
  idx = jnp.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


class BiLSTM(nn.Module):
  """Bidirectional LSTM over right-padded sequences, both directions in one scan.

  Parameters carry a leading direction axis (0 forward, 1 backward): wi (2, E, 4F),
  wh (2, F, 4F), b (2, 4F), F = `features` per direction.
  """
  features: int
  unroll: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array):
    """x (B, S, E), lengths (B,) -> outputs (B, S, 2F) (zero past each length) and the final
    (h, c), each (B, 2F): [forward state after the last real token; backward after the first]."""
    B, S, E = x.shape
    F = self.features
    bound = 1 / math.sqrt(F)
    wi = self.param("wi", uniform(bound), (2, E, 4 * F))
    wh = self.param("wh", uniform(bound), (2, F, 4 * F))
    b = self.param("b", uniform(bound, summed=2), (2, 4 * F))
    xs = jnp.stack([x, reverse_within_length(x, lengths)])              # (2, B, S, E)
    gates_x = jnp.einsum("dbse,deg->sdbg", xs, wi) + b[None, :, None]     # (S, 2, B, 4F)
    valid = jnp.arange(S)[:, None] < lengths[None, :]                    # (S, B)

    def step(carry, inputs):
      h, c = carry                                                       # (2, B, F)
      gx, v = inputs
      h_new, c_new = lstm_update(gx + jnp.einsum("dbf,dfg->dbg", h, wh), c)
      v = v[None, :, None]
      return (jnp.where(v, h_new, h), jnp.where(v, c_new, c)), jnp.where(v, h_new, 0.0)

    zeros = jnp.zeros((2, B, F), x.dtype)
    (h, c), ys = jax.lax.scan(step, (zeros, zeros), (gates_x, valid), unroll=self.unroll)
    forward, backward = einops.rearrange(ys, "s d b f -> d b s f")        # 2 x (B, S, F)
    outputs = jnp.concatenate([forward, reverse_within_length(backward, lengths)], axis=-1)
    return outputs, (jnp.concatenate([h[0], h[1]], -1), jnp.concatenate([c[0], c[1]], -1))


class LSTM(nn.Module):
  """Unidirectional LSTM: wi (E, 4H), wh (H, 4H), one bias b (4H).

  `__call__` runs a whole sequence (teacher forcing) with `nn.scan`; `project` and `step` are
  the same computation one token at a time, for the decoders.
  """
  features: int
  input_features: int
  unroll: int = 1

  def setup(self):
    bound, H = 1 / math.sqrt(self.features), self.features
    self.wi = self.param("wi", uniform(bound), (self.input_features, 4 * H))
    self.wh = self.param("wh", uniform(bound), (H, 4 * H))
    self.b = self.param("b", uniform(bound, summed=2), (4 * H,))

  def project(self, x: jax.Array) -> jax.Array:
    """Input projections (..., E) -> (..., 4H), for any number of time steps at once."""
    return x @ self.wi + self.b

  def step(self, carry, gates_x: jax.Array):
    """One time step: carry (h, c) each (B, H), gates_x (B, 4H) -> (carry, h)."""
    h, c = carry
    h, c = lstm_update(gates_x + h @ self.wh, c)
    return (h, c), h

  def __call__(self, carry, x: jax.Array):
    """carry (h, c) each (B, H), x (B, T, E) -> (final carry, outputs (B, T, H))."""
    gates_x = self.project(x)
    scan = nn.scan(lambda cell, c, g: cell.step(c, g), variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1, unroll=self.unroll)
    return scan(self, carry, gates_x)


class BahdanauAttention(nn.Module):
  """e_ij = v^T tanh(W_s s_i + W_h h_j), masked softmax over j, c_i = sum_j a_ij h_j,
  output tanh(W_out [c_i; s_i]); no biases."""
  features: int

  def setup(self):
    H = self.features
    self.w_s = linear(H, H, "w_s")
    self.w_h = linear(H, H, "w_h")
    self.v = linear(1, H, "v")
    self.w_out = linear(H, 2 * H, "w_out")

  def keys(self, memory: jax.Array) -> jax.Array:
    """W_h h_j for every source position: (B, S, H) -> (B, S, H), computed once per word."""
    return self.w_h(memory)

  def __call__(self, s: jax.Array, memory: jax.Array, keys: jax.Array, mask: jax.Array):
    """s (B, T, H) decoder states; memory, keys (B, S, H); mask (B, S) bool
    -> outputs (B, T, H), weights (B, T, S) (exactly 0 on padding)."""
    scores = self.v(jnp.tanh(self.w_s(s)[:, :, None] + keys[:, None]))[..., 0]   # (B, T, S)
    weights = jax.nn.softmax(jnp.where(mask[:, None], scores, NEG), axis=-1)
    context = jnp.einsum("bts,bsh->bth", weights, memory)
    return jnp.tanh(self.w_out(jnp.concatenate([context, s], axis=-1))), weights


@struct.dataclass
class Memory:
  """What the decoder reads from the encoder. outputs/keys (B, S, H) only with attention."""
  mask: jax.Array                       # (B, S) bool, True on real source positions
  outputs: jax.Array | None = None      # encoder outputs h_j (after dropout)
  keys: jax.Array | None = None         # W_h h_j


class Seq2Seq(nn.Module):
  """Embedding -> BiLSTM encoder -> LSTM decoder [-> Bahdanau attention] -> tied output layer.

  `hidden_size` H is the embedding size of both sides and the decoder's size; the encoder has
  H/2 units per direction, so its concatenated final states initialise the decoder.
  """
  src_vocab: int
  tgt_vocab: int
  hidden_size: int = 128
  attention: bool = False
  dropout: float = 0.3
  unroll: int = 1

  def setup(self):
    H = self.hidden_size
    if H % 2:
      raise ValueError(f"hidden_size must be even (two encoder directions), got {H}")
    self.src_embed = nn.Embed(self.src_vocab, H, embedding_init=embedding_init)
    self.encoder = BiLSTM(H // 2, unroll=self.unroll)
    self.tgt_embed = nn.Embed(self.tgt_vocab, H, embedding_init=embedding_init)
    self.decoder = LSTM(H, H, unroll=self.unroll)
    if self.attention:
      self.attend = BahdanauAttention(H)
    self.out_bias = self.param("out_bias", uniform(1 / math.sqrt(H)), (self.tgt_vocab,))
    self.drop = nn.Dropout(self.dropout)

  def encode(self, src: jax.Array, src_len: jax.Array, train: bool = False):
    """src (B, S) ids, src_len (B,) -> (Memory, decoder initial carry (h, c) each (B, H))."""
    x = self.drop(self.src_embed(src), deterministic=not train)
    outputs, carry = self.encoder(x, src_len)
    mask = jnp.arange(src.shape[1])[None, :] < src_len[:, None]
    if not self.attention:
      return Memory(mask=mask), carry
    outputs = self.drop(outputs, deterministic=not train)
    return Memory(mask=mask, outputs=outputs, keys=self.attend.keys(outputs)), carry

  def readout(self, s: jax.Array, memory: Memory, train: bool = False):
    """Decoder states (B, T, H) -> logits (B, T, V), attention weights (B, T, S) or None."""
    weights = None
    if self.attention:
      s, weights = self.attend(s, memory.outputs, memory.keys, memory.mask)
    s = self.drop(s, deterministic=not train)
    return self.tgt_embed.attend(s) + self.out_bias, weights

  def decode(self, memory: Memory, carry, tgt_in: jax.Array, train: bool = False):
    """Teacher forcing: inputs tgt_in (B, T) (SOS, c_1, ...) -> logits (B, T, V), weights."""
    x = self.drop(self.tgt_embed(tgt_in), deterministic=not train)
    _, s = self.decoder(carry, x)
    return self.readout(s, memory, train)

  def step(self, memory: Memory, carry, tokens: jax.Array):
    """One eval-mode decoding step: tokens (B,) -> (carry, logits (B, V), weights (B, S)|None)."""
    carry, s = self.decoder.step(carry, self.decoder.project(self.tgt_embed(tokens)))
    logits, weights = self.readout(s[:, None], memory)
    return carry, logits[:, 0], None if weights is None else weights[:, 0]

  def __call__(self, src: jax.Array, src_len: jax.Array, tgt_in: jax.Array, train: bool = False):
    """src (B, S), src_len (B,), tgt_in (B, T) -> logits (B, T, V)."""
    memory, carry = self.encode(src, src_len, train)
    return self.decode(memory, carry, tgt_in, train)[0]


def torch_update_scale(tree):
  """2 for the LSTM biases `b`, 1 for every other parameter of `tree` (params-shaped).

  PyTorch's LSTM keeps two bias vectors, b_ih and b_hh, that always get the same gradient and
  each take a full optimizer step, so their sum (this model's one `b`) moves twice as far per
  step. Doubling that update (`trainer.make_optimizer(update_scale=...)`) makes one SGD or
  Adam step of this model equal to the course's (tests/models/test_torch_port.py).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 2.0 if getattr(path[-1], "key", None) == "b" else 1.0, tree)


def torch_param_count(flax_count: int, hidden_size: int) -> int:
  """The same model counted as PyTorch does: its LSTMs carry two bias vectors per gate, so
  every Flax bias (encoder 2 x 4(H/2), decoder 4H) is counted twice."""
  return flax_count + 2 * 4 * (hidden_size // 2) + 4 * hidden_size


# -- the task, in the form hw2jax.train.trainer.Trainer expects (as hw2jax.models.cnn's) --------
# Batches are {'src': (B, S) int32, 'src_len': (B,) int32, 'tgt': (B, T + 1) int32} with tgt =
# SOS c_1 .. c_n EOS PAD..; the decoder reads tgt[:, :-1] and predicts tgt[:, 1:].


def _sums(logits, target, mask):
  weight = ((target != PAD) & (mask[:, None] > 0)).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  return {"loss": jnp.sum(nll * weight), "count": jnp.sum(weight)}


def loss_fn(apply_fn, params, model_state, batch, mask, rng):
  """Teacher-forced cross-entropy averaged over the batch's target tokens (PAD ignored)."""
  logits = apply_fn({"params": params}, batch["src"], batch["src_len"], batch["tgt"][:, :-1],
                    train=True, rngs={"dropout": rng})
  sums = _sums(logits, batch["tgt"][:, 1:], mask)
  return sums["loss"] / jnp.maximum(sums["count"], 1.0), (model_state, sums)


def eval_fn(apply_fn, variables, batch, mask):
  """Eval-mode (no dropout) teacher-forced cross-entropy sums."""
  logits = apply_fn({"params": variables["params"]}, batch["src"], batch["src_len"],
                    batch["tgt"][:, :-1])
  return _sums(logits, batch["tgt"][:, 1:], mask)
