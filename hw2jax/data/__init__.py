"""The data: Intel images (`intel`), phoneme-to-grapheme pairs (`phonemes`), TFDS builders of both
(`tfds`), and where either comes from (`sources`: the one entry point)."""

# A --data_path naming a TFDS dataset: 'tfds:intel48', 'tfds:p2g'. Parsed here, once, for both
# `sources` (which must not import `tfds`, an optional extra, to route) and `tfds`.
TFDS_PREFIX = "tfds:"


def tfds_name(spec) -> str | None:
  """'intel48' of 'tfds:intel48'; None when `spec` (a path, a string or None) names none."""
  text = "" if spec is None else str(spec)
  return text[len(TFDS_PREFIX):] if text.startswith(TFDS_PREFIX) else None
