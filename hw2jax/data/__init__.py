"""The data: Intel images (`intel`), phoneme-to-grapheme pairs (`phonemes`), TFDS builders of both
(`tfds`), and where either comes from (`sources`: the one entry point)."""
