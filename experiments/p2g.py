r"""The P2G experiment (Q3): phoneme-to-grapheme seq2seq (BiLSTM encoder, LSTM decoder,
optional Bahdanau attention).

  python -m experiments.p2g                                 # CMUdict (the embedded default)
  python -m experiments.p2g --data_path=data/p2g --attention --topp=0.8 --beam=5
  python -m experiments.p2g --attention --predict="t͡ʃ æ p l ə t, k æ t"
  python -m experiments.p2g --data_path=tfds:p2g --tfds_manual_dir=data/p2g   # via TFDS

Trains (resuming from --workdir's latest checkpoint), keeps the best-validation-CER checkpoint,
then decodes the test set with it and prints the seed report's Tables 3.1-3.3. Writes
metrics.jsonl, summary.json, tables.md, test_predictions.tsv, cer.png, attention.png (with
--attention), vocab.json, config.json and Orbax checkpoints into --workdir.
--predict spells the given pronunciations with the workdir's best checkpoint instead of training;
--from_torch evaluates a PyTorch state_dict of the course's model, --to_torch exports the
workdir's best checkpoint as one:

  python -m experiments.p2g --data_path=data/p2g --attention --from_torch=seq2seq.pt --beam=5
  python -m experiments.p2g --data_path=data/p2g --attention --to_torch=attention.pt
"""

from absl import flags

from hw2jax import cli
from hw2jax.data import phonemes, sources
from hw2jax.errors import UserError
from hw2jax.recipes import p2g, p2g_evaluation, p2g_predict, torch_checkpoints, torch_files

CONFIG, DECODING = p2g.Config(), p2g_evaluation.Decoding()  # the flags' defaults
flags.DEFINE_bool("attention", CONFIG.attention, "Bahdanau attention over the encoder outputs.")
flags.DEFINE_float("topp", DECODING.top_p, "Also decode the test set by nucleus sampling with "
                   "this p (Table 3.3; the course uses 0.8), k samples per word.")
flags.DEFINE_integer("k", DECODING.k, "Nucleus samples per word (WER@k).")
flags.DEFINE_integer("beam", DECODING.beam,
                     "Also decode by beam search with this many beams (0: off).")
flags.DEFINE_float("lr", CONFIG.learning_rate, "Adam learning rate.")
flags.DEFINE_integer("batch_size", CONFIG.batch_size, "Training batch size.")
flags.DEFINE_integer("epochs", CONFIG.epochs, "Training epochs (in total, counting resumed ones).")
flags.DEFINE_integer("hidden_size", CONFIG.hidden_size, "Embedding and decoder size (encoder: half "
                     "per direction).")
flags.DEFINE_float("dropout", CONFIG.dropout, "Dropout probability.")
flags.DEFINE_integer("seed", CONFIG.seed, "Seed of initialisation, dropout, batch order and "
                     "sampling (0 to 2^32 - 1).")
flags.DEFINE_string("data_path", None, "Folder with train.tsv, valid.tsv, test.tsv "
                    "('phonemes<TAB>spelling' lines), or tfds:p2g (a TFDS dataset in "
                    "--tfds_data_dir). Default: CMUdict (10,000/1,000/1,000 words, fixed hash "
                    "split).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data folder for --data_path=tfds:p2g. "
                    "Default: $TFDS_DATA_DIR, else ~/tensorflow_datasets.")
flags.DEFINE_string("tfds_manual_dir", None, "With --data_path=tfds:p2g not yet prepared: "
                    "prepare it (once) from this folder of TSVs. Default: "
                    "<tfds_data_dir>/downloads/manual/.")
flags.DEFINE_integer("max_train_words", CONFIG.max_train_words, "Train on only the first N "
                     "training pairs (0: all); for quick tries.")
flags.DEFINE_integer("widths", CONFIG.widths, "Padded widths of the training batches: batches are "
                     "random (as in the course), each padded to the narrowest width that holds "
                     "it; fewer widths: more padding, fewer compiled programs.")
