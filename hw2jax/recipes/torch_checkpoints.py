"""PyTorch checkpoints of the course's designs in and out of hw2jax: `--from_torch` evaluates a
PyTorch state_dict with hw2jax's code, `--to_torch` exports a workdir's best checkpoint as one.

Why: the proof that hw2jax's models are the course's is only worth something if anyone can run
it on their own weights. A state_dict saved by the course's PyTorch code (the designs and names
of benchmarks/torch_baselines.py: `TorchCNN`, `Seq2Seq`) is converted with
`hw2jax.models.torch_port` and scored exactly as a hw2jax run is scored (the trainer's
evaluation for the CNN; the batched decoders, CER / WER / WER@k for P2G), into a workdir of its
own: summary.json, tables.md, and for P2G test_predictions.tsv (and attention.png). An export
loads into those PyTorch models with `load_state_dict(..., strict=True)`.

Vocabularies: the course numbers symbols in order of first appearance in train.tsv, hw2jax
sorts them, so P2G conversions need the training pairs (`phonemes.course_vocabs`); embedding
rows move by symbol.

The files themselves are read and written by `hw2jax.recipes.torch_files`, the only module
that imports torch. Bad files and mismatching checkpoints are one-line `UserError`s, raised
before a workdir is created or touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable, Mapping

import jax
import numpy as np

from hw2jax import files, markdown, records
from hw2jax.data import intel, phonemes
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, cnn_tables, p2g, p2g_evaluation, p2g_predict, torch_files
from hw2jax.recipes.p2g_evaluation import Decoding, Scores
from hw2jax.models import registry, seq2seq, torch_port
from hw2jax.models.cnn import as_dataset
from hw2jax.train import sharding, trainer as trainer_lib
from hw2jax.train.run import SUMMARY, Card, Run

TABLES = p2g_evaluation.TABLES
P2G_FILES = p2g_evaluation.EVALUATION_FILES
CNN_FILES = (SUMMARY, TABLES)
TORCH_CNN_CHANNELS = (32, 64, 128)     # what benchmarks.torch_baselines.TorchCNN builds


def default_workdir(task: str, path: str | Path) -> str:
  """runs/<task>/from_torch/<file stem>: where `--from_torch=<path>` writes without --workdir
  (a stem such as '..', of '...pt', is made one folder inside from_torch: `path_component`)."""
  return f"runs/{task}/from_torch/{files.path_component(Path(path).stem)}"


def one_mode(**given: str | None) -> None:
  """UserError when more than one of these flags that each replace training is set."""
  named = [f"--{name}" for name, value in given.items() if value is not None]
  empty = [name for name, value in given.items() if value is not None and not value.strip()]
  if empty:    # `--to_torch=` would be read as '.', the current folder
    raise UserError(f"--{empty[0]} is empty; give a file name")
  if len(named) > 1:
    raise UserError(f"{' and '.join(named)} cannot be combined; give one of them per command")


# ----------------------------------------------------------------------------------------------
# Files


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """Which PyTorch file was evaluated: its absolute path and the SHA-256 of its bytes (a file
  replaced at the same path is another evaluation)."""
  path: str
  sha256: str


def read_checkpoint(path: str | Path) -> tuple[Checkpoint, dict[str, np.ndarray]]:
  """(`Checkpoint`, state_dict) of the file at `path` (see `torch_files.read_state_dict`)."""
  state_dict = torch_files.read_state_dict(path)
  digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
  return Checkpoint(str(Path(path).resolve()), digest), state_dict


def _workdir_key(checkpoint: Checkpoint, task: str, **settings) -> dict:
  """What config.json records of an evaluation: the same file, task and settings reuse it."""
  return {"from_torch": checkpoint.path, "sha256": checkpoint.sha256, "task": task, **settings}


def _previous(run: Run, cls):
  """The typed summary.json of the evaluation already in the run's workdir, or None."""
  path = run.path(SUMMARY)
  return files.read_record(path, cls) if path.is_file() else None


# ----------------------------------------------------------------------------------------------
# P2G


@dataclasses.dataclass(frozen=True)
class P2GTorchSummary:
  """<workdir>/summary.json of a PyTorch Seq2Seq evaluated in hw2jax: greedy decoding of the
  validation set; the test set decoded greedily (+ 'beam<N>', + 'nucleus')."""
  checkpoint: Checkpoint
  attention: bool
  hidden_size: int
  decoding: Decoding
  data: p2g.P2GDataSizes
  trainable_params: int
  valid: Scores
  test: dict[str, Scores]
  seed: int
  device: str
  jax_version: str


