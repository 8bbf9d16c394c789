"""The Hopfield run: one flat config of every part's knobs, validated by each part; a new run
moves the previous outputs aside; summary.json reads back typed."""

import dataclasses

import pytest

from hw2jax.errors import UserError
from hw2jax.recipes.hopfield import run as hopfield
from hw2jax.train import run as run_lib


@pytest.mark.parametrize("field, value, message", [
    ("betas", (0.1, -1.0), "--betas=0.1,-1 must be positive"),
    ("parts", ("check", "plots"), "--parts=check,plots"),
    ("queries", ("blur",), "--queries=blur"),
    ("num_show", 99, "--num_show=99"),
    ("capacity_dims", (1,), "--capacity_dims=1"),
])
def test_config_rejects_bad_values(field, value, message):
  with pytest.raises(UserError, match=message):
    dataclasses.replace(hopfield.Config(), **{field: value}).validate()


def test_a_new_run_moves_the_previous_outputs_aside(tmp_path):
  (tmp_path / "summary.json").write_text("{}")
  (tmp_path / "capacity.png").write_bytes(b"png")
  (tmp_path / "notes.txt").write_text("mine")
  archived = run_lib.archive(tmp_path, hopfield.RUN_FILES)
  assert sorted(p.name for p in archived.iterdir()) == ["capacity.png", "summary.json"]
  assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "summary.json").exists()
  assert run_lib.archive(tmp_path, hopfield.RUN_FILES) is None



def test_the_flat_config_gives_each_part_its_own():
  config = hopfield.Config(seed=3, recall_tol=0.2, check_trials=5, capacity_dim=12)
  assert config.claims().check_trials == 5 and config.claims().seed == 3
  assert config.retrieval().recall_tol == 0.2 and config.capacity().recall_tol == 0.2
  assert config.capacity().capacity_dim == 12
  assert set(config.to_json()) == {f.name for f in dataclasses.fields(hopfield.Config)}


def test_a_summary_survives_json(tmp_path):
  summary = hopfield.run(hopfield.Config(parts=("check",), check_trials=2), tmp_path,
                         log=lambda line: None)
  again = hopfield.HopfieldSummary.from_json(summary.to_json())
  assert again == summary and again.check.all_ok and again.retrieval is None
  assert "retrieval" not in summary.to_json()
