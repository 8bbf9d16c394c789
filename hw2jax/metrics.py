"""Spelling metrics over a split: edit distance, CER, WER, WER@k (as the course defines them).

Strings are compared as sequences of Unicode code points, case-sensitive, so an accented letter
is one character (the target vocabulary's unit).
"""

from __future__ import annotations

from typing import Sequence


def edit_distance(a: Sequence, b: Sequence) -> int:
  """Levenshtein distance: the fewest insertions, deletions and substitutions turning a into b.

  Written here (two-row dynamic programme) rather than taken from a library: words are short,
  a split is ~1,000 of them, and the definition is then exactly the course's.
  """
  if len(a) < len(b):
    a, b = b, a
  previous = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    current = [i]
    for j, y in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
    previous = current
  return previous[-1]


def _check(predictions: Sequence, golds: Sequence[str]) -> None:
  if len(predictions) != len(golds):
    raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold spellings")
  if not golds:
    raise ValueError("no words to score")


def cer(predictions: Sequence[str], golds: Sequence[str]) -> float:
  """Character error rate: sum of edit distances / total gold characters."""
  _check(predictions, golds)
  chars = sum(len(g) for g in golds)
  return sum(edit_distance(p, g) for p, g in zip(predictions, golds)) / max(chars, 1)


def wer(predictions: Sequence[str], golds: Sequence[str]) -> float:
  """Word error rate: the fraction of words not spelled exactly as the gold (case-sensitive)."""
  _check(predictions, golds)
  return sum(p != g for p, g in zip(predictions, golds)) / len(golds)


def wer_at_k(samples: Sequence[Sequence[str]], golds: Sequence[str]) -> float:
  """WER@k: the fraction of words none of whose k sampled spellings equals the gold."""
  _check(samples, golds)
  return sum(all(s != g for s in ss) for ss, g in zip(samples, golds)) / len(golds)
