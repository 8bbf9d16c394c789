"""Edit distance, CER, WER and WER@k against hand-computed cases."""

import pytest

from hw2jax import metrics


@pytest.mark.parametrize("a, b, expected", [
    ("", "", 0),
    ("", "abc", 3),                  # insertions only
    ("abc", "", 3),                  # deletions only
    ("kitten", "sitting", 3),        # 2 substitutions + 1 insertion
    ("flaw", "lawn", 2),             # deletion + insertion
    ("abc", "abc", 0),
    ("abc", "axc", 1),               # substitution
    ("abcd", "acd", 1),              # deletion inside
    ("Chaplet", "chaplet", 1),       # case-sensitive
    ("crudités", "crudites", 1),     # accented letter is one code point
    ("Óðr", "Odr", 2),
    ("gîte", "gîtes", 1),
    ("t͡ʃ", "tʃ", 1),                 # combining tie bar is its own code point
])
def test_edit_distance(a, b, expected):
  assert metrics.edit_distance(a, b) == expected
  assert metrics.edit_distance(b, a) == expected


def test_edit_distance_on_token_sequences():
  assert metrics.edit_distance(["t͡ʃ", "æ", "p"], ["t͡ʃ", "p"]) == 1


def test_cer_sums_distances_over_gold_characters():
  # distances 1 + 0 + 3 over 4 + 3 + 3 gold characters
  assert metrics.cer(["abcx", "dog", ""], ["abcd", "dog", "cat"]) == pytest.approx(4 / 10)


def test_wer_is_exact_match_case_sensitive():
  assert metrics.wer(["Dog", "cat", "é"], ["dog", "cat", "é"]) == pytest.approx(1 / 3)
  assert metrics.wer(["a"], ["a"]) == 0.0


def test_wer_at_k_counts_words_with_no_correct_sample():
  samples = [["dog", "dgo", "dog"], ["kat", "cta", "kta"], ["bird", "bird", "bird"]]
  assert metrics.wer_at_k(samples, ["dog", "cat", "bird"]) == pytest.approx(1 / 3)
  assert metrics.wer_at_k([["x"]], ["x"]) == 0.0


def test_mismatched_or_empty_inputs_are_errors():
  with pytest.raises(ValueError):
    metrics.cer(["a"], ["a", "b"])
  with pytest.raises(ValueError):
    metrics.wer([], [])
