r"""The CNN experiment (Q2): train the course CNN on Intel images (48x48, 6 classes), or on any
labelled image data (another dataset's npz or class folders, --data_path).

  python -m experiments.cnn --lr=0.01                      # one run
  python -m experiments.cnn --lr=0.1,0.01,0.001            # Table 2.1 + one figure per rate
  python -m experiments.cnn --model=bn_gap --lr=0.01
  python -m experiments.cnn --data_path=tfds:intel48 \
      --tfds_manual_dir=data/intel-image-classification.zip   # TFDS, prepared from Kaggle's zip

Writes metrics.jsonl, summary.json, curves.png and Orbax checkpoints into --workdir; rerunning
the same command resumes from the latest checkpoint. --from_torch evaluates a PyTorch state_dict
of the course's CNN instead of training, --to_torch exports the workdir's best checkpoint as one:

  python -m experiments.cnn --model=bn_gap --from_torch=bn_gap.pt     # val/test accuracy
  python -m experiments.cnn --model=bn_gap --lr=0.01 --to_torch=bn_gap_lr0.01.pt

--predict classifies your own images (files, a folder or a glob) with a trained run's best
checkpoint, printing the top classes and writing predictions.csv (or --out):

  python -m experiments.cnn --predict=photos/ --workdir=runs/cnn/vanilla-lr0.01
"""

import sys

from absl import flags

from hw2jax import cli
from hw2jax.data import intel, sources
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, cnn_predict, sweep, torch_checkpoints
from hw2jax.models import registry

CONFIG = cnn.Config()  # the flags' defaults
flags.DEFINE_string("model", CONFIG.model,
                    f"Model family: {', '.join(registry.families())} (vanilla: the course's CNN; "
                    "bn_gap: BatchNorm + global average pooling; each family is a module of "
                    "hw2jax/models/).")
flags.DEFINE_list("lr", [f"{CONFIG.learning_rate:g}"],
                  "Learning rate, or a comma-separated list for a sweep.")
flags.DEFINE_integer("epochs", CONFIG.epochs, "Training epochs (in total, counting resumed ones).")
flags.DEFINE_integer("batch_size", CONFIG.batch_size, "Training batch size.")
flags.DEFINE_integer("max_train_images", CONFIG.max_train_images,
                     "Train on N images of the training split (0: all): a seeded draw that keeps "
                     "each class's share, for a quick run on real data. Validation and test stay "
                     "whole. Part of the run's settings (and of its default workdir's name).")
flags.DEFINE_enum("optimizer", CONFIG.optimizer, ["sgd", "adam"], "sgd (no momentum) or adam.")
flags.DEFINE_float("l2_decay", CONFIG.l2_decay,
                   "L2 penalty added to the gradient (PyTorch weight_decay).")
flags.DEFINE_float("dropout", CONFIG.dropout, "Dropout probability.")
flags.DEFINE_integer("seed", CONFIG.seed,
                     "Seed of initialisation, dropout and batch order (0 to 2^32 - 1).")
flags.DEFINE_integer("kernel_size", CONFIG.kernel_size,
                     "Convolution kernel size (odd; 'same' padding).")
flags.DEFINE_bool("maxpool", CONFIG.maxpool, "2x2 max-pooling after each conv block.")
flags.DEFINE_list("channels", [str(c) for c in CONFIG.channels], "Channels of the conv blocks.")
flags.DEFINE_enum("init", CONFIG.init, ["torch", "flax"],
                  "torch: PyTorch's default initialisation, as the course; flax: lecun-normal.")
flags.DEFINE_enum("pixels", CONFIG.pixels, list(intel.PIXELS),
                  "correct: the images as stored; course: the course skeleton's input pipeline, "
                  "which flattens each image and reshapes it to (3, 48, 48), scrambling the "
                  "channels of height-width-channel pixels (to reproduce the homework's numbers).")
flags.DEFINE_string("data_path", None,
                    "Intel npz, Kaggle zip or folder, or tfds:intel48 (a TFDS dataset in "
                    "--tfds_data_dir); or another dataset: an npz of the course's keys (any "
                    "image size, 1 or 3 channels, labels 0..K-1, optional class_names) or a "
                    "folder of <class>/<image> folders. Default: $HW2JAX_DATA, ./data/, a "
                    "Kaggle notebook's /kaggle/input, else a download (--download).")
flags.DEFINE_string("tfds_data_dir", None,
                    "TFDS data folder for --data_path=tfds:intel48. Default: $TFDS_DATA_DIR, "
                    "else ~/tensorflow_datasets.")
flags.DEFINE_string("tfds_manual_dir", None,
                    "With --data_path=tfds:intel48 not yet prepared: prepare it (once) from this "
                    "Intel npz, Kaggle zip or folder. Default: <tfds_data_dir>/downloads/manual/.")
flags.DEFINE_enum("layout", "hwc", list(intel.LAYOUTS),
                  "How to read flattened (N, 6912) npz images; 4-D arrays are detected.")
flags.DEFINE_string("workdir", None,
                    "Output folder. Default: runs/cnn/<model>-lr<lr>, then every setting that "
                    "differs from the course's, e.g. bn_gap-lr0.01-k5. A sweep (--lr=a,b,c) "
                    "trains each rate in that same folder (a finished one is not trained "
                    "again) and writes Table 2.1 into <model>-sweep; with --workdir, the "
                    "rates go to <workdir>/lr_<lr>.")
