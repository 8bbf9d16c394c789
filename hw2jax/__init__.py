"""hw2jax: IST Deep Learning 2024/25 Homework 2 reimplemented in JAX/Flax."""

from hw2jax.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
