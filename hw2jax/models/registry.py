"""The image-classifier families `--model` names. A family registers itself once, beside its
model (`hw2jax.models.cnn` registers 'vanilla' and 'bn_gap'); the experiment, its tables, the
report and the PyTorch converters read everything about it from here. A new family is a module
with a Flax model and one `register(...)` line; nothing else changes.

A family's model takes (B, H, W, C) uint8 images and `train`, `mask` keywords, returns
(B, num_classes) logits, and draws dropout from the 'dropout' RNG (`hw2jax.models.cnn.loss_fn`
applies it so).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import linen as nn

from hw2jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """`build(num_classes=, channels=, kernel_size=, maxpool=, dropout=, init_scheme=)` -> model;
  a family ignores the settings it has no use for."""
  name: str                              # the --model value, and the runs' folder names
  label: str                             # in tables and figure captions
  build: Callable[..., nn.Module]
  expected_params: int | None = None     # Table 2.3: the course's count (Intel data, defaults)
  torch_cnn: bool = False                # the course's TorchCNN holds it (--from/--to_torch)


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
  if family.name in FAMILIES:
    raise ValueError(f"a model family {family.name!r} is registered already")
  FAMILIES[family.name] = family
  return family


def get(name: str) -> ModelFamily:
  if name not in FAMILIES:
    raise UserError(f"--model={name!r} is not one of {', '.join(FAMILIES)}")
  return FAMILIES[name]