def p2g_params(config: p2g.Config, state_dict: Mapping[str, np.ndarray],
               data: phonemes.P2GData) -> tuple[seq2seq.Seq2Seq, dict]:
  """A course Seq2Seq state_dict -> (`config`'s model on `data`'s vocabularies, its params),
  rows moved from the course's first-appearance order (of data.train) to hw2jax's sorted one."""
  embedding = np.shape(state_dict.get("decoder.embedding.weight", ()))
  if len(embedding) == 2 and embedding[1] != config.hidden_size:
    raise UserError(f"state_dict: 'decoder.embedding.weight' is {tuple(embedding)}, a model of "
                    f"hidden size {embedding[1]}; add --hidden_size={embedding[1]}")
  model = config.build_model(len(data.src_vocab), len(data.tgt_vocab))
  return model, torch_port.seq2seq_from_torch(model, state_dict, *symbol_orders(data))


def symbol_orders(data: phonemes.P2GData) -> tuple[torch_port.SymbolOrder, ...]:
  """(source, target) `SymbolOrder`s between the course's numbering of data.train and hw2jax's."""
  course = phonemes.course_vocabs(data.train)
  return tuple(torch_port.SymbolOrder(c.symbols, s.symbols, f"{name} vocabulary")
               for c, s, name in zip(course, (data.src_vocab, data.tgt_vocab),
                                     ("source", "target")))


def evaluate_p2g(checkpoint: Checkpoint, state_dict: Mapping[str, np.ndarray],
                 config: p2g.Config, data: phonemes.P2GData, workdir: str | Path, *,
                 decoding: Decoding = Decoding(), fresh: bool = False,
                 log: Callable[[str], None] = print) -> P2GTorchSummary:
  """Scores a PyTorch Seq2Seq (`config.attention`, `config.hidden_size`) on `data` into
  `workdir`. A workdir already holding this evaluation (same file, settings, data and
  decoding) is not recomputed: its summary is printed and returned."""
  config.validate()
  decoding.validate()
  model, params = p2g_params(config, state_dict, data)   # any mismatch: before the workdir
  key = _workdir_key(checkpoint, "p2g", attention=config.attention,
                     hidden_size=config.hidden_size, decoding=records.to_json(decoding))
  with Run.train(workdir, Card(key, data.source), fresh=fresh, run_files=P2G_FILES,
                 resumable=("decoding",), tensorboard=False, log=log) as run:
    previous = _previous(run, P2GTorchSummary)
    if previous is not None and previous.decoding == decoding:
      log(f"{run.workdir} already holds this evaluation ({SUMMARY}); --fresh evaluates again")
      log(p2g_table(previous))
      return previous
    if previous is not None:
      log(f"the test set was decoded with {records.to_json(previous.decoding)} before; now "
          f"with {records.to_json(decoding)}: evaluating again")
    params = jax.device_put(params)
    log(f"evaluating {checkpoint.path} as hw2jax's {config.name()} model, hidden "
        f"{config.hidden_size}, on {data.source}")
    splits = p2g_evaluation.evaluation_splits(data)
    decoders = p2g_evaluation.Decoders(model, data.tgt_vocab, config.eval_batch_size,
                                       decoding.max_len)
    valid = splits["valid"]
    summary = P2GTorchSummary(
        checkpoint=checkpoint, attention=config.attention, hidden_size=config.hidden_size,
        decoding=decoding,
        data=p2g.P2GDataSizes(data.source, **data.sizes(), source_vocab=len(data.src_vocab),
                              target_vocab=len(data.tgt_vocab)),
        trainable_params=trainer_lib.count_params(params),
        valid=p2g_evaluation.scores(decoders.greedy(params, valid.src, valid.src_len)[0],
                               valid.golds),
        test=p2g_evaluation.decode_test(decoding, decoders, params, splits["test"], config.seed,
                                        run.workdir, log),
        seed=config.seed, device=sharding.device_name(None), jax_version=jax.__version__)
    return _finish(run, summary, p2g_table(summary))


def _finish(run: Run, summary, table: str):
  """Writes summary.json and tables.md, prints the table, returns the summary."""
  run.write(SUMMARY, records.to_json(summary))
  files.write_file(run.path(TABLES), table)
  run.log(table)
  return summary


