"""The course's CNN for 48x48 Intel images: vanilla, or with BatchNorm and global average pooling.

Conv(k x k, 'same') -> [BatchNorm] -> ReLU -> [MaxPool 2x2] -> Dropout per block; then either
flatten -> Dense 1024 -> ReLU -> Dropout -> Dense 512 -> ReLU -> Dense 6 (vanilla, 5,340,742
parameters) or GAP -> Dense 1024 -> ReLU -> BatchNorm -> Dropout -> Dense 512 -> ReLU -> Dense 6
(BN + GAP, 755,718 parameters). BatchNorm statistics live in the `batch_stats` collection.

Below the model: its task in the form `hw2jax.train.trainer.Trainer` expects (as
`hw2jax.models.seq2seq` has its own): `loss_fn` (training mode: mean loss, new model state, the
batch's summed metrics) and `eval_fn` (eval mode: the summed metrics). Batches are
{'image': (B, H, W, C), 'label': (B,) int}; `mask` (B,) float marks real examples. The loss is
the course's NLL of log-softmax, averaged over the real examples of the batch.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from hw2jax.models import dropout, registry

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


class BatchNorm(nn.Module):
  """PyTorch's BatchNorm over the last axis: training normalises with the batch's biased
  variance but averages the UNBIASED one (n/(n-1), n values per channel) into the running
  variance, which Flax's BatchNorm does not (at batch 8 the head's running variances would
  settle at 7/8 of PyTorch's). Same variable names as Flax's (params scale/bias, batch_stats
  mean/var), so checkpoints read either way.

  x (..., C); `mask` (training only, broadcastable to x[..., :1]) marks the values that count.
  """
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
    if not train:
      return (x - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon) * scale + bias
    w = jnp.ones(x.shape[:-1] + (1,), x.dtype) if mask is None else mask
    w = jnp.broadcast_to(w, x.shape[:-1] + (1,)).astype(x.dtype)
    y, mean, var = batch_norm_train(x, w, scale, bias, self.epsilon)
    if not self.is_initializing():
      n, m = w.sum(), self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * mean
      ra_var.value = m * ra_var.value + (1 - m) * var * n / jnp.maximum(n - 1, 1)
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def batch_norm_train(x: jax.Array, w: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode normalisation of x (..., C) with the statistics of the values w (..., 1)
  marks (1: counts, 0: not): (y (..., C), mean (C,), biased variance (C,)).

  The gradient is written out: its two sums per channel in one reduction, where autodiff's five
  each recompute the layer's elementwise chain on CPU (BUILD.md). `w` gets none (it marks data).
  """
  return _batch_norm_fwd(x, w, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, w, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  n = w.sum()
  mean = (w * x).sum(axes) / n
  var = (w * jnp.square(x - mean)).sum(axes) / n
  rstd = jax.lax.rsqrt(var + epsilon)
  return ((x - mean) * rstd * scale + bias, mean, var), (x, w, mean, rstd, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
  x, w, mean, rstd, scale = residuals
  g, g_mean, g_var = cotangents
  n, c = w.sum(), x.shape[-1]
  centred = x - mean
  xhat = centred * rstd
  sums = jnp.concatenate([g, g * xhat], axis=-1).sum(tuple(range(x.ndim - 1)))
  d_bias, d_scale = sums[:c], sums[c:]       # every output moves with the marked statistics
  dx = (scale * rstd * (g - w * (d_bias + xhat * d_scale) / n)
        + w * (g_mean + 2 * g_var * centred) / n)
  return dx, jnp.zeros_like(w), d_scale, d_bias


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


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
      mask = mask.reshape((-1,) + (1,) * (x.ndim - 1))
    return BatchNorm(name=name)(x, train, mask if train else None)

  def _keep_masks(self, image_shape) -> dict[str, jax.Array]:
    """Dropout masks of the step, one per site: after each conv block and the first dense."""
    b, h, w, _ = image_shape
    shapes = {}
    for i, c in enumerate(self.channels):
      if self.maxpool:
        h, w = h // 2, w // 2
      shapes[f"block{i}"] = (b, h, w, c)
    shapes["fc0"] = (b, self.hidden[0])
    return dropout.keep_masks(self.make_rng("dropout"), self.dropout, shapes)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, mask: jax.Array | None = None
               ) -> jax.Array:
    if self.init_scheme not in ("torch", "flax"):
      raise ValueError(f"init_scheme must be 'torch' or 'flax', got {self.init_scheme!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    keep = self._keep_masks(images.shape) if train and self.dropout > 0 else None
    drop = lambda h, site: h if keep is None else dropout.apply(h, keep[site], self.dropout)
    x = images.astype(jnp.float32) * PIXEL_SCALE
    for i, features in enumerate(self.channels):
      x = self._conv(x, features, name=f"conv{i}")
      if self.batch_norm:
        x = self._bn(x, train, mask, name=f"bn{i}")
      x = nn.relu(x)
      if self.maxpool:
        x = max_pool_2x2(x)
      x = drop(x, f"block{i}")
    if self.batch_norm:
      x = jnp.mean(x, axis=(1, 2))                     # global average pooling: (B, C)
    else:
      x = x.reshape(x.shape[0], -1)                    # flatten: (B, H * W * C)
    x = nn.relu(self._dense(x, self.hidden[0], name="fc0"))
    if self.batch_norm:
      x = self._bn(x, train, mask, name="bn_fc0")
    x = drop(x, "fc0")
    for j, features in enumerate(self.hidden[1:], 1):
      x = nn.relu(self._dense(x, features, name=f"fc{j}"))
    return self._dense(x, self.num_classes, name="logits")


# The course's two families (Table 2.3 fixes their sizes at its defaults on 48x48 images).
registry.register(registry.ModelFamily(
    "vanilla", "vanilla", functools.partial(CNN, batch_norm=False), expected_params=5_340_742,
    torch_cnn=True))
registry.register(registry.ModelFamily(
    "bn_gap", "BN+GAP", functools.partial(CNN, batch_norm=True), expected_params=755_718,
    torch_cnn=True))


# -- the task ----------------------------------------------------------------------------------


def _sums(logits, labels, mask):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {"loss": jnp.sum(nll * mask), "accuracy": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}


def loss_fn(apply_fn, params, batch_stats, batch, mask, rng):
  """Training-mode forward: mean NLL over real examples, updated BN statistics, batch sums."""
  variables = {"params": params}
  mutable = []
  if batch_stats:
    variables["batch_stats"] = batch_stats
    mutable = ["batch_stats"]
  logits, updates = apply_fn(variables, batch["image"], train=True, mask=mask,
                             rngs={"dropout": rng}, mutable=mutable)
  sums = _sums(logits, batch["label"], mask)
  loss = sums["loss"] / jnp.maximum(sums["count"], 1.0)
  return loss, (updates.get("batch_stats", batch_stats), sums)


def eval_fn(apply_fn, variables, batch, mask):
  """Eval-mode forward (running BN statistics, no dropout): summed loss, correct, count.
  `variables`: {'params'} or {'params', 'batch_stats'} (`TrainState.variables`)."""
  logits = apply_fn(variables, batch["image"], train=False)
  return _sums(logits, batch["label"], mask)


def as_dataset(images, labels) -> dict:
  """The pytree the trainer gathers batches from: images (N, H, W, C), labels (N,)."""
  return {"image": images, "label": labels}
