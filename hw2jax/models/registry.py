"""The image-classifier families `--model` names. A family is one module of hw2jax/models/: its
Flax model and a `register(ModelFamily(...))` call beside it (`hw2jax.models.cnn` registers
'vanilla' and 'bn_gap'). `families()` imports every module of the package once, so adding the
module is the whole change: the CLI's --model and --help, the experiment, its tables, the
report's Table 2.3 and the PyTorch converters read everything about a family from here.

A family's model takes (B, H, W, C) uint8 images and `train`, `mask` keywords, returns
(B, num_classes) logits, and draws dropout from the 'dropout' RNG (`hw2jax.models.cnn.loss_fn`
applies it so).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
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


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
  """Called once by the module that defines the family, when it is imported."""
  if family.name in _FAMILIES:
    raise ValueError(f"a model family {family.name!r} is registered already")
  _FAMILIES[family.name] = family
  return family


def families() -> dict[str, ModelFamily]:
  """Every family, by name, in the order their modules register them."""
  _import_every_module()
  return dict(_FAMILIES)


def get(name: str) -> ModelFamily:
  found = families()
  if name not in found:
    broken = "".join(f"; hw2jax/models/{m}.py did not import ({why})"
                     for m, why in _import_every_module().items())
    raise UserError(f"--model={name!r} is not one of {', '.join(found)}{broken}")
  return found[name]


@functools.cache
def _import_every_module() -> dict[str, str]:
  """Imports each module of hw2jax.models (each registers its families); returns those that
  failed, with why, so that a broken new module is named instead of silently missing."""
  package = importlib.import_module(__name__.rpartition(".")[0])
  broken = {}
  for module in pkgutil.iter_modules(package.__path__):
    try:
      importlib.import_module(f"{package.__name__}.{module.name}")
    except Exception as e:  # a user's module: its error is reported where its family is asked for
      broken[module.name] = f"{type(e).__name__}: {e}"
  return broken
