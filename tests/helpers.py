"""Test helpers: small learnable Intel-like images and P2G pairs made on the fly, the Kaggle
layout as files, running the CLIs in subprocesses, and what their results must look like."""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from hw2jax import cache
from hw2jax.data.intel import CLASSES

REPO = Path(__file__).resolve().parents[1]


COLOURS = np.array([(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40), (220, 40, 220),
                    (40, 220, 220)], np.uint8)


def learnable_images(n: int, seed: int = 0, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
  """(n, size, size, 3) uint8 images: noise plus a square of the class's colour at a random
  place, and their labels (n,). Learnable by both CNN variants (global average pooling too)."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 6
  rng.shuffle(labels)
  images = rng.integers(0, 60, size=(n, size, size, 3)).astype(np.uint8)
  side = 3 * size // 4
  for i, y in enumerate(labels):
    r, c = rng.integers(0, size - side + 1, 2)
    images[i, r:r + side, c:c + side] = COLOURS[y]
  return images, labels.astype(np.int64)


def write_npz(path: Path, n_train=96, n_val=24, n_test=24, seed=0, **overrides) -> Path:
  """The course's npz layout; every split of at least 6 images holds every class."""
  arrays = {}
  for k, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = learnable_images(n, seed + 1000 * k)
  arrays.update(overrides)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  np.savez(path, **arrays)
  return path


def jpeg_bytes(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def kaggle_files(n_per_class_train=5, n_per_class_test=2, seed=0) -> dict[str, bytes]:
  """Kaggle's layout as {relative path: bytes}: 150x150 JPEGs, some of odd sizes, one corrupt
  JPEG and one non-image file in the labelled folders, plus an unlabelled seg_pred image."""
  rng = np.random.default_rng(seed)
  files = {}
  for split, n in (("train", n_per_class_train), ("test", n_per_class_test)):
    for c, cls in enumerate(CLASSES):
      for i in range(n):
        h = 150 if i % 3 else int(rng.integers(72, 150))
        img = np.full((h, 150, 3), 20 * c, np.uint8)
        files[f"seg_{split}/seg_{split}/{cls}/{c * 100 + i}.jpg"] = jpeg_bytes(img)
  files["seg_train/seg_train/forest/broken.jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"
  files["seg_train/seg_train/sea/notes.txt"] = b"hello"
  files["seg_pred/seg_pred/1.jpg"] = jpeg_bytes(np.zeros((374, 500, 3), np.uint8))
  return files


def write_kaggle_folder(root: Path, **kw) -> Path:
  for rel, data in kaggle_files(**kw).items():
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
  return root


def write_kaggle_zip(path: Path, prefix: str = "", **kw) -> Path:
  with zipfile.ZipFile(path, "w") as zf:
    for rel, data in kaggle_files(**kw).items():
      zf.writestr(prefix + rel, data)
  return path


def xla_cache_settings(folder: Path) -> dict:
  """The suite's JAX compilation cache (conftest.py), in `folder`: every program cached, and a
  size limit, which turns on JAX's file lock (the `filelock` package), so that one process never
  reads an entry another is still writing."""
  return {"jax_compilation_cache_dir": folder, "jax_persistent_cache_min_compile_time_secs": 0,
          "jax_compilation_cache_max_size": cache.COMPILATION_CACHE_MAX_BYTES}


def cli_env(tmp_path: Path) -> dict:
  env = dict(os.environ)
  env.pop("HW2JAX_DATA", None)
  env["HW2JAX_CACHE"] = str(tmp_path / "cache")
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return env


def assert_clean_failure(proc, *fragments):
  """A CLI's bad-input exit: code 2, no traceback, stderr exactly one 'error:' line holding
  every fragment."""
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def checksums(root: Path) -> dict[str, str]:
  """{relative path: sha256} of every file under `root`: what a failed command must not change."""
  import hashlib
  root = Path(root)
  if not root.exists():
    return {}
  return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def trained_files(files: dict[str, str]) -> dict[str, str]:
  """Of `checksums`, what training writes: every run's metrics.jsonl and checkpoint files. A run
  trained again rewrites them (they hold times and Orbax metadata); one only read back does not."""
  return {f: h for f, h in files.items()
          if f.split("/")[-1] == "metrics.jsonl" or "checkpoints" in f.split("/")[:-1]}


def run_cli(module: str, *args: str, cwd: Path, timeout: int = 600):
  import subprocess
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(cwd),
                        capture_output=True, text=True, timeout=timeout)


def run_read_only(workdir: Path, command: list[str], cwd: Path):
  """`command` with `workdir` mounted read-only (root writes through chmod, so as root a
  private mount namespace makes the folder read-only; as another user chmod does)."""
  import shutil
  import subprocess
  import pytest
  env = cli_env(cwd)
  if os.geteuid() != 0:
    subprocess.run(["chmod", "-R", "a-w", str(workdir)], check=True)
    try:
      return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    finally:
      subprocess.run(["chmod", "-R", "u+w", str(workdir)], check=True)
  if shutil.which("unshare") is None or subprocess.run(
      ["unshare", "-m", "true"], capture_output=True).returncode != 0:
    pytest.skip("root without unshare -m: no way to make a folder read-only for root here")
  script = (f'mount --bind -o ro "{workdir}" "{workdir}" && touch "{workdir}/probe" 2>/dev/null '
            '&& exit 99; exec "$@"')
  return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)


# -- P2G: a tiny learnable phoneme-to-spelling language ----------------------------------------

P2G_SPELLINGS = {"t͡ʃ": "ch", "iː": "ee", "æ": "a", "k": "c", "s": "s", "ɹ": "r", "ə": "e",
                 "p": "p", "l": "l", "ʃ": "sh", "ŋ": "ng", "ɒ": "ó"}


def p2g_pairs(n: int, seed: int = 0, max_len: int = 5) -> list[tuple[str, str]]:
  """n (phonemes, spelling) lines of a deterministic sound-to-letter code: multi-character
  phonemes, a multi-letter spelling per phoneme, an accented letter, capitalised every 7th."""
  rng = np.random.default_rng(seed)
  symbols = sorted(P2G_SPELLINGS)
  out = []
  for i in range(n):
    phones = [symbols[j] for j in rng.integers(0, len(symbols), rng.integers(2, max_len + 1))]
    spelling = "".join(P2G_SPELLINGS[p] for p in phones)
    out.append((" ".join(phones), spelling.capitalize() if i % 7 == 0 else spelling))
  return out


def write_p2g_folder(root: Path, n_train: int = 48, n_valid: int = 12, n_test: int = 12,
                     seed: int = 0) -> Path:
  """train.tsv / valid.tsv / test.tsv of `p2g_pairs` in `root`."""
  root.mkdir(parents=True, exist_ok=True)
  pairs = p2g_pairs(n_train + n_valid + n_test, seed)
  cuts = {"train": pairs[:n_train], "valid": pairs[n_train:n_train + n_valid],
          "test": pairs[n_train + n_valid:]}
  for name, rows in cuts.items():
    (root / f"{name}.tsv").write_text("".join(f"{p}\t{w}\n" for p, w in rows), encoding="utf-8")
  return root


def read_tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of every scalar in the event files directly in `folder`
  (TFRecord framing: length, its CRC, the Event proto, its CRC)."""
  import struct
  from tensorboardX.proto import event_pb2
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(Path(folder).glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


# -- hand-made results (for tables and REPORT.md without training) -----------------------------


def cnn_summary(model="vanilla", lr=0.01, seed=42, val=0.7, test=0.68, status="completed",
                best_test=0.69, epochs=2, seconds=3.0, trained=None):
  """A `CnnRunSummary` as a finished run would return it (`trained` epochs: `epochs`, unless
  its workdir held more than this command asked for)."""
  from hw2jax.recipes import cnn
  from hw2jax.models import registry
  config = cnn.Config(model=model, learning_rate=lr, seed=seed, epochs=epochs)
  return cnn.CnnRunSummary(
      config=config, trainable_params=registry.get(model).expected_params,
      data=cnn.DataSizes("npz tiny.npz", 24, 6, 6), epochs_done=trained or epochs,
      diverged_at=None,
      status=status, final=cnn.FinalMetrics(0.5, 0.6, val, 0.61, test),
      best_val=cnn.CnnBestEpoch(1, val, best_test), train_seconds_total=seconds,
      train_seconds_this_call=seconds, device="cpu: x1", jax_version="0.0",
      seed_report=cnn.SEED_REPORT.get((model, lr)))


def p2g_summary(attention=False, seed=42, greedy=(0.25, 0.8), beam=None, nucleus=None,
                top_p=0.8, k=3):
  """A `P2GRunSummary`; `beam` (cer, wer) of beam 5, `nucleus` (cer, wer, wer_at_k)."""
  from hw2jax.recipes import p2g, p2g_evaluation
  test = {"greedy": p2g_evaluation.Scores(*greedy)}
  if beam is not None:
    test["beam5"] = p2g_evaluation.Scores(*beam)
  if nucleus is not None:
    test["nucleus"] = p2g_evaluation.Scores(*nucleus, top_p=top_p, k=k)
  return p2g.P2GRunSummary(
      config=p2g.Config(attention=attention, seed=seed, epochs=2),
      decoding=p2g_evaluation.Decoding(top_p=top_p if nucleus else None, beam=5 if beam else 0),
      trainable_params=1000, trainable_params_torch_convention=1512,
      data=p2g.P2GDataSizes("tsv:p2g", 32, 8, 8, 16, 19), epochs_done=2, diverged_at=None,
      status="completed", evaluated_checkpoint="best validation CER, epoch 2",
      best_val=p2g.P2GBestEpoch(2, 0.3, 0.9, 2.0), test=test, seed_report=p2g.SEED_REPORT,
      train_seconds_total=4.0, train_seconds_this_call=4.0, device="cpu: x1",
      jax_version="0.0")


# -- a tiny CNN state --------------------------------------------------------------------------

TINY_CNN = dict(channels=(4, 8, 16), hidden=(32, 16))


def new_cnn_state(model, lr=0.05, seed=0, optimizer="sgd", l2=0.0):
  """A fresh train state of `model` (a CNN) for 48x48 images."""
  import jax.numpy as jnp
  from hw2jax.train import optimizer as optimizer_lib, trainer as trainer_lib
  return trainer_lib.create_train_state(model, (jnp.zeros((1, 48, 48, 3), jnp.uint8),),
                                        optimizer_lib.make_optimizer(optimizer, lr, l2), seed,
                                        train=False)


# -- PyTorch state_dicts as numpy (tests/models/test_torch_port.py) ------------------------------


def numpy_state(module) -> dict:
  """A torch module's state_dict as {name: numpy array} (copies), as hw2jax.models.torch_port
  takes it."""
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def load_numpy_state(module, state: dict) -> None:
  """{name: numpy array} into a torch module, every key required (strict)."""
  import torch
  module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                         strict=True)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-5):
  """Same pytree structure and every leaf close; a failure names the leaf."""
  import jax
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def torch_adam_steps(net, src, src_len, tgt, steps: int, lr: float):
  """`net` (benchmarks.torch_baselines.Seq2Seq) after `steps` full-batch Adam steps of
  teacher-forced cross-entropy on (src, src_len, tgt) tensors: a briefly trained model that
  spells word-like strings of varying lengths (random weights mostly run all 50 steps)."""
  import torch
  optimizer = torch.optim.Adam(net.parameters(), lr=lr)
  for _ in range(steps):
    optimizer.zero_grad()
    logits = net(src, src_len, tgt[:, :-1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                      tgt[:, 1:].reshape(-1), ignore_index=0).backward()
    optimizer.step()
  return net


# -- the tiny runs of the front-door tests (test_hostile_ground, test_runs_that_meet) -----------

TINY_CLI_FLAGS = {"cnn": ("--epochs=1", "--channels=4,8,16"),
                  "p2g": ("--epochs=1", "--hidden_size=8", "--batch_size=8"),
                  "hopfield": ("--check", "--check_trials=1"),
                  "report": ("--parts=q1", "--quick")}


def write_tiny_inputs(root: Path) -> Path:
  """tiny.npz and the p2g/ folder every front-door CLI test reads (absolute paths: runs are
  copied between folders)."""
  write_npz(root / "tiny.npz", n_train=24, n_val=6, n_test=6)
  write_p2g_folder(root / "p2g", n_train=24, n_valid=6, n_test=6)
  return root


def fit_in(workdir, trainer, state, train_data, *, epochs, evaluate, best_metric="val_accuracy",
           best_mode="max", log=lambda line: None, config=None, tensorboard=False):
  """`fit` in a `Run` of `workdir` whose card holds `config` (default: the state's learning
  rate, so that a resume at another rate is another run)."""
  from hw2jax.train import fit, optimizer, run
  rate = float(f"{optimizer.learning_rate(state):.6g}")
  card = run.Card(config or {"learning_rate": rate}, "test data")
  with run.Run.train(workdir, card, fresh=False, run_files=(), tensorboard=tensorboard,
                     log=log) as opened:
    return fit.fit(trainer, state, train_data, opened, epochs=epochs, evaluate=evaluate,
                   best_metric=best_metric, best_mode=best_mode)


def open_run(workdir, config: dict, data: str, *, fresh=False, run_files=(),
             log=lambda line: None, **kw) -> None:
  """Opens and closes a `Run` of `workdir` for a run of `config` on `data`: its checks, its
  archive (`fresh`) and config.json, nothing trained."""
  from hw2jax.train import run
  with run.Run.train(workdir, run.Card(config, data), fresh=fresh, run_files=run_files, log=log,
                     **kw):
    pass


def best_epoch(workdir) -> int | None:
  """The epoch the newest intact checkpoint names best (None: none)."""
  from hw2jax.train import checkpoints
  stored = checkpoints.newest(Path(workdir) / checkpoints.FOLDER)
  return stored and (stored.meta.get("best") or {}).get("epoch")


# -- photos for --predict: the Intel sample's JPEGs when ../shared is beside the checkout -------

INTEL_SAMPLE = REPO.parent / "shared" / "data" / "intel_kaggle_sample"
TINTS = {"cool": (0.55, 0.8, 1.0), "warm": (1.0, 0.8, 0.55)}


def photos(n: int) -> list[np.ndarray]:
  """`n` photos (H, W, 3) uint8: the Intel sample's real 150x150 JPEGs decoded, else (no
  ../shared) learnable images at 150x150."""
  paths = sorted(INTEL_SAMPLE.rglob("*.jpg"))[:n]
  if len(paths) == n:
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]
  return list(learnable_images(n, seed=7, size=150)[0])


def write_tinted(root: Path, arrays: list[np.ndarray]) -> Path:
  """An easy two-class fixture of real photos: <root>/<tint>/<i>.jpg, every photo once tinted
  warm and once cool (a tiny CNN tells them apart in a few epochs)."""
  for name, tint in TINTS.items():
    (root / name).mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(arrays):
      tinted = np.clip(array.astype(np.float32) * np.array(tint, np.float32), 0, 255)
      (root / name / f"{i}.jpg").write_bytes(jpeg_bytes(tinted.astype(np.uint8)))
  return root
