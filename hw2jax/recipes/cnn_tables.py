"""The CNN experiment's tables: the seed report's Table 2.1 (runs beside the seed's numbers, for
sweeps and the report) and Table 2.3 (each family's parameter count beside the course's)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from hw2jax import markdown
from hw2jax.recipes.cnn import SEED_REPORT, CnnRunSummary, Config
from hw2jax.models import registry


@dataclasses.dataclass(frozen=True)
class TableRow:
  """One row of Table 2.1 / 2.4: the runs of one setting (one per seed) and their curves."""
  model: str
  learning_rate: float
  runs: Sequence[CnnRunSummary]
  curves: str | None = None


def model_label(model: str) -> str:
  return registry.get(model).label


def table_2_3(counts: dict[str, int]) -> str:
  """The seed report's Table 2.3: each model's trainable parameters ({model: count}) beside
  the count the course fixes ('—' for a family it has none for)."""
  rows = []
  for model, ours in counts.items():
    family = registry.get(model)
    expected = family.expected_params
    rows.append([family.label, f"{ours:,}"] + (
        [markdown.DASH, markdown.DASH] if expected is None else
        [f"{expected:,}", "yes" if ours == expected else "**NO**"]))
  return markdown.table(["model", "trainable parameters (ours)", "seed report", "equal"], rows)


def pixels_note(pixels: str) -> str:
  """The sentence a table of runs carries about how their images reached the model."""
  if pixels == "course":
    return ("Pixels: the course skeleton's pipeline (--pixels=course): each image flattened, "
            "divided by 256 and reshaped to (3, 48, 48), which scrambles the channels of these "
            "height-width-channel images, as in the homework's own runs.")
  return ("Pixels: as stored, each channel one colour, divided by 256 (the course skeleton's "
          "reshape scrambles them; --pixels=course reproduces it).")


def statuses(runs: Sequence[tuple[int, str]]) -> str:
  """'completed', or each (seed, status) that is not."""
  if all(s == "completed" for _, s in runs):
    return "completed"
  return "; ".join(f"seed {seed}: {s}" for seed, s in runs)


def trained_epochs(run: CnnRunSummary) -> int:
  """The epochs its numbers come from: those trained (a workdir may hold more than a later
  command asked for), or those asked for when it diverged (its status says when)."""
  return run.config.epochs if run.diverged_at else run.epochs_done


def table_2_1(rows: Sequence[TableRow]) -> str:
  """The seed report's Table 2.1: our last-epoch accuracies (mean ± std over seeds) beside the
  seed report's, the test accuracy at the best-validation epoch, status and training time. The
  headers say our epochs beside the seed's 40 when they differ (--quick), so the two are not
  read as like for like; rows of different epochs (a rate trained longer before) get a column
  of their own. The footnote on '—' is there only when a seed cell has one."""
  lines, seedless = [], False
  epochs = sorted({trained_epochs(r) for row in rows for r in row.runs})
  per_row = len(epochs) > 1
  for row in rows:
    seed = (SEED_REPORT.get((row.model, row.learning_rate))       # runs on the Intel data only
            if all(r.seed_report is not None for r in row.runs) else None)
    seedless = seedless or seed is None
    finals = [r.final for r in row.runs]
    course = any(r.config.pixels == "course" for r in row.runs)
    lines.append([
        model_label(row.model) + (", course pixels" if course else ""), f"{row.learning_rate:g}",
        *([", ".join(str(trained_epochs(r)) for r in row.runs)] if per_row else []),
        markdown.mean_std([f.val_accuracy for f in finals]),
        markdown.mean_std([f.test_accuracy for f in finals]),
        markdown.fmt(seed and seed.val_accuracy), markdown.fmt(seed and seed.test_accuracy),
        markdown.mean_std([r.best_val and r.best_val.test_accuracy for r in row.runs]),
        statuses([(r.config.seed, r.status) for r in row.runs]),
        markdown.mean_std([r.train_seconds_total for r in row.runs], 1) + " s",
        f"[curves]({row.curves})" if row.curves else markdown.DASH])
  differ = epochs not in ([], [Config.epochs])             # the seed's: the course's 40
  ours = f" ({epochs[0]} epoch{'s' * (epochs != [1])})" if differ and not per_row else ""
  theirs = f" ({Config.epochs} epochs)" if differ else ""
  table = markdown.table(["model", "lr", *(["epochs"] if per_row else []),
                          f"val acc{ours}", f"test acc{ours}",
                          f"seed val acc{theirs}", f"seed test acc{theirs}",
                          "test acc at best val", "status", "train time", "curves"], lines)
  return table + ("\n— in a seed column: the seed report has no run with these settings.\n"
                  if seedless else "")