flags.DEFINE_string("from_torch", None,
                    "Evaluate this PyTorch state_dict of the course's CNN "
                    "(torch.save(model.state_dict()) of TorchCNN, --model and --kernel_size as it "
                    "was built) on the validation and test images instead of training. Default "
                    "workdir: runs/cnn/from_torch/<file stem>.")
flags.DEFINE_string("to_torch", None,
                    "Export the workdir's best-validation checkpoint to this new file as a "
                    "PyTorch state_dict of the course's TorchCNN (never overwrites).")
flags.DEFINE_string("predict", None,
                    "Classify these images (JPEG, PNG, ... of any size; image files, a folder, a "
                    "glob, or several separated by commas) with the best checkpoint of the run "
                    "in --workdir (default: the one the other flags name); prints each image's "
                    "top classes and writes predictions.csv in the current folder "
                    "(predictions_2.csv, ... if taken) or --out. Changes nothing in the workdir.")
flags.DEFINE_string("out", None, "With --predict: the new CSV file to write (never overwrites).")
cli.define_run_flags(CONFIG.epoch_mode)
cli.define_download_flag()
cli.define_training_flags()
flags.adopt_module_key_flags(cli)       # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
  del argv
  torch_checkpoints.one_mode(from_torch=FLAGS.from_torch, to_torch=FLAGS.to_torch,
                             predict=FLAGS.predict)
  if FLAGS.out is not None and FLAGS.predict is None:
    raise UserError("--out names the CSV of --predict; give --predict too, or leave --out out")
  lrs = cli.parse_floats(FLAGS.lr, "lr")
  config = cnn.Config(
      model=FLAGS.model, learning_rate=lrs[0], epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
      optimizer=FLAGS.optimizer, l2_decay=FLAGS.l2_decay, dropout=FLAGS.dropout, seed=FLAGS.seed,
      kernel_size=FLAGS.kernel_size, maxpool=FLAGS.maxpool,
      channels=tuple(cli.parse_ints(FLAGS.channels, "channels")), init=FLAGS.init,
      pixels=FLAGS.pixels,
      epoch_mode=FLAGS.epoch_mode, tensorboard=FLAGS.tensorboard,
      devices=cli.parse_devices(FLAGS.devices), max_train_images=FLAGS.max_train_images)
  run_dirs = sweep.run_dirs(config, lrs, FLAGS.workdir)      # validates every rate's settings
  if config.max_train_images and (FLAGS.to_torch or FLAGS.from_torch):
    raise UserError("--max_train_images chooses the images a run trains on; --from_torch and "
                    "--to_torch train nothing: leave it out")
  if FLAGS.predict is not None:
    if len(lrs) > 1:
      raise UserError("--predict classifies with one run; give one --lr (or its --workdir)")
    predict(FLAGS.workdir or f"runs/cnn/{config.run_name()}")
    return
  if FLAGS.to_torch is not None:
    torch_checkpoints.export_cnn(FLAGS.workdir or f"runs/cnn/{config.run_name()}",
                                 FLAGS.to_torch)
    return
  if FLAGS.from_torch is not None:
    torch_checkpoints.check_torch_cnn(config)          # before the file is read
    checkpoint, state_dict = torch_checkpoints.read_checkpoint(FLAGS.from_torch)
    data = torch_checkpoints.check_torch_data(load_data())
    workdir = FLAGS.workdir or torch_checkpoints.default_workdir("cnn", FLAGS.from_torch)
    torch_checkpoints.evaluate_cnn(checkpoint, state_dict, config, data, workdir,
                                   fresh=FLAGS.fresh)
    print(f"outputs in {workdir}", flush=True)
    return
  data = load_data()
  print(cnn.describe_params(config, data.image_shape, data.num_classes), flush=True)
  workdir = FLAGS.workdir or f"runs/cnn/{config.run_name(sweep=len(lrs) > 1)}"
  if len(lrs) == 1:
    cnn.train_and_evaluate(config, data, workdir, fresh=FLAGS.fresh, progress=FLAGS.progress)
  else:
    sweep.sweep(config, lrs, data, workdir, dirs=run_dirs, fresh=FLAGS.fresh,
                progress=FLAGS.progress)
  print(f"outputs in {workdir}", flush=True)


def predict(workdir: str) -> None:
  """--predict: every file it could not classify is an error line of its own (exit 2)."""
  if FLAGS.fresh:            # it only reads the workdir; --fresh would archive the run
    raise UserError("--predict classifies with the run trained in --workdir and changes nothing "
                    "there; --fresh does not apply to it")
  target = cnn_predict.output_path(FLAGS.out)          # before anything is read
  result = cnn_predict.predict(workdir, FLAGS.predict)
  for problem in result.problems:
    print(cli.error_line(problem), file=sys.stderr, flush=True)
  if result.images:
    written = cnn_predict.write_csv(result, target, chosen=FLAGS.out is not None)
    print(f"{len(result.images)} image{'s' if len(result.images) != 1 else ''} classified with "
          f"the best checkpoint of {intel.printable(workdir)}; predictions in "
          f"{intel.printable(written)}", flush=True)
  if result.problems:
    sys.exit(cli.EXIT_USAGE)


def load_data():
  return sources.load_intel(FLAGS.data_path, layout=FLAGS.layout,
                            tfds_data_dir=FLAGS.tfds_data_dir,
                            tfds_manual_dir=FLAGS.tfds_manual_dir, download=FLAGS.download)


if __name__ == "__main__":
  cli.run(main, memory_flags="--batch_size or --channels")
