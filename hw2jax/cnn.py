"""The course's CNN for 48x48 Intel images: vanilla, or with BatchNorm and global average pooling.

Conv(k x k, 'same') -> [BatchNorm] -> ReLU -> [MaxPool 2x2] -> Dropout per block; then either
flatten -> Dense 1024 -> ReLU -> Dropout -> Dense 512 -> ReLU -> Dense 6 (vanilla, 5,340,742
parameters) or GAP -> Dense 1024 -> ReLU -> BatchNorm -> Dropout -> Dense 512 -> ReLU -> Dense 6
(BN + GAP, 755,718 parameters). BatchNorm statistics live in the `batch_stats` collection.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

# PyTorch's BatchNorm2d/1d defaults: momentum 0.1 (Flax 0.9) and eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# The skeleton scales pixels by 1/256 (not 1/255); kept for fidelity.
PIXEL_SCALE = 1.0 / 256.0


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 (floor, like PyTorch), (B, H, W, C) -> (B, H//2, W//2, C).

  Written as a reshape + max: XLA's generic reduce-window gradient (select-and-scatter) costs
  about 4x more on CPU for the same result.
  """
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Conv/Linear weights and biases."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class CNN(nn.Module):
  """Image classifier; `init_scheme` is 'torch' (the course's PyTorch defaults) or 'flax'.

  Input: (B, H, W, 3) uint8 or float pixels in [0, 255]. Output: (B, num_classes) logits.
  `mask` (B,) marks real examples, so padding rows of a partial batch never touch BN statistics.
  """
  batch_norm: bool = False
  num_classes: int = 6
  channels: Sequence[int] = (32, 64, 128)
  hidden: Sequence[int] = (1024, 512)
  kernel_size: int = 3
  maxpool: bool = True
  dropout: float = 0.1
  init_scheme: str = "torch"

  def _dense(self, x, features, name=None):
    if self.init_scheme == "torch":
      fan_in = x.shape[-1]
      return nn.Dense(features, kernel_init=nn.initializers.variance_scaling(
          1 / 3, "fan_in", "uniform"), bias_init=torch_uniform(fan_in), name=name)(x)
    return nn.Dense(features, name=name)(x)

  def _conv(self, x, features, name=None):
    k = self.kernel_size
    kwargs = {}
    if self.init_scheme == "torch":
      kwargs = dict(kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                    bias_init=torch_uniform(x.shape[-1] * k * k))
    return nn.Conv(features, (k, k), padding="SAME", name=name, **kwargs)(x)

  def _bn(self, x, train, mask, name):
    if mask is not None:
      mask = jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        name=name)(x, mask=mask if train else None)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, mask: jax.Array | None = None
               ) -> jax.Array:
    if self.init_scheme not in ("torch", "flax"):
      raise ValueError(f"init_scheme must be 'torch' or 'flax', got {self.init_scheme!r}")
    x = images.astype(jnp.float32) * PIXEL_SCALE
    for i, features in enumerate(self.channels):
      x = self._conv(x, features, name=f"conv{i}")
      if self.batch_norm:
        x = self._bn(x, train, mask, name=f"bn{i}")
      x = nn.relu(x)
      if self.maxpool:
        x = max_pool_2x2(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.batch_norm:
      x = jnp.mean(x, axis=(1, 2))                     # global average pooling: (B, C)
    else:
      x = x.reshape(x.shape[0], -1)                    # flatten: (B, H * W * C)
    x = nn.relu(self._dense(x, self.hidden[0], name="fc0"))
    if self.batch_norm:
      x = self._bn(x, train, mask, name="bn_fc0")
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for j, features in enumerate(self.hidden[1:], 1):
      x = nn.relu(self._dense(x, features, name=f"fc{j}"))
    return self._dense(x, self.num_classes, name="logits")


def count_params(params) -> int:
  """Trainable parameters (the `params` collection only; BN running statistics excluded)."""
  return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
