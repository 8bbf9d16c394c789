"""The learning-rate sweep of the CNN experiment (Table 2.1): several rates on one compiled
program, each trained (or read back) in the folder a single run of that rate uses."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Sequence

from hw2jax import files
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, cnn_tables
from hw2jax.train import run as run_lib


def run_configs(config: cnn.Config, learning_rates: Sequence[float]) -> dict[float, cnn.Config]:
  """Each rate's run settings, validated; a rate given twice is refused."""
  if len(set(learning_rates)) != len(learning_rates):
    raise UserError(f"--lr={','.join(f'{lr!r}' for lr in learning_rates)} repeats a learning "
                    "rate; give each rate once")
  return {lr: dataclasses.replace(config, learning_rate=lr).validate() for lr in learning_rates}


def run_dirs(config: cnn.Config, learning_rates: Sequence[float], workdir: str | Path | None,
             root: str | Path = "runs/cnn") -> dict[float, Path]:
  """Where each learning rate's run lives (`run_configs` checks the rates first). Without a
  workdir, the folder a single `--lr` run of that rate uses (<root>/<run_name>), so a sweep and
  single runs share their runs and each configuration trains once whatever order the commands
  come in; with one, <workdir>/lr_<lr>. Two rates that would name one folder are refused
  before anything trains."""
  dirs: dict[float, Path] = {}
  for lr, run in run_configs(config, learning_rates).items():
    path = (Path(root) / run.run_name() if workdir is None else
            Path(workdir) / files.path_component(f"lr_{lr:g}"))
    same = [other for other, p in dirs.items() if p == path]
    if same:
      raise UserError(f"--lr rates {same[0]!r} and {lr!r} both name the folder {path} (a "
                      "folder names a rate by its first 6 digits); give rates that differ there")
    dirs[lr] = path
  return dirs


def sweep(config: cnn.Config, learning_rates: Sequence[float], data: ImageData,
          workdir: str | Path, *, dirs: dict[float, Path] | None = None, fresh: bool = False,
          log: Callable[[str], None] = print, progress: bool = True
          ) -> list[cnn.CnnRunSummary]:
  """One run per learning rate (one compiled program for all) in `dirs` (default
  <workdir>/lr_<lr>, see `run_dirs`), then Table 2.1 as markdown in <workdir>/table_2_1.md and
  the summaries in <workdir>/sweep.json. A run already finished (by this sweep or by a single
  run in the same folder) is read back, not trained again."""
  if dirs is None:
    dirs = run_dirs(config, learning_rates, workdir)      # (which checks every rate)
  else:
    run_configs(config, learning_rates)
  data = config.training_data(data)               # (the same images for every rate)
  config.check_data(data)                         # (the batch size, the same for every rate)
  if (Path(workdir) / "checkpoints").is_dir():
    raise UserError(f"{workdir} holds a single run (its checkpoints/); a sweep writes a folder "
                    "per rate and Table 2.1 into its --workdir: give another folder")
  if not fresh:                                   # every rate's folder, before the first trains
    for lr, config_lr in run_configs(config, learning_rates).items():
      if dirs[lr].is_dir():
        run_lib.check_same_run(dirs[lr], cnn.card(config_lr, data),
                               added_settings=cnn.ADDED_SETTINGS)
  with run_lib.locked(workdir) as workdir:
    return _sweep(config, learning_rates, data, workdir, dirs, fresh=fresh, log=log,
                  progress=progress)


def _sweep(config, learning_rates, data, workdir, dirs, *, fresh, log, progress
           ) -> list[cnn.CnnRunSummary]:
  if fresh:
    archived = run_lib.archive(workdir, (cnn.TABLE, cnn.SWEEP, run_lib.CONFIG))
    if archived:
      log(f"--fresh: moved the previous sweep's table to {archived}")
  trainer = cnn.make_trainer(config)
  arrays = cnn.device_data(data, trainer, config.pixels)
  summaries = []
  for lr in learning_rates:
    run_config = dataclasses.replace(config, learning_rate=lr)
    log(f"== {run_config.label()}: {dirs[lr]} ==")
    summaries.append(cnn.train_and_evaluate(run_config, data, dirs[lr], fresh=fresh,
                                            arrays=arrays, trainer=trainer, log=log,
                                            prefix=f"[lr {lr:g}] ", progress=progress))
  curves = {lr: Path(os.path.relpath(d / cnn.CURVES, workdir)).as_posix()
            for lr, d in dirs.items()}
  table = cnn_tables.table_2_1([cnn_tables.TableRow(s.config.model, s.config.learning_rate, [s],
                                      curves[s.config.learning_rate]) for s in summaries])
  files.write_file(workdir / cnn.TABLE, table)
  files.write_json(workdir / cnn.SWEEP, [s.to_json() for s in summaries])
  log(table)
  return summaries
