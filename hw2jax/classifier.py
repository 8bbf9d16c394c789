"""Loss and metrics of an image classifier, in the form `hw2jax.training.Trainer` expects.

Batches are {'image': (B, H, W, C), 'label': (B,) int}; `mask` (B,) float marks real examples.
The loss is the course's NLL of log-softmax, averaged over the real examples of the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
  """Eval-mode forward (running BN statistics, no dropout): summed loss, correct, count."""
  if not variables.get("batch_stats"):
    variables = {"params": variables["params"]}
  logits = apply_fn(variables, batch["image"], train=False)
  return _sums(logits, batch["label"], mask)


def as_dataset(images, labels) -> dict:
  """The pytree the trainer gathers batches from."""
  return {"image": images, "label": labels}
