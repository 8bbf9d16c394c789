"""PyTorch versions of the course's models and training loops, the baselines of the benchmarks.

Written the way the course skeleton (hw2-q2.py, models.py) does it: NCHW float tensors in a
TensorDataset, a DataLoader with shuffling, one optimizer step and one `loss.item()` per batch.
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
