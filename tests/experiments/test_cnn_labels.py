"""What a CNN run is called in its figures and logs, and how Table 2.1 says what it compares: no
training (the end-to-end tests are in test_cnn.py)."""

from helpers import cnn_summary
from hw2jax.experiments import cnn


def test_the_label_names_every_network_setting_that_differs_from_the_course():
  assert cnn.Config().label() == "vanilla lr=0.01"
  ablation = cnn.Config(model="bn_gap", kernel_size=5, maxpool=False)
  assert ablation.label() == "bn_gap lr=0.01, 5x5 kernels, no max-pool"
  assert cnn.Config(channels=(8, 16, 32), dropout=0.3, l2_decay=1e-4, seed=43).label() == (
      "vanilla lr=0.01, channels 8-16-32, dropout 0.3, L2 0.0001, seed 43")


def _table(*runs, model="vanilla", lr=0.01):
  return cnn.table_2_1([cnn.TableRow(model, lr, list(runs), "curves.png")])


def test_table_2_1_says_our_epochs_beside_the_seeds_40_when_they_differ():
  one = _table(cnn_summary(epochs=1)).splitlines()[0]
  assert "| val acc (1 epoch) | test acc (1 epoch) | seed val acc (40 epochs) | " \
         "seed test acc (40 epochs) |" in one
  mixed = _table(cnn_summary(epochs=1), cnn_summary(seed=43, epochs=2)).splitlines()[0]
  assert "| val acc (1, 2 epochs) |" in mixed
  with_course = _table(cnn_summary(epochs=1), cnn_summary(seed=43, epochs=40)).splitlines()[0]
  assert "| val acc (1, 40 epochs) |" in with_course
  course = _table(cnn_summary(epochs=40)).splitlines()[0]
  assert "| val acc | test acc | seed val acc | seed test acc |" in course


def test_table_2_1_explains_a_dash_only_when_a_seed_column_has_one():
  footnote = "— in a seed column"
  assert footnote not in _table(cnn_summary())
  assert footnote in _table(cnn_summary("bn_gap", 0.05), model="bn_gap", lr=0.05)
