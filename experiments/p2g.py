r"""Q3: phoneme-to-grapheme seq2seq (BiLSTM encoder, LSTM decoder, optional Bahdanau attention).

  python -m experiments.p2g                                 # CMUdict (the embedded default)
  python -m experiments.p2g --data_path=data/p2g --attention --topp=0.8 --beam=5
  python -m experiments.p2g --attention --predict="t͡ʃ æ p l ə t, k æ t"
  python -m experiments.p2g --data_path=tfds:p2g --tfds_manual_dir=data/p2g   # via TFDS

Trains (resuming from --workdir's latest checkpoint), keeps the best-validation-CER checkpoint,
then decodes the test set with it and prints the seed report's Tables 3.1-3.3. Writes
metrics.jsonl, summary.json, tables.md, test_predictions.tsv, cer.png, attention.png (with
--attention), vocab.json, config.json and Orbax checkpoints into --workdir.
--predict spells the given pronunciations with the workdir's best checkpoint instead of training.
"""

from absl import flags

from hw2jax import cli, q3
from hw2jax.data import phonemes

flags.DEFINE_bool("attention", False, "Bahdanau attention over the encoder outputs.")
flags.DEFINE_float("topp", None, "Also decode the test set by nucleus sampling with this p "
                   "(Table 3.3; the course uses 0.8), k samples per word.")
flags.DEFINE_integer("k", 3, "Nucleus samples per word (WER@k).")
flags.DEFINE_integer("beam", 0, "Also decode by beam search with this many beams (0: off).")
flags.DEFINE_float("lr", 0.003, "Adam learning rate.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_integer("epochs", 20, "Training epochs (in total, counting resumed ones).")
flags.DEFINE_integer("hidden_size", 128, "Embedding and decoder size (encoder: half per "
                     "direction).")
flags.DEFINE_float("dropout", 0.3, "Dropout probability.")
flags.DEFINE_integer("seed", 42, "Seed of initialisation, dropout, batch order and sampling.")
flags.DEFINE_string("data_path", None, "Folder with train.tsv, valid.tsv, test.tsv "
                    "('phonemes<TAB>spelling' lines), or tfds:p2g (a TFDS dataset in "
                    "--tfds_data_dir). Default: CMUdict (10,000/1,000/1,000 words, fixed hash "
                    "split).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data folder for --data_path=tfds:p2g. "
                    "Default: $TFDS_DATA_DIR, else ~/tensorflow_datasets.")
flags.DEFINE_string("tfds_manual_dir", None, "With --data_path=tfds:p2g not yet prepared: "
                    "prepare it (once) from this folder of TSVs. Default: "
                    "<tfds_data_dir>/downloads/manual/.")
flags.DEFINE_integer("max_train_words", 0, "Train on only the first N training pairs "
                     "(0: all); for quick tries.")
flags.DEFINE_integer("widths", 3, "Padded widths of the training batches: batches are random "
                     "(as in the course), each padded to the narrowest width that holds it; "
                     "fewer widths: more padding, fewer compiled programs.")
flags.DEFINE_string("workdir", None, "Output folder. Default: runs/p2g/<attention|noattention>.")
flags.DEFINE_string("predict", None, "Spell these pronunciations (space-separated phonemes, "
                    "words separated by commas) with the workdir's best checkpoint.")
flags.DEFINE_enum("epoch_mode", "auto", ["auto", "scan", "loop"],
                  "auto: lax.scan over chunks of batches on GPU/TPU, a Python loop of jitted "
                  "steps on CPU.")
flags.DEFINE_bool("fresh", False,
                  "Start over: move the workdir's previous run to <workdir>/archive/<time>/.")
cli.define_training_flags()
cli.define_distributed_flag()
flags.adopt_module_key_flags(cli)       # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = q3.Config(
      attention=FLAGS.attention, learning_rate=FLAGS.lr, batch_size=FLAGS.batch_size,
      epochs=FLAGS.epochs, hidden_size=FLAGS.hidden_size, dropout=FLAGS.dropout,
      seed=FLAGS.seed, max_train_words=FLAGS.max_train_words, widths=FLAGS.widths,
      epoch_mode=FLAGS.epoch_mode, tensorboard=FLAGS.tensorboard,
      devices=cli.parse_devices(FLAGS.devices)).validate()
  options = q3.Decoding(top_p=FLAGS.topp, k=FLAGS.k, beam=FLAGS.beam).validate()
  workdir = FLAGS.workdir or f"runs/p2g/{config.name()}"
  if FLAGS.predict is not None:
    q3.predict(workdir, phonemes.parse_words(FLAGS.predict), options)
    return
  print(q3.describe_params(config), flush=True)
  data = phonemes.load(FLAGS.data_path, FLAGS.max_train_words,
                       tfds_data_dir=FLAGS.tfds_data_dir, tfds_manual_dir=FLAGS.tfds_manual_dir)
  sizes = (len(data.src_vocab), len(data.tgt_vocab))
  if sizes != q3.COURSE_VOCAB:
    print(q3.describe_data_params(config, sizes), flush=True)
  print(f"data: {data.source}; {data.sizes()['train']:,} / {data.sizes()['valid']:,} / "
        f"{data.sizes()['test']:,} pairs", flush=True)
  q3.train_and_evaluate(config, data, workdir, decoding_options=options, fresh=FLAGS.fresh)
  print(f"outputs in {workdir}", flush=True)


if __name__ == "__main__":
  cli.run(main, memory_flags="--batch_size or --hidden_size")