def p2g_table(summary: P2GTorchSummary) -> str:
  """The evaluation's scores as markdown (tables.md): one row per split and decoding."""
  rows = [["valid", "greedy", *_scores(summary.valid)]]
  for name, m in summary.test.items():
    label = (f"beam {name[4:]} (best beam)" if name.startswith("beam") else
             f"nucleus p={m.top_p:g}, {m.k} samples" if name == "nucleus" else name)
    rows.append(["test", label, *_scores(m)])
  model = "attention" if summary.attention else "no attention"
  return (markdown.table(["split", "decoding", "CER", "WER", "WER@k"], rows)
          + f"\nPyTorch checkpoint {summary.checkpoint.path} (sha256 "
            f"{summary.checkpoint.sha256[:12]}) in hw2jax: {model}, hidden "
            f"{summary.hidden_size}; data {summary.data.source}.\n")


def _scores(m: Scores) -> list[str]:
  return [markdown.fmt(m.cer), markdown.fmt(m.wer), markdown.fmt(m.wer_at_k)]


def export_p2g(workdir: str | Path, data: phonemes.P2GData, path: str | Path,
               log: Callable[[str], None] = print) -> Path:
  """The best checkpoint of a P2G workdir -> a course Seq2Seq state_dict at `path`, numbered
  in the course's order of the run's training pairs (`data`, limited as the run was)."""
  torch_files.check_new_file(path)
  torch_files.import_torch("--to_torch")
  config, src_vocab, tgt_vocab, model, params = p2g_predict.load_run(workdir, log=log)
  data = data.limit_train(config.max_train_words)
  if (data.src_vocab, data.tgt_vocab) != (src_vocab, tgt_vocab):
    raise UserError(f"the training pairs of {data.source} give other vocabularies than "
                    f"{Path(workdir) / p2g.VOCAB}; give the --data_path the run was trained on "
                    "(the course's symbol order comes from it)")
  arrays = torch_port.seq2seq_to_torch(model, params, *symbol_orders(data))
  torch_files.write_state_dict(arrays, path)
  log(f"wrote {path}: the best checkpoint of {workdir} as the course's Seq2Seq state_dict "
      f"(vocabularies {len(src_vocab)}/{len(tgt_vocab)}, hidden {config.hidden_size}, "
      f"{'attention' if config.attention else 'no attention'})")
  return Path(path)


# ----------------------------------------------------------------------------------------------
# CNN


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Mean loss and accuracy of one split, eval mode."""
  loss: float
  accuracy: float


@dataclasses.dataclass(frozen=True)
class CnnTorchSummary:
  """<workdir>/summary.json of a PyTorch TorchCNN evaluated in hw2jax (eval mode)."""
  checkpoint: Checkpoint
  model: str
  kernel_size: int
  data: cnn.DataSizes
  trainable_params: int
  val: Evaluation
  test: Evaluation
  device: str
  jax_version: str
  pixels: str = "correct"           # intel.PIXELS: how the images reached the model


def check_torch_cnn(config: cnn.Config) -> cnn.Config:
  """`config` if TorchCNN can hold its model (channels 32,64,128, max-pooling; any odd kernel)."""
  config.validate()
  if not registry.get(config.model).torch_cnn:
    raise UserError(f"--model={config.model} has no PyTorch counterpart: the course's TorchCNN "
                    f"holds {', '.join(n for n, f in registry.families().items() if f.torch_cnn)}")
  if tuple(config.channels) != TORCH_CNN_CHANNELS or not config.maxpool:
    raise UserError("the course's TorchCNN has channels 32,64,128 and max-pooling; "
                    f"--channels={','.join(map(str, config.channels))}"
                    f"{'' if config.maxpool else ' --nomaxpool'} has no PyTorch counterpart")
  return config


def check_torch_data(data: ImageData) -> ImageData:
  """`data` if the course's TorchCNN reads it (--from_torch): the Intel data's shape and classes."""
  _intel_only(data.name, data.image_shape, data.num_classes, "--from_torch")
  return data


def _intel_only(name: str, shape, num_classes: int, flag: str, classes=None) -> None:
  """The course's TorchCNN reads the Intel data: 48x48x3 images, its six classes."""
  if (shape not in (None, cnn.INTEL_SHAPE) or num_classes != len(intel.CLASSES)
      or (classes is not None and tuple(classes) != intel.CLASSES)):
    raise UserError(f"{flag} reads and writes the course's TorchCNN, which takes the Intel "
                    f"data (48x48x3 images, 6 classes); {name} is other data "
                    f"({num_classes} classes)")


