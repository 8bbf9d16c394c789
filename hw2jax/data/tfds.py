"""TFDS builders for the Intel images and the P2G TSVs, stored as array_record (no TensorFlow).

  intel48  Intel Image Classification at 48x48: image uint8 (48, 48, 3) stored raw, label
           ClassLabel of the 6 classes; splits train / val / test exactly as `sources.load_intel` gives
           them (the course npz as is; Kaggle's zip or folder with its seeded 10% validation).
  p2g      The course's phoneme-to-grapheme TSVs: phonemes (sequence of strings), spelling
           (string); splits train / valid / test, in file order.

Both are manual-download datasets: prepared once from a source on disk into
<data_dir>/<name>/1.0.0/ (data_dir: --tfds_data_dir, else $TFDS_DATA_DIR, else
~/tensorflow_datasets). The source is --tfds_manual_dir (Intel: the npz, the Kaggle zip or its
extracted folder; P2G: the folder with train.tsv, valid.tsv, test.tsv), else TFDS's convention
<data_dir>/downloads/manual/. Decoding reuses `hw2jax.data.intel` and `hw2jax.data.phonemes`.
Preparing and reading need only tensorflow-datasets and array-record (`pip install
'hw2jax[tfds]'`); the prepared data is a standard TFDS dataset:

  import tensorflow_datasets as tfds
  import hw2jax.data.tfds  # registers intel48 and p2g
  train = tfds.data_source("intel48", data_dir=...)["train"]  # random access, numpy records
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from hw2jax.data import TFDS_PREFIX, intel, intel_kaggle, phonemes, tfds_name
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError

try:
  import tensorflow_datasets as tfds
except ImportError:  # pragma: no cover - exercised by a test that hides the package
  raise UserError("tfds: data paths need tensorflow-datasets and array-record; install them with "
                  "pip install 'hw2jax[tfds]'") from None

VERSION = "1.0.0"
FILE_FORMAT = "array_record"

# The progress bars of preparation would clutter the experiments' output; we log one line before
# and one after instead.
tfds.disable_progress_bar()


def _quiet(message: str) -> None:
  del message


class _LocalInfo(tfds.core.DatasetInfo):
  """DatasetInfo of a dataset that exists only where it is prepared: TFDS would ask its GCS
  bucket for pre-computed info (a network call) and leave an empty temp folder behind each
  time a builder of an unprepared dataset is made."""

  def initialize_from_bucket(self) -> None:
    pass


class _ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Common part: array_record files, no shuffling, a source path instead of downloads."""

  VERSION = tfds.core.Version(VERSION)
  # The kind of source, for messages.
  SOURCE_HELP = ""

  def __init__(self, *, source: str | os.PathLike | None = None,
               log: Callable[[str], None] | None = None, **kwargs):
    kwargs.setdefault("file_format", FILE_FORMAT)
    super().__init__(**kwargs)
    self._source = None if source is None else Path(source)
    self._log = log or _quiet

  def _split_generators(self, dl_manager):
    del dl_manager  # manual data: the source comes from the constructor
    if self._source is None:
      raise UserError(f"preparing {self.name} needs its source ({self.SOURCE_HELP}); pass "
                      f"--tfds_manual_dir=...")
    splits, source = self._read_source(self.resolve_source(self._source))
    self.info.metadata.update(source)
    # TFDS cannot write an empty split; a missing split reads back empty.
    return {name: self._generate_examples(rows) for name, rows in splits.items() if len(rows)}

  def _generate_examples(self, rows) -> Iterator[tuple[int, dict]]:
    for i, row in enumerate(rows):
      yield i, self._example(row)

  def _log_download_bytes(self) -> None:   # replaces TFDS's coloured banner
    self._log(f"tfds: preparing {self.name} {self.version} in {self.data_dir} from "
              f"{self._source} (once)")

  def _log_download_done(self) -> None:
    sizes = ", ".join(f"{name} {split.num_examples}" for name, split in self.info.splits.items())
    self._log(f"tfds: prepared {self.name} {self.version}: {sizes}")

  def _dataset_info(self, description: str, features: dict, supervised_keys: tuple,
                    homepage: str | None = None):
    """Both builders' DatasetInfo: unshuffled (file order), with metadata for the source."""
    return _LocalInfo(
        builder=self, description=description,
        features=tfds.features.FeaturesDict(features), supervised_keys=supervised_keys,
        homepage=homepage, disable_shuffling=True, metadata=tfds.core.MetadataDict())

  @classmethod
  def resolve_source(cls, path: Path) -> Path:
    """The source file or folder that `path` names; UserError if it is not one."""
    raise NotImplementedError

  def _read_source(self, path: Path) -> tuple[Mapping[str, object], dict]:
    """{split: rows} and the metadata to store (source description, ...)."""
    raise NotImplementedError

  def _example(self, row) -> dict:
    raise NotImplementedError


