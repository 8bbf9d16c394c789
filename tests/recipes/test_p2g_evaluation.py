"""Spelling a split with a trained model: options checked up front, scores averaged the course's
way, one TSV row per test word with a column per decoder, attention heat-maps when there is
attention."""

import jax
import pytest

from helpers import p2g_pairs
from hw2jax.data import phonemes
from hw2jax.errors import UserError
from hw2jax.recipes import p2g_evaluation
from hw2jax.models import seq2seq
from hw2jax.train import optimizer as optimizer_lib, trainer as trainer_lib


def test_decoding_options_are_checked_before_any_model_runs():
  assert p2g_evaluation.Decoding(top_p=1.0, k=1, beam=0).validate()
  with pytest.raises(UserError, match=r"--topp=0.0 must be in \(0, 1\]"):
    p2g_evaluation.Decoding(top_p=0.0).validate()
  with pytest.raises(UserError, match="--k=0 must be in 1..64"):
    p2g_evaluation.Decoding(k=0).validate()
  with pytest.raises(UserError, match="--beam=-1 must be in 0..64"):
    p2g_evaluation.Decoding(beam=-1).validate()


def test_sampled_scores_average_over_every_sample_and_wer_at_k_takes_the_best():
  samples = [["cat", "cot"], ["dgo", "dgo"]]
  got = p2g_evaluation.sample_scores(samples, ["cat", "dog"], top_p=0.9, k=2)
  assert got.wer == pytest.approx(3 / 4)            # 3 of the 4 samples are wrong
  assert got.wer_at_k == pytest.approx(1 / 2)       # 'dog' has no right sample
  assert (got.top_p, got.k) == (0.9, 2)
  assert p2g_evaluation.scores(["cat", "dgo"], ["cat", "dog"]).wer == pytest.approx(1 / 2)


@pytest.fixture(scope="module")
def data():
  pairs = [(tuple(p.split()), w) for p, w in p2g_pairs(18, seed=3, max_len=5)]
  return phonemes.P2GData(pairs[:10], pairs[10:14], pairs[14:], source="test")


def test_valid_and_test_share_one_width_and_the_training_vocabulary(data):
  splits = p2g_evaluation.evaluation_splits(data)
  assert splits["valid"].src.shape[1] == splits["test"].src.shape[1]
  assert splits["test"].golds == [w for _, w in data.test]
  assert list(splits["test"].src_len) == [len(p) for p, _ in data.test]


@pytest.mark.parametrize("attention", [True, False])
def test_decode_test_writes_a_column_per_decoder_and_the_heat_maps(tmp_path, data, attention):
  model = seq2seq.Seq2Seq(len(data.src_vocab), len(data.tgt_vocab), hidden_size=8,
                          attention=attention, dropout=0.0)
  test = p2g_evaluation.evaluation_splits(data)["test"]
  example = (test.src[:1], test.src_len[:1], test.src[:1, :2] * 0)
  state = trainer_lib.create_train_state(model, example, optimizer_lib.make_optimizer("adam", 0.01),
                                         0)
  decoders = p2g_evaluation.Decoders(model, data.tgt_vocab, batch_size=3, max_len=6)
  options = p2g_evaluation.Decoding(top_p=0.9, k=2, beam=2, max_len=6)
  got = p2g_evaluation.decode_test(options, decoders, state.params, test, seed=42, workdir=tmp_path,
                                     log=lambda line: None)
  assert list(got) == ["greedy", "beam2", "nucleus"]
  rows = (tmp_path / p2g_evaluation.PREDICTIONS).read_text().splitlines()
  assert rows[0].split("\t") == ["phonemes", "gold", "greedy", "beam2", "sample1", "sample2"]
  assert len(rows) == 1 + len(data.test)
  assert rows[1].split("\t")[:2] == [" ".join(data.test[0][0]), data.test[0][1]]
  assert (tmp_path / p2g_evaluation.ATTENTION_PLOT).exists() == attention
  again = p2g_evaluation.decode_test(options, decoders, state.params, test, seed=42,
                                     workdir=tmp_path, log=lambda line: None)
  assert again == got                                # the sampling key is fixed by the seed
  assert not jax.numpy.array_equal(p2g_evaluation.sampling_key(42), p2g_evaluation.sampling_key(43))
