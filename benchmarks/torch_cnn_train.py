r"""The course's Q2 training in PyTorch: the reference hw2jax's CNN numbers are held against.

  python -m benchmarks.torch_cnn_train --data_path=../shared/data/intel48_kaggle_layout.zip \
      --pixels=course --seed=42 --out=runs/torch_cnn/vanilla_course_42.json
  python -m benchmarks.torch_cnn_train --data_path=data --model=bn_gap --epochs=1 \
      --train_images=500                                      # a quick check that it runs

The course's loop (hw2-q2.py) around `benchmarks.torch_baselines.TorchCNN`: plain SGD (lr 0.01,
no momentum, no weight decay), batches of 8 in a new random order every epoch (a shuffling
DataLoader), dropout 0.1, NLL loss on log-softmax; after every epoch the whole validation split
in eval mode; the test split with the last epoch's weights (as the skeleton reports it) and with
the best-validation epoch's. The images are the ones hw2jax loads (same splits); --pixels says
how they become tensors: `course` is the skeleton's own lines (flatten, divide by 256, reshape
to (N, 3, 48, 48)), `correct` the channels moved first (`permute`), also divided by 256.
PyTorch uses its default thread count unless --threads says otherwise.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from absl import flags

from benchmarks import torch_baselines as tb
from hw2jax import cli
from hw2jax.data import intel, sources
from hw2jax.errors import UserError

flags.DEFINE_string("data_path", None, "Intel npz, Kaggle zip or folder (as experiments.cnn).")
flags.DEFINE_enum("model", "vanilla", ["vanilla", "bn_gap"], "vanilla or bn_gap.")
flags.DEFINE_enum("pixels", "correct", list(intel.PIXELS),
                  "course: the skeleton's flatten + reshape to (3, 48, 48); correct: permute.")
flags.DEFINE_integer("seed", 42, "Seed of initialisation, dropout and batch order.")
flags.DEFINE_integer("epochs", 40, "Training epochs.")
flags.DEFINE_integer("batch_size", 8, "Training batch size.")
flags.DEFINE_float("lr", 0.01, "SGD learning rate.")
flags.DEFINE_float("dropout", 0.1, "Dropout probability.")
flags.DEFINE_integer("train_images", 0, "Train on a seeded random subset of N images (0: all).")
flags.DEFINE_integer("eval_batch", 1000, "Images evaluated at once.")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: PyTorch's default).")
flags.DEFINE_string("out", None, "Write the results as JSON here (after every epoch).")
flags.DEFINE_string("save", None, "Save the last epoch's state_dict here (.pt).")
FLAGS = flags.FLAGS


def check_flags() -> None:
  for name in ("epochs", "batch_size", "eval_batch"):
    if FLAGS[name].value < 1:
      raise UserError(f"--{name}={FLAGS[name].value} must be at least 1")
  if not (FLAGS.lr > 0 and np.isfinite(FLAGS.lr)):
    raise UserError(f"--lr={FLAGS.lr} must be a positive number")
  if not 0 <= FLAGS.dropout < 1:
    raise UserError(f"--dropout={FLAGS.dropout} must be in [0, 1)")
  for path in (FLAGS.out, FLAGS.save):
    if path and os.path.exists(path):
      raise UserError(f"{path} exists; this script never overwrites a result (pick a new file)")


def course_tensor(images: np.ndarray) -> torch.Tensor:
  """The skeleton's lines: flatten, divide by 256, reshape to (N, 3, 48, 48)."""
  x = images.reshape(images.shape[0], -1) / 256
  return torch.tensor(x, dtype=torch.float32).reshape(-1, 3, 48, 48)


def correct_tensor(images: np.ndarray) -> torch.Tensor:
  """(N, 48, 48, 3) pixels as NCHW floats / 256, each channel one colour."""
  return torch.from_numpy(images.astype(np.float32) / 256).permute(0, 3, 1, 2).contiguous()


def tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
  make = course_tensor if FLAGS.pixels == "course" else correct_tensor
  return make(images), torch.from_numpy(labels.astype(np.int64))


@torch.no_grad()
def evaluate(model, x, y) -> dict:
  """Mean NLL and accuracy over a whole split, in eval mode."""
  model.eval()
  loss, right = 0.0, 0
  for start in range(0, len(y), FLAGS.eval_batch):
    out = model(x[start:start + FLAGS.eval_batch])
    yb = y[start:start + FLAGS.eval_batch]
    loss += float(torch.nn.functional.nll_loss(out, yb, reduction="sum"))
    right += int((out.argmax(-1) == yb).sum())
  return {"loss": loss / len(y), "accuracy": right / len(y)}


