"""What a CNN run is called in its figures and logs, and how Table 2.1 says what it compares: no
training (the end-to-end tests are in test_cnn.py)."""

from helpers import cnn_summary
from hw2jax.recipes import cnn, cnn_tables


def test_the_label_names_every_network_setting_that_differs_from_the_course():
  assert cnn.Config().label() == "vanilla lr=0.01"
  ablation = cnn.Config(model="bn_gap", kernel_size=5, maxpool=False)
  assert ablation.label() == "bn_gap lr=0.01, 5x5 kernels, no max-pool"
  assert cnn.Config(channels=(8, 16, 32), dropout=0.3, l2_decay=1e-4, seed=43).label() == (
      "vanilla lr=0.01, channels 8-16-32, dropout 0.3, L2 0.0001, seed 43")


def _table(*runs, model="vanilla", lr=0.01):
  return cnn_tables.table_2_1([cnn_tables.TableRow(model, lr, list(runs), "curves.png")])


def test_table_2_1_says_our_epochs_beside_the_seeds_40_when_they_differ():
  one = _table(cnn_summary(epochs=1)).splitlines()[0]
  assert "| val acc (1 epoch) | test acc (1 epoch) | seed val acc (40 epochs) | " \
         "seed test acc (40 epochs) |" in one
  course = _table(cnn_summary(epochs=40)).splitlines()[0]
  assert "| val acc | test acc | seed val acc | seed test acc |" in course


def test_table_2_1_gives_each_row_its_epochs_when_they_differ():
  """`--lr=0.1,0.01 --epochs=1` after lr 0.01 trained 2 epochs: that row's numbers are of epoch
  2, so the table says so per row instead of heading every row '(1 epoch)'."""
  table = cnn_tables.table_2_1([cnn_tables.TableRow("vanilla", 0.1, [cnn_summary(lr=0.1, epochs=1)]),
                         cnn_tables.TableRow("vanilla", 0.01, [cnn_summary(epochs=1, trained=2)])])
  head, _, fast, slow = table.splitlines()[:4]
  assert head.startswith("| model | lr | epochs | val acc | test acc | seed val acc (40 epochs) |")
  assert fast.startswith("| vanilla | 0.1 | 1 |") and slow.startswith("| vanilla | 0.01 | 2 |")
  seeds = _table(cnn_summary(epochs=1), cnn_summary(seed=43, epochs=40)).splitlines()
  assert "| epochs | val acc | test acc |" in seeds[0] and "| 0.01 | 1, 40 |" in seeds[2]


def test_table_2_1_explains_a_dash_only_when_a_seed_column_has_one():
  footnote = "— in a seed column"
  assert footnote not in _table(cnn_summary())
  assert footnote in _table(cnn_summary("bn_gap", 0.05), model="bn_gap", lr=0.05)


def test_table_2_1_sets_no_seed_numbers_beside_runs_on_another_dataset():
  """The seed report's numbers are the Intel data's: a run on other data (its summary holds no
  seed_report) gets dashes in the seed columns, not the Intel run's accuracies."""
  import dataclasses
  other = dataclasses.replace(cnn_summary(), seed_report=None)
  row = _table(other).splitlines()[2]
  assert row.startswith("| vanilla | 0.01 | 0.7000 | 0.6800 | — | — |"), row
  assert "| 0.7123 | 0.6907 |" in _table(cnn_summary()).splitlines()[2]
