"""What the report runs: its settings (`Config`, the course's by default) and the epochs and data
sizes of every part (`Schedule`: the course's, or --quick's shrunk ones)."""

from __future__ import annotations

import dataclasses

from hw2jax import records
from hw2jax.data import intel
from hw2jax.recipes import p2g_evaluation
from hw2jax.train import trainer

PARTS = ("q1", "q2", "q2_ablations", "q3")
SEED_PARTS = ("q1", "q2", "q3")     # the seed report's own experiments; Q2.4's ablations are ours
PART_TITLES = {"q1": "Q1 (modern Hopfield networks)", "q2": "Q2 (CNNs on Intel images)",
               "q2_ablations": "Q2.4 (kernel-size and pooling ablations)",
               "q3": "Q3 (phoneme-to-grapheme)"}
# Q2: (model, learning rate) of the seed report's Table 2.1, in its order.
Q2_RUNS = (("vanilla", 0.1), ("vanilla", 0.01), ("vanilla", 0.001), ("bn_gap", 0.01))
ABLATION_LR = 0.01
POOLING = {"max": True, "none": False}
Q3_TOP_P, Q3_K = 0.8, 3
OVERLAP = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Epochs and data sizes of every part: the course's, or --quick's shrunk ones (None: all)."""
  q2_epochs: int = 40
  q2_train_images: int | None = None
  q2_eval_images: int | None = None
  ablation_epochs: int = 40
  ablation_train_images: int | None = None
  ablation_eval_images: int | None = None
  q3_epochs: int = 20
  q3_train_words: int = 0
  q1_check_trials: int = 64
  q1_capacity_max_patterns: int = 16384
  q1_capacity_dims: tuple[int, ...] = (8, 12, 16, 20, 24, 28, 32)


COURSE = Schedule()
QUICK = Schedule(q2_epochs=2, q2_train_images=1000, q2_eval_images=500, ablation_epochs=1,
                 ablation_train_images=128, ablation_eval_images=64, q3_epochs=4,
                 q3_train_words=2000, q1_check_trials=16, q1_capacity_max_patterns=2048,
                 q1_capacity_dims=(8, 12, 16, 20))


@dataclasses.dataclass(frozen=True)
class Config:
  """What the report runs; the defaults are the course's settings."""
  parts: tuple[str, ...] = PARTS
  seeds: tuple[int, ...] = (42,)
  quick: bool = False
  epoch_mode: str = "auto"
  layout: str = "hwc"
  pixels: str = "correct"            # intel.PIXELS, for Q2 and Q2.4
  ablation_kernel_sizes: tuple[int, ...] = (3, 5, 7)
  ablation_pooling: tuple[str, ...] = ("max", "none")
  q3_hidden_size: int = 128
  q3_beam: int = 5
  overlap: str = "auto"

  def validate(self) -> "Config":
    records.require([
        (len(self.parts) >= 1 and all(p in PARTS for p in self.parts),
         f"--parts={','.join(self.parts)}: use some of {', '.join(PARTS)}"),
        (len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds),
         f"--seeds={','.join(map(str, self.seeds))} must be distinct integers"),
        records.seed_check(self.seeds, "seeds"),
        (self.epoch_mode in trainer.EPOCH_MODES,
         f"--epoch_mode={self.epoch_mode!r} is not one of {', '.join(trainer.EPOCH_MODES)}"),
        (len(self.ablation_kernel_sizes) >= 1
         and all(k >= 1 and k % 2 == 1 for k in self.ablation_kernel_sizes)
         and len(set(self.ablation_kernel_sizes)) == len(self.ablation_kernel_sizes),
         f"--ablation_kernel_sizes={','.join(map(str, self.ablation_kernel_sizes))} must be "
         "positive odd numbers, each given once"),
        (len(set(self.ablation_pooling)) == len(self.ablation_pooling),
         f"--ablation_pooling={','.join(self.ablation_pooling)} names one twice"),
        (len(self.ablation_pooling) >= 1 and all(p in POOLING for p in self.ablation_pooling),
         f"--ablation_pooling={','.join(self.ablation_pooling)}: use max, none or both"),
        (self.q3_hidden_size >= 2 and self.q3_hidden_size % 2 == 0,
         f"--q3_hidden_size={self.q3_hidden_size} must be a positive even number"),
        (0 <= self.q3_beam <= p2g_evaluation.MAX_BEAM, f"--q3_beam={self.q3_beam} must be in "
         f"0..{p2g_evaluation.MAX_BEAM} (0: no beam search)"),
        (self.pixels in intel.PIXELS,
         f"--pixels={self.pixels!r} is not one of {', '.join(intel.PIXELS)}"),
        (self.overlap in OVERLAP, f"--overlap={self.overlap!r} is not one of "
         f"{', '.join(OVERLAP)}"),
    ])
    return self

  @property
  def pixels_suffix(self) -> str:
    """The Q2 and Q2.4 run folders' suffix: none for correct pixels, else -pixels_course."""
    return "" if self.pixels == "correct" else f"-pixels_{self.pixels}"

  @property
  def schedule(self) -> Schedule:
    return QUICK if self.quick else COURSE

  def to_json(self) -> dict:
    return records.to_json(self)
