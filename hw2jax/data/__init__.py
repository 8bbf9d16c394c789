"""Data sources: Intel images (`intel`) and phoneme-to-grapheme pairs (`phonemes`)."""