def train_epoch(model, loader, optimizer) -> float:
  """One pass of the course loop; returns the epoch's mean loss per image."""
  model.train()
  total, n = 0.0, 0
  for xb, yb in loader:
    optimizer.zero_grad()
    loss = torch.nn.functional.nll_loss(model(xb), yb)
    loss.backward()
    optimizer.step()
    total, n = total + loss.item() * len(yb), n + len(yb)
  return total / n


def main(argv):
  del argv
  check_flags()
  if FLAGS.threads:
    torch.set_num_threads(FLAGS.threads)
  torch.manual_seed(FLAGS.seed)
  data = sources.load_intel(FLAGS.data_path, origin="--data_path")
  data = data.subset(FLAGS.train_images or None, None, seed=FLAGS.seed)
  splits = {name: tensors(*data.split(name)) for name in intel.SPLITS}
  loader = torch.utils.data.DataLoader(
      torch.utils.data.TensorDataset(*splits["train"]), batch_size=FLAGS.batch_size,
      shuffle=True, generator=torch.Generator().manual_seed(FLAGS.seed))
  model = tb.TorchCNN(batch_norm=FLAGS.model == "bn_gap", dropout=FLAGS.dropout)
  optimizer = torch.optim.SGD(model.parameters(), lr=FLAGS.lr)
  print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads); {data.source}; "
        f"{FLAGS.model}, {tb.count_params(model):,} parameters; {FLAGS.pixels} pixels", flush=True)
  results = {
      "framework": "pytorch", "torch_version": torch.__version__,
      "threads": torch.get_num_threads(), "data": data.source, "sizes": data.sizes(),
      "model": FLAGS.model, "pixels": FLAGS.pixels, "seed": FLAGS.seed, "epochs": FLAGS.epochs,
      "batch_size": FLAGS.batch_size, "lr": FLAGS.lr, "dropout": FLAGS.dropout,
      "params": tb.count_params(model), "history": [], "status": "running"}
  best, best_state = None, None
  for epoch in range(1, FLAGS.epochs + 1):
    start = time.perf_counter()
    loss = train_epoch(model, loader, optimizer)
    seconds = time.perf_counter() - start
    val = evaluate(model, *splits["val"])
    record = {"epoch": epoch, "train_loss": loss, "val_loss": val["loss"],
              "val_accuracy": val["accuracy"], "train_seconds": seconds}
    results["history"].append(record)
    if best is None or val["accuracy"] > best["val_accuracy"]:
      best, best_state = record, copy.deepcopy(model.state_dict())
    print(f"epoch {epoch:2d}  loss {loss:.4f}  val loss {val['loss']:.4f} acc "
          f"{val['accuracy']:.4f}  ({seconds:.1f} s){'  *' if best is record else ''}",
          flush=True)
    write_json(results)
  final = {"val": results["history"][-1]["val_accuracy"],
           "test": evaluate(model, *splits["test"])["accuracy"]}
  last_state = copy.deepcopy(model.state_dict())
  model.load_state_dict(best_state)
  results.update(status="completed", final_val_accuracy=final["val"],
                 final_test_accuracy=final["test"], best_epoch=best["epoch"],
                 best_val_accuracy=best["val_accuracy"],
                 best_val_test_accuracy=evaluate(model, *splits["test"])["accuracy"],
                 train_seconds_total=float(sum(h["train_seconds"] for h in results["history"])))
  print(f"final val acc {final['val']:.4f}, test acc {final['test']:.4f}; best val epoch "
        f"{best['epoch']} ({best['val_accuracy']:.4f}), its test acc "
        f"{results['best_val_test_accuracy']:.4f}", flush=True)
  if FLAGS.save:
    Path(FLAGS.save).parent.mkdir(parents=True, exist_ok=True)
    torch.save(last_state, FLAGS.save)
    results["saved"] = str(Path(FLAGS.save).resolve())
  write_json(results)


def write_json(results: dict) -> None:
  if FLAGS.out:
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{FLAGS.out}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(FLAGS.out)


if __name__ == "__main__":
  cli.run(main, memory_flags="--eval_batch")
