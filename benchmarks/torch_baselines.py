"""PyTorch versions of the course's models and training loops, the baselines of the benchmarks
and the other side of the fidelity tests (tests/models/test_torch_port.py).

Written the way the course skeleton (hw2-q2.py, hw2-q3.py, models.py) does it: NCHW float
tensors in a TensorDataset, a DataLoader with shuffling, one optimizer step and one
`loss.item()` per batch. The P2G `Seq2Seq` carries the skeleton's module and parameter names,
so its state_dict converts to and from hw2jax with `hw2jax.models.torch_port`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


class ConvBlock(nn.Module):
  def __init__(self, cin: int, cout: int, kernel_size: int, batch_norm: bool, dropout: float):
    super().__init__()
    layers = [nn.Conv2d(cin, cout, kernel_size, stride=1, padding=kernel_size // 2)]
    if batch_norm:
      layers.append(nn.BatchNorm2d(cout))
    layers += [nn.ReLU(), nn.MaxPool2d(2, 2), nn.Dropout(dropout)]
    self.block = nn.Sequential(*layers)

  def forward(self, x):
    return self.block(x)


class TorchCNN(nn.Module):
  """The course CNN: vanilla (flatten head) or BatchNorm + global average pooling."""

  def __init__(self, batch_norm: bool = False, dropout: float = 0.1, kernel_size: int = 3):
    super().__init__()
    chans = (3, 32, 64, 128)
    self.blocks = nn.Sequential(*[ConvBlock(a, b, kernel_size, batch_norm, dropout)
                                  for a, b in zip(chans[:-1], chans[1:])])
    self.batch_norm = batch_norm
    features = 128 if batch_norm else 128 * 6 * 6
    head = [nn.Linear(features, 1024), nn.ReLU()]
    if batch_norm:
      head.append(nn.BatchNorm1d(1024))
    head += [nn.Dropout(dropout), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 6)]
    self.head = nn.Sequential(*head)

  def forward(self, x):
    x = self.blocks(x)
    x = x.mean(dim=(2, 3)) if self.batch_norm else x.flatten(1)
    return torch.log_softmax(self.head(x), dim=-1)


def count_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cnn_epoch_seconds(images: np.ndarray, labels: np.ndarray, *, batch_norm: bool,
                      batch_size: int = 8, lr: float = 0.01, epochs: int = 2,
                      device: str | None = None, seed: int = 42) -> list[float]:
  """Seconds of each of `epochs` training epochs of the course loop (the first one warms up).

  `images` (N, 48, 48, 3) uint8 are turned into float NCHW tensors / 256 like the skeleton.
  """
  device = device or ("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(seed)
  x = torch.from_numpy(images.astype(np.float32) / 256.0).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels.astype(np.int64))
  loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                       batch_size=batch_size, shuffle=True)
  model = TorchCNN(batch_norm=batch_norm).to(device)
  optimizer = torch.optim.SGD(model.parameters(), lr=lr)
  criterion = nn.NLLLoss()
  times = []
  for _ in range(epochs):
    model.train()
    start = time.perf_counter()
    for xb, yb in loader:
      xb, yb = xb.to(device), yb.to(device)
      optimizer.zero_grad()
      loss = criterion(model(xb), yb)
      loss.backward()
      optimizer.step()
      loss.item()
    if device.startswith("cuda"):
      torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
  return times


# -- P2G: the course's seq2seq (models.py of hw2-q3), with the skeleton's parameter names ------

PAD, SOS, EOS = 0, 1, 2
MAX_LEN = 50


class BahdanauAttention(nn.Module):
  """e_ij = v^T tanh(W_s s_i + W_h h_j), softmax over the real source positions j,
  c_i = sum_j a_ij h_j, output tanh(W_out [c_i; s_i]); no biases."""

  def __init__(self, hidden: int):
    super().__init__()
    self.W_s = nn.Linear(hidden, hidden, bias=False)
    self.W_h = nn.Linear(hidden, hidden, bias=False)
    self.v = nn.Linear(hidden, 1, bias=False)
    self.W_out = nn.Linear(2 * hidden, hidden, bias=False)

  def forward(self, s, memory, mask):
    """s (B, T, H) decoder states, memory (B, S, H), mask (B, S) bool -> (B, T, H)."""
    scores = self.v(torch.tanh(self.W_s(s)[:, :, None] + self.W_h(memory)[:, None]))[..., 0]
    weights = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)
    return torch.tanh(self.W_out(torch.cat([weights @ memory, s], dim=-1)))


class Encoder(nn.Module):
  """Embedding -> dropout -> BiLSTM (hidden/2 per direction) over the packed words -> dropout."""

  def __init__(self, vocab_size: int, hidden: int, dropout: float):
    super().__init__()
    self.embedding = nn.Embedding(vocab_size, hidden, padding_idx=PAD)
    self.lstm = nn.LSTM(hidden, hidden // 2, bidirectional=True, batch_first=True)
    self.dropout = nn.Dropout(dropout)

  def forward(self, src, lengths):
    """src (B, S), lengths (B,) -> outputs (B, S, H) (zero past each length), and the decoder's
    initial (h, c), each (1, B, H): the forward and backward final states concatenated."""
    x = self.dropout(self.embedding(src))
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                               enforce_sorted=False)
    out, (h, c) = self.lstm(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
    state = (torch.cat([h[0], h[1]], -1)[None], torch.cat([c[0], c[1]], -1)[None])
    return self.dropout(out), state


class Decoder(nn.Module):
  """Embedding -> dropout -> LSTM -> [attention] -> dropout (the generator follows)."""

  def __init__(self, vocab_size: int, hidden: int, attention: bool, dropout: float):
    super().__init__()
    self.embedding = nn.Embedding(vocab_size, hidden, padding_idx=PAD)
    self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
    self.attn = BahdanauAttention(hidden) if attention else None
    self.dropout = nn.Dropout(dropout)

  def forward(self, tgt_in, state, memory, mask):
    """tgt_in (B, T) -> outputs (B, T, H) and the LSTM's (h, c) after the last step."""
    s, state = self.lstm(self.dropout(self.embedding(tgt_in)), state)
    if self.attn is not None:
      s = self.attn(s, memory, mask)
    return self.dropout(s), state


