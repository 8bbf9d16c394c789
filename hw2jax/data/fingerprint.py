"""A dataset's fingerprint: what a run's card records of its data, so that a resume can tell
the data it was made from from other data (a moved file is the same data)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np


def fingerprint_splits(splits: Mapping[str, Any]) -> dict[str, dict]:
  """{split: {'count', 'hash'}} of a dataset's splits: a tuple of numpy arrays (images, labels:
  hashed by dtype, shape and bytes) or a sequence of JSON-able rows (P2G pairs)."""
  out = {}
  for name, split in splits.items():
    h = hashlib.blake2b(digest_size=16)
    if isinstance(split, tuple) and all(isinstance(a, np.ndarray) for a in split):
      for a in split:
        h.update(f"{a.dtype}{a.shape}".encode() + np.ascontiguousarray(a).tobytes())
    else:
      for row in split:
        h.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    out[name] = {"count": len(split[0] if isinstance(split, tuple) else split),
                 "hash": h.hexdigest()}
  return out