def cnn_variables(config: cnn.Config, state_dict: Mapping[str, np.ndarray]) -> dict:
  """A TorchCNN state_dict -> variables of `config`'s model."""
  conv = np.shape(state_dict.get("blocks.0.block.0.weight", ()))
  if len(conv) == 4 and conv[-1] != config.kernel_size:
    raise UserError(f"state_dict: 'blocks.0.block.0.weight' is {tuple(conv)}, {conv[-1]}x"
                    f"{conv[-1]} kernels; add --kernel_size={conv[-1]}")
  return torch_port.cnn_from_torch(config.build_model(), state_dict, cnn.IMAGE_SIZE)


def evaluate_cnn(checkpoint: Checkpoint, state_dict: Mapping[str, np.ndarray],
                 config: cnn.Config, data: ImageData, workdir: str | Path, *,
                 fresh: bool = False, log: Callable[[str], None] = print) -> CnnTorchSummary:
  """Loss and accuracy of a PyTorch TorchCNN (`config.model`, `config.kernel_size`) on the
  validation and test images, with the trainer's evaluation, into `workdir`."""
  check_torch_data(data)
  variables = cnn_variables(check_torch_cnn(config), state_dict)
  trainer = cnn.make_trainer(config)
  key = _workdir_key(checkpoint, "cnn", model=config.model, kernel_size=config.kernel_size,
                     pixels=config.pixels)
  with Run.train(workdir, Card(key, data.source), fresh=fresh, run_files=CNN_FILES,
                 added_settings=cnn.ADDED_SETTINGS, tensorboard=False, log=log) as run:
    previous = _previous(run, CnnTorchSummary)
    if previous is not None:
      log(f"{run.workdir} already holds this evaluation ({SUMMARY}); --fresh evaluates again")
      log(cnn_table(previous))
      return previous
    log(f"evaluating {checkpoint.path} as hw2jax's {config.model} CNN on {data.source}")
    state = trainer.put(cnn.new_state(config).replace(
        params=variables["params"], batch_stats=variables.get("batch_stats", {})))
    scores = {}
    for split in ("val", "test"):
      images, labels = data.split(split)
      m = trainer.evaluate(state, trainer.put(as_dataset(
          intel.model_pixels(images, config.pixels), labels)))
      scores[split] = Evaluation(m["loss"], m["accuracy"])
    summary = CnnTorchSummary(
        checkpoint=checkpoint, model=config.model, kernel_size=config.kernel_size,
        data=cnn.DataSizes.of(data),
        trainable_params=trainer_lib.count_params(state.params), val=scores["val"],
        test=scores["test"], device=sharding.device_name(trainer.mesh),
        jax_version=jax.__version__, pixels=config.pixels)
    return _finish(run, summary, cnn_table(summary))


def cnn_table(summary: CnnTorchSummary) -> str:
  """The evaluation as a one-row markdown table (tables.md)."""
  row = [cnn_tables.model_label(summary.model), f"{summary.kernel_size}x{summary.kernel_size}",
         markdown.fmt(summary.val.loss), markdown.fmt(summary.val.accuracy),
         markdown.fmt(summary.test.loss), markdown.fmt(summary.test.accuracy)]
  return (markdown.table(["model", "kernel", "val loss", "val acc", "test loss", "test acc"],
                         [row])
          + f"\nPyTorch checkpoint {summary.checkpoint.path} (sha256 "
            f"{summary.checkpoint.sha256[:12]}) in hw2jax; data {summary.data.source}"
            f"{', the course pipeline' if summary.pixels == 'course' else ''}.\n")


def export_cnn(workdir: str | Path, path: str | Path,
               log: Callable[[str], None] = print) -> Path:
  """The best-validation checkpoint of a CNN run's workdir -> a TorchCNN state_dict at `path`
  (every BatchNorm's num_batches_tracked = the optimizer steps taken, as PyTorch counts)."""
  torch_files.check_new_file(path)
  trained = cnn.trained_run(workdir, log=log)
  config = check_torch_cnn(trained.config)
  _intel_only(str(workdir), trained.image_shape, len(trained.classes), "--to_torch",
              trained.classes)
  torch_files.import_torch("--to_torch")
  model = config.build_model()
  arrays = torch_port.cnn_to_torch(model, trained.variables, cnn.IMAGE_SIZE,
                                   num_batches_tracked=trained.step)
  torch_files.write_state_dict(arrays, path)
  log(f"wrote {path}: the best checkpoint of {workdir} (epoch of the best validation accuracy) "
      f"as a TorchCNN(batch_norm={model.batch_norm}, kernel_size={config.kernel_size}) "
      "state_dict")
  return Path(path)