flags.DEFINE_string("workdir", None, "Output folder. Default: runs/p2g/<attention|noattention>.")
flags.DEFINE_string("from_torch", None, "Evaluate this PyTorch state_dict of the course's "
                    "Seq2Seq (torch.save(model.state_dict())) instead of training: built with "
                    "--attention and --hidden_size as it was, vocabularies numbered as the "
                    "course numbers --data_path's train.tsv; greedy CER/WER on valid and test, "
                    "--beam and --topp on test. Default workdir: runs/p2g/from_torch/<file stem>.")
flags.DEFINE_string("to_torch", None, "Export the workdir's best checkpoint to this new file as "
                    "a PyTorch state_dict of the course's Seq2Seq (never overwrites); needs the "
                    "run's training data (--data_path) for the course's vocabulary order.")
flags.DEFINE_string("predict", None, "Spell these pronunciations (space-separated phonemes, "
                    "words separated by commas) with the workdir's best checkpoint.")
cli.define_run_flags(CONFIG.epoch_mode)
cli.define_training_flags()
flags.adopt_module_key_flags(cli)       # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
  del argv
  torch_checkpoints.one_mode(from_torch=FLAGS.from_torch, to_torch=FLAGS.to_torch,
                             predict=FLAGS.predict)
  config = p2g.Config(
      attention=FLAGS.attention, learning_rate=FLAGS.lr, batch_size=FLAGS.batch_size,
      epochs=FLAGS.epochs, hidden_size=FLAGS.hidden_size, dropout=FLAGS.dropout,
      seed=FLAGS.seed, max_train_words=FLAGS.max_train_words, widths=FLAGS.widths,
      epoch_mode=FLAGS.epoch_mode, tensorboard=FLAGS.tensorboard,
      devices=cli.parse_devices(FLAGS.devices)).validate()
  options = p2g_evaluation.Decoding(top_p=FLAGS.topp, k=FLAGS.k, beam=FLAGS.beam).validate()
  workdir = FLAGS.workdir or f"runs/p2g/{config.name()}"
  if FLAGS.predict is not None:
    if FLAGS.fresh:        # it only reads the workdir; --fresh would archive the run
      raise UserError("--predict spells with the run trained in --workdir and changes nothing "
                      "there; --fresh does not apply to it")
    p2g_predict.predict(workdir, phonemes.parse_words(FLAGS.predict), options)
    return
  if FLAGS.from_torch is not None:
    checkpoint, state_dict = torch_checkpoints.read_checkpoint(FLAGS.from_torch)
    workdir = FLAGS.workdir or torch_checkpoints.default_workdir("p2g", FLAGS.from_torch)
    torch_checkpoints.evaluate_p2g(checkpoint, state_dict, config, load_data(), workdir,
                                   decoding=options, fresh=FLAGS.fresh)
    print(f"outputs in {workdir}", flush=True)
    return
  if FLAGS.to_torch is not None:
    torch_files.check_new_file(FLAGS.to_torch)       # before the data is read
    torch_checkpoints.export_p2g(workdir, load_data(), FLAGS.to_torch)
    return
  print(p2g.describe_params(config), flush=True)
  data = load_data()
  sizes = (len(data.src_vocab), len(data.tgt_vocab))
  if sizes != p2g.COURSE_VOCAB:
    print(p2g.describe_data_params(config, sizes), flush=True)
  print(f"data: {data.source}; {data.sizes()['train']:,} / {data.sizes()['valid']:,} / "
        f"{data.sizes()['test']:,} pairs", flush=True)
  p2g.train_and_evaluate(config, data, workdir, decoding_options=options, fresh=FLAGS.fresh,
                         progress=FLAGS.progress)
  print(f"outputs in {workdir}", flush=True)


def load_data():
  return sources.load_p2g(FLAGS.data_path, FLAGS.max_train_words,
                          tfds_data_dir=FLAGS.tfds_data_dir,
                          tfds_manual_dir=FLAGS.tfds_manual_dir)


if __name__ == "__main__":
  cli.run(main, memory_flags="--batch_size or --hidden_size")