class Seq2Seq(nn.Module):
  """The course's P2G model. Parameter names: encoder.embedding, encoder.lstm (bidirectional),
  decoder.embedding, decoder.lstm, [decoder.attn.{W_s,W_h,v,W_out}], generator (its weight is
  decoder.embedding.weight). 257,117 parameters without attention, 322,781 with (course vocab).

  `encode` and `decode` split the forward pass for step-by-step decoding.
  """

  def __init__(self, src_vocab_size: int, tgt_vocab_size: int, attention: bool,
               hidden: int = 128, dropout: float = 0.3):
    super().__init__()
    self.attention = attention
    self.encoder = Encoder(src_vocab_size, hidden, dropout)
    self.decoder = Decoder(tgt_vocab_size, hidden, attention, dropout)
    self.generator = nn.Linear(hidden, tgt_vocab_size)
    self.generator.weight = self.decoder.embedding.weight

  def encode(self, src, lengths):
    """-> (memory (B, S, H), mask (B, S) bool True on real positions, state ((1,B,H), (1,B,H)))."""
    memory, state = self.encoder(src, lengths)
    mask = torch.arange(src.shape[1], device=src.device)[None] < lengths.to(src.device)[:, None]
    return memory, mask, state

  def decode(self, tgt_in, memory, mask, state):
    """Teacher forcing over tgt_in (B, T) (or one step, T = 1) -> (logits (B, T, V), state)."""
    s, state = self.decoder(tgt_in, state, memory, mask)
    return self.generator(s), state

  def forward(self, src, lengths, tgt_in):
    """src (B, S), lengths (B,), tgt_in (B, T) = SOS c_1 .. -> logits (B, T, V)."""
    memory, mask, state = self.encode(src, lengths)
    return self.decode(tgt_in, memory, mask, state)[0]


def pad_batch(seqs, pad: int = PAD) -> torch.Tensor:
  """Lists of ids -> (N, longest) int64, PAD-filled on the right."""
  out = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
  return out


@torch.no_grad()
def generate(model: Seq2Seq, src, lengths, top_p: float | None = None,
             generator: torch.Generator | None = None, max_len: int = MAX_LEN) -> list[list[int]]:
  """Batched step-by-step decoding in eval mode: greedy (argmax) when `top_p` is None, else
  nucleus sampling (the smallest set of most probable tokens reaching `top_p`, renormalised).
  Rows are independent (finished rows are fed PAD), so batch 1 gives the same as a batch.
  Returns each row's token ids up to (without) EOS, at most `max_len` steps."""
  was_training = model.training
  model.eval()
  memory, mask, state = model.encode(src, lengths)
  rows = src.shape[0]
  prev = torch.full((rows, 1), SOS, dtype=torch.long, device=src.device)
  finished = torch.zeros(rows, dtype=torch.bool, device=src.device)
  steps = []
  for _ in range(max_len):
    logits, state = model.decode(prev, memory, mask, state)
    token = _choose(logits[:, -1], top_p, generator)
    token = torch.where(finished, torch.full_like(token, PAD), token)
    steps.append(token)
    finished |= token == EOS
    if bool(finished.all()):
      break
    prev = token[:, None]
  model.train(was_training)
  out = []
  for row in torch.stack(steps, 1).tolist():
    out.append(row[:row.index(EOS)] if EOS in row else row)
  return out


def _choose(logits, top_p, generator):
  if top_p is None:
    return logits.argmax(-1)
  probs = torch.softmax(logits.float(), -1)
  ranked, order = torch.sort(probs, descending=True, dim=-1)
  keep = (torch.cumsum(ranked, -1) - ranked) < top_p
  keep[:, 0] = True
  ranked = ranked * keep
  pick = torch.multinomial(ranked / ranked.sum(-1, keepdim=True), 1, generator=generator)
  return order.gather(-1, pick)[:, 0]