class Intel48(_ManualBuilder):
  """Intel Image Classification at 48x48 RGB, 6 classes, from the course npz or Kaggle's data."""

  RELEASE_NOTES = {VERSION: "Splits and pixels of hw2jax.data.sources.load_intel."}
  SOURCE_HELP = "the Intel npz, the Kaggle zip or its extracted folder"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Get the course file intel_landscapes.v2.npz, or Kaggle's "
      "puneet6060/intel-image-classification (the zip or its extracted folder), and pass it as "
      "--tfds_manual_dir (or put it in <data_dir>/downloads/manual/).")

  def __init__(self, *, layout: str = "hwc", **kwargs):
    super().__init__(**kwargs)
    self._layout = layout

  def _info(self):
    return self._dataset_info(
        "Intel Image Classification (Kaggle puneet6060/intel-image-classification) at 48x48 "
        "RGB, uint8 pixels, 6 classes; the IST Deep Learning 2024/25 homework 2 splits.",
        {"image": tfds.features.Tensor(shape=(intel.IMAGE_SIZE, intel.IMAGE_SIZE,
                                              intel.CHANNELS), dtype=np.uint8),
         "label": tfds.features.ClassLabel(names=intel.CLASSES)},
        ("image", "label"),
        homepage="https://www.kaggle.com/datasets/puneet6060/intel-image-classification")

  @classmethod
  def resolve_source(cls, path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
      raise UserError(f"--tfds_manual_dir {path} does not exist; give {cls.SOURCE_HELP}")
    # The npz, zip or Kaggle folder that `path` is or holds (intel's own discovery rules); the
    # data is prepared once, so of several the user names one.
    found = intel.resolve(path.resolve(), origin="--tfds_manual_dir")
    if len(found) > 1:
      raise UserError(f"--tfds_manual_dir {path} holds several Intel sources "
                      f"({', '.join(p.name for p in found)}); give the one to prepare")
    return found[0]

  def _read_source(self, path):
    if path.is_file() and path.suffix.lower() == ".npz":
      data = intel.load_npz(path, layout=self._layout)
    else:
      data = intel_kaggle.load_kaggle(path, log=self._log)
    splits = {name: list(zip(*data.split(name))) for name in intel.SPLITS}
    return splits, {"source": data.source, "source_path": str(path), "skipped": data.skipped}

  def _example(self, row):
    image, label = row
    return {"image": image, "label": int(label)}


class P2g(_ManualBuilder):
  """The course's phoneme-to-grapheme pairs (English WikiPron, IPA)."""

  RELEASE_NOTES = {VERSION: "Pairs of hw2jax.data.phonemes.load_tsv_folder, in file order."}
  SOURCE_HELP = "a folder with " + ", ".join(f"{s}.tsv" for s in phonemes.SPLITS)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the course's train.tsv, valid.tsv and test.tsv (one 'phonemes<TAB>spelling' pair a "
      "line) in a folder and pass it as --tfds_manual_dir (or use <data_dir>/downloads/manual/).")

  def _info(self):
    return self._dataset_info(
        "Phoneme-to-grapheme pairs: space-separated IPA phoneme tokens and the spelling (case "
        "and accents kept); IST Deep Learning 2024/25 homework 2.",
        {"phonemes": tfds.features.Sequence(tfds.features.Text()),
         "spelling": tfds.features.Text()},
        ("phonemes", "spelling"))

  @classmethod
  def resolve_source(cls, path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
      problem = "is not a folder" if path.exists() else "does not exist"
      raise UserError(f"--tfds_manual_dir {path} {problem}; give {cls.SOURCE_HELP}")
    return path.resolve()

  def _read_source(self, path):
    data = phonemes.load_tsv_folder(path)
    splits = {name: data.split(name) for name in phonemes.SPLITS}
    return splits, {"source": data.source, "source_path": str(path)}

  def _example(self, row):
    tokens, spelling = row
    return {"phonemes": list(tokens), "spelling": spelling}


BUILDERS = {"intel48": Intel48, "p2g": P2g}
_KIND = {"intel48": "Intel images", "p2g": "phoneme-to-grapheme TSVs"}


# ----------------------------------------------------------------------------------------------
# Preparing and reading


def data_dir_root(data_dir: str | os.PathLike | None = None) -> Path:
  """--tfds_data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir:
    return Path(data_dir).expanduser().resolve()
  return Path(os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR).expanduser()


def builder(name: str, data_dir: str | os.PathLike | None = None, *,
            manual_dir: str | os.PathLike | None = None, want: str | None = None,
            log: Callable[[str], None] = print, **kwargs) -> _ManualBuilder:
  """The prepared builder of `name` ('intel48' or 'p2g', optionally with the 'tfds:' prefix),
  preparing it first from `manual_dir` (or <data_dir>/downloads/manual/) if it is not yet.

  `want` restricts the name to one dataset (a CLI that needs Intel images asks for 'intel48').
  """
  name = tfds_name(name) or name
  if name not in BUILDERS:
    known = ", ".join(f"{TFDS_PREFIX}{n} ({k})" for n, k in _KIND.items())
    raise UserError(f"unknown TFDS dataset {TFDS_PREFIX}{name}; hw2jax builds {known}")
  if want is not None and name != want:
    raise UserError(f"{TFDS_PREFIX}{name} holds {_KIND[name]}; this needs {TFDS_PREFIX}{want} "
                    f"({_KIND[want]})")
  cls = BUILDERS[name]
  root = data_dir_root(data_dir)
  prepared = (root / name / VERSION / "dataset_info.json").is_file()
  default_manual = root / "downloads" / "manual"
  if manual_dir:
    source = cls.resolve_source(Path(manual_dir))
  elif not prepared and default_manual.is_dir() and any(default_manual.iterdir()):
    source = cls.resolve_source(default_manual)
  else:
    source = None
  if not prepared:
    if source is None:
      raise UserError(f"{TFDS_PREFIX}{name} is not prepared in {root}; prepare it once by adding "
                      f"--tfds_manual_dir=<{cls.SOURCE_HELP}> (or put it in {default_manual}/)")
    b = cls(data_dir=root, source=source, log=log, **kwargs)
    b.download_and_prepare()
    return b
  b = cls(data_dir=root, log=log, **kwargs)
  if source is not None and b.info.metadata.get("source_path") != str(source):
    log(f"tfds: {name} in {root} was prepared from {b.info.metadata.get('source_path')}; "
        f"ignoring --tfds_manual_dir={source} (delete {b.data_dir} to prepare it again)")
  return b


def _records(b: _ManualBuilder, split: str) -> list[dict]:
  if split not in b.info.splits:
    return []
  source = b.as_data_source(split=split)
  return source.__getitems__(range(len(source)))


def _description(b: _ManualBuilder) -> str:
  return (f"tfds {b.name} {b.version} in {b.data_dir_root} "
          f"(prepared from {b.info.metadata.get('source', '?')})")


def load_intel_tfds(name: str = "intel48", data_dir: str | os.PathLike | None = None, *,
                    manual_dir: str | os.PathLike | None = None, layout: str = "hwc",
                    log: Callable[[str], None] = print) -> ImageData:
  """The Intel data of a (prepared, or prepared now) TFDS dataset, as `load_intel` returns it."""
  b = builder(name, data_dir, manual_dir=manual_dir, want="intel48", log=log, layout=layout)
  arrays = {}
  for split in intel.SPLITS:
    rows = _records(b, split)
    shape = (0, intel.IMAGE_SIZE, intel.IMAGE_SIZE, intel.CHANNELS)
    arrays[f"{split}_images"] = (np.stack([r["image"] for r in rows]) if rows
                                 else np.zeros(shape, np.uint8))
    arrays[f"{split}_labels"] = np.array([r["label"] for r in rows], np.int32)
  return ImageData(**arrays, source=_description(b), classes=intel.CLASSES,
                   skipped=int(b.info.metadata.get("skipped", 0)), name="intel")


def load_p2g_tfds(name: str = "p2g", data_dir: str | os.PathLike | None = None, *,
                  manual_dir: str | os.PathLike | None = None,
                  log: Callable[[str], None] = print) -> phonemes.P2GData:
  """The pairs of a (prepared, or prepared now) TFDS dataset, as `load_p2g` returns them."""
  b = builder(name, data_dir, manual_dir=manual_dir, want="p2g", log=log)
  splits = {}
  for split in phonemes.SPLITS:
    splits[split] = [(tuple(t.decode("utf-8") for t in r["phonemes"]),
                      r["spelling"].decode("utf-8")) for r in _records(b, split)]
  return phonemes.P2GData(**splits, source=_description(b))
