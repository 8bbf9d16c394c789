"""Where the data comes from: a path the user gave, the usual places, a Kaggle notebook's inputs,
a download, or a TFDS dataset (`tfds:<name>`), for both datasets. The layer's one entry point:
`load_intel` and `load_p2g` (the readers in `intel`, `phonemes` and `tfds` know no discovery).

Errors name the source as the user gave it: `origin` is how the caller names the path (e.g.
'--data_path', '--intel_data_path', '$HW2JAX_DATA').
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Mapping

from hw2jax.data import class_folders, intel, intel_kaggle, phonemes, tfds_name
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError

KAGGLE_DATASET = "puneet6060/intel-image-classification"
# Where Kaggle notebooks mount attached datasets ($HW2JAX_KAGGLE_INPUT overrides it). Kaggle has
# moved them before (/kaggle/input/<slug>, /kaggle/input/datasets/<owner>/<slug>), so the
# Kaggle layout is searched for a few levels deep rather than at one fixed path.
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_INPUT_DEPTH = 3
DOWNLOAD_MODES = ("auto", "never")
DOWNLOAD_SIZE = "about 360 MB, 24,335 JPEGs"
KAGGLE_PAGE = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"
CAUSE_CHARS = 100               # an exception's message longer than this is shortened


# ----------------------------------------------------------------------------------------------
# Intel images


def discover_intel(data_path: str | os.PathLike | None = None, *,
                   environ: Mapping[str, str] | None = None,
                   cwd: str | os.PathLike | None = None, download: str = "never",
                   origin: str = "--data_path", log: Callable[[str], None] = print,
                   splits: tuple[str, ...] = intel.SPLITS) -> Path:
  """Where the Intel data is: `data_path`, else $HW2JAX_DATA, ./data/, a Kaggle notebook's
  input folder, else (with `download='auto'`) a download of the public Kaggle dataset with
  kagglehub (cached by kagglehub: a second call finds it at once). A folder holding several
  sources gives the first complete one for `splits` (see `choose`).

  Returns a path to an npz file, a Kaggle zip or a folder in Kaggle's layout.
  """
  if download not in DOWNLOAD_MODES:
    raise UserError(f"download={download!r} is not one of {', '.join(DOWNLOAD_MODES)}")
  environ = os.environ if environ is None else environ
  cwd = Path.cwd() if cwd is None else Path(cwd)
  if data_path:
    path = Path(data_path).expanduser()
    if not path.exists():
      raise UserError(f"{origin} {path} does not exist; give an Intel npz, the Kaggle zip or "
                      "its extracted folder, or another dataset's npz or class folders")
    if path.is_dir() and not intel.candidates(path) and class_folders.is_class_folders(path):
      return path                                  # another dataset's class folders
    return choose(intel.resolve(path, origin=origin), str(path), origin, splits, environ, log)
  tried = []                    # the places searched, each with what was wrong only if useful
  if environ.get("HW2JAX_DATA"):
    path = Path(environ["HW2JAX_DATA"]).expanduser()
    if not path.exists():
      raise UserError(f"$HW2JAX_DATA={path} does not exist; fix it or unset it")
    return choose(intel.resolve(path, origin="$HW2JAX_DATA"), str(path), origin, splits,
                  environ, log)
  tried.append("$HW2JAX_DATA (unset)")
  local = cwd / "data"
  found = intel.candidates(local) if local.is_dir() else []
  if found:
    return choose(found, "./data/", origin, splits, environ, log)
  tried.append("./data/ (no Intel data inside)" if local.is_dir() else "./data/")
  kaggle = Path(environ.get("HW2JAX_KAGGLE_INPUT") or KAGGLE_INPUT)
  found = find_kaggle_layout(kaggle)
  if found is not None:
    return found
  tried.append(f"{kaggle} (nothing in Kaggle's layout)" if kaggle.is_dir() else str(kaggle))
  where = f"no Intel image data found in {', '.join(tried[:-1])} or {tried[-1]}"
  if download == "auto":
    return download_kaggle(where, environ, log, origin=origin)
  raise UserError(f"{where}; let the CLIs download it with --download=auto (needs internet), "
                  f"or {manual_hint(origin)}")


def choose(candidates: list[Path], where: str, origin: str, splits: tuple[str, ...],
           environ: Mapping[str, str], log: Callable[[str], None]) -> Path:
  """One source of `candidates` (found in `where`, preferred first): the only one, or the first
  that is complete for `splits` (read to find out; Kaggle's are converted once and cached), with
  a line naming the others. None complete: one line naming each and what it lacks."""
  if len(candidates) == 1:
    return candidates[0]
  problems = []
  for path in candidates:
    try:
      problem = intel.split_problem(_read(path, environ=environ, log=_quiet), splits)
    except UserError as e:
      problem = str(e)
    if problem is None:
      others = ", ".join(p.name for p in candidates if p != path)
      log(f"intel data: {where} holds {len(candidates)} candidates; using {path.name}, the first "
          f"complete one (also there: {others}; pick one with {origin}=<path>)")
      return path
    problems.append(f"{path.name} ({problem})")
  raise UserError(f"{where} holds {len(candidates)} Intel candidates and none is complete: "
                  f"{'; '.join(problems)}; give a complete one with {origin}=<path>")


def _quiet(line: str) -> None:
  del line


def _read(path: Path, *, layout: str = "hwc", cache_dir: str | os.PathLike | None = None,
          log: Callable[[str], None] = print, environ: Mapping[str, str] | None = None
          ) -> ImageData:
  """The data at `path`: an npz (the Intel data's or another dataset's), Kaggle's Intel layout
  (zip or folder), or another dataset's class folders."""
  if path.is_file() and path.suffix.lower() == ".npz":
    return intel.load_npz(path, layout=layout)
  if path.is_dir() and not (path / "seg_train").is_dir():
    return class_folders.load_class_folders(path, log=log)
  return intel_kaggle.load_kaggle(path, cache_dir=cache_dir, log=log, environ=environ)


def manual_hint(origin: str) -> str:
  """What a user without the data (or a network) does next, with the flag that takes it."""
  return (f"download it by hand from {KAGGLE_PAGE} and pass {origin}=<the zip> or put it in "
          "./data/")


def short_cause(e: BaseException, limit: int = CAUSE_CHARS) -> str:
  """An exception as a short clause for a one-line message: its class and what went wrong.
  requests/urllib3 wrap the cause in a long repr ('HTTPSConnectionPool(...): Max retries
  exceeded ... (Caused by NameResolutionError("...: Failed to resolve 'api.kaggle.com' ...")'),
  which becomes 'ConnectionError: could not resolve api.kaggle.com, no internet?'. Another long
  message is cut at a word boundary, never inside a word or a name."""
  name = type(e).__name__
  text = " ".join(str(e).split())
  unresolved = re.search(r"Failed to resolve '([^']+)'", text)
  if unresolved:
    return f"{name}: could not resolve {unresolved.group(1)}, no internet?"
  inner, host = re.findall(r"Caused by (\w+)\(", text), re.search(r"host='([^']+)'", text)
  if inner and host:
    return f"{name}: {inner[-1]} reaching {host.group(1)}"
  if len(text) > limit:
    text = text[:limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:([{") + " ..."
  return f"{name}: {text}" if text else name


def find_kaggle_layout(root: Path, depth: int = KAGGLE_INPUT_DEPTH) -> Path | None:
  """The first folder at most `depth` levels below `root` (breadth first, names sorted) that
  holds Kaggle's seg_train/ folder; None when there is none."""
  level = [root] if root.is_dir() else []
  for _ in range(depth + 1):
    below = []
    for folder in level:
      if (folder / "seg_train").is_dir():
        return folder
      try:
        below += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
      except OSError:           # unreadable folders of a notebook's inputs are not ours
        continue
    level = below
  return None


def download_kaggle(where: str, environ: Mapping[str, str], log: Callable[[str], None], *,
                    origin: str = "--data_path") -> Path:
  """Downloads the public Kaggle dataset with kagglehub (no account or token needed) and returns
  the folder in Kaggle's layout inside what it returns. kagglehub caches completed downloads
  only, so a partial download is never mistaken for data (the converter still counts and
  validates every image). `where` says what discovery found (nothing); a failure is one line
  with it, the cause, and what to do instead."""
  cache = environ.get("KAGGLEHUB_CACHE") or "~/.cache/kagglehub"
  try:
    import kagglehub
  except ImportError:
    raise UserError(f"{where}, and kagglehub, which would download it, is not installed (pip "
                    f"install kagglehub); or {manual_hint(origin)}") from None
  log(f"intel data: downloading the Kaggle dataset {KAGGLE_DATASET} ({DOWNLOAD_SIZE}) with "
      f"kagglehub into its cache {cache} ($KAGGLEHUB_CACHE)")
  try:
    path = Path(kagglehub.dataset_download(KAGGLE_DATASET))
  except Exception as e:  # network, DNS, HTTP, disk: whatever it is, the user's next step is ours
    raise UserError(f"{where}, and downloading it with kagglehub failed ({short_cause(e)}); "
                    f"{manual_hint(origin)}") from None
  found = find_kaggle_layout(path)
  if found is None:
    raise UserError(f"kagglehub returned {path}, which holds no seg_train/ folder in Kaggle's "
                    f"layout; {manual_hint(origin)}")
  log(f"intel data: downloaded to {found}")
  return found


def load_intel(data_path: str | os.PathLike | None = None, *, layout: str = "hwc",
               cache_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print,
               environ: Mapping[str, str] | None = None,
               tfds_data_dir: str | os.PathLike | None = None,
               tfds_manual_dir: str | os.PathLike | None = None, download: str = "never",
               origin: str = "--data_path", splits: tuple[str, ...] = intel.SPLITS
               ) -> ImageData:
  """Finds (see `discover_intel`; `download='auto'` may fetch it) and loads the Intel data into
  numpy arrays, with every split the caller uses checked (`intel.check_splits`).

  A `data_path` (or $HW2JAX_DATA) of the form 'tfds:intel48' reads the TFDS dataset in
  `tfds_data_dir`, preparing it first from `tfds_manual_dir` if needed (see hw2jax.data.tfds).
  """
  intel.check_layout(layout)
  spec = str(data_path) if data_path else (os.environ if environ is None else environ).get(
      "HW2JAX_DATA", "")
  if tfds_name(spec):
    from hw2jax.data import tfds  # lazy: only tfds: paths need tensorflow-datasets
    data = tfds.load_intel_tfds(spec, tfds_data_dir, manual_dir=tfds_manual_dir, layout=layout,
                                log=log)
  elif tfds_data_dir or tfds_manual_dir:
    raise UserError("--tfds_data_dir and --tfds_manual_dir only apply to --data_path=tfds:intel48")
  else:
    path = discover_intel(data_path, environ=environ, download=download, origin=origin, log=log,
                          splits=splits)
    data = _read(path, layout=layout, cache_dir=cache_dir, log=log, environ=environ)
  intel.check_splits(data, log, splits)
  log(f"{data.name} data: {data.source} -> train {data.sizes()['train']}, val "
      f"{data.sizes()['val']}, test {data.sizes()['test']}; {data.num_classes} classes: "
      f"{', '.join(data.classes)}")
  return data


# ----------------------------------------------------------------------------------------------
# Phoneme-to-grapheme pairs


def load_p2g(data_path: str | Path | None = None, max_train_words: int = 0, *,
             tfds_data_dir: str | Path | None = None, tfds_manual_dir: str | Path | None = None,
             origin: str = "--data_path") -> phonemes.P2GData:
  """The course TSV folder at `data_path`, or CMUdict when it is None; `max_train_words` > 0
  keeps only that many training pairs.

  A `data_path` of the form 'tfds:p2g' reads the TFDS dataset in `tfds_data_dir`, preparing it
  first from the TSV folder `tfds_manual_dir` if needed (see hw2jax.data.tfds).
  """
  if tfds_name(data_path):
    from hw2jax.data import tfds  # lazy: only tfds: paths need tensorflow-datasets
    data = tfds.load_p2g_tfds(str(data_path), tfds_data_dir, manual_dir=tfds_manual_dir)
  elif tfds_data_dir or tfds_manual_dir:
    raise UserError("--tfds_data_dir and --tfds_manual_dir only apply to --data_path=tfds:p2g")
  else:
    data = (phonemes.load_cmudict() if data_path is None
            else phonemes.load_tsv_folder(data_path, origin=origin))
  return data.limit_train(max_train_words)
