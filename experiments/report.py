r"""The whole homework in one command: every experiment (or its resumption) and REPORT.md.

  python -m experiments.report --workdir=runs/report                      # course settings
  python -m experiments.report --quick --workdir=/tmp/r                   # minutes on a CPU
  python -m experiments.report --intel_data_path=data/intel-image-classification.zip \
      --p2g_data_path=data/p2g --seeds=42,43,44 --parts=q2,q3

Runs Q1 (checks, retrieval, capacity), Q2 (vanilla CNN at lr 0.1/0.01/0.001, BN+GAP at 0.01),
the Q2.4 ablations (kernel size, max-pooling) and Q3 (P2G without/with attention, nucleus
sampling) and writes <workdir>/REPORT.md with every table beside the seed report's numbers and
every figure. Rerunning the same command resumes each run from its checkpoint.
"""

import sys

from absl import flags

from hw2jax import cli
from hw2jax.data import intel
from hw2jax.report import config as report_config
from hw2jax.report import run as report

CONFIG = report_config.Config()  # the flags' defaults
flags.DEFINE_string("workdir", "runs/report", "Output folder: REPORT.md and one folder per part.")
flags.DEFINE_string("intel_data_path", None,
                    "Intel npz, Kaggle zip or folder (Q1 retrieval, Q2). Default: $HW2JAX_DATA, "
                    "./data/, a Kaggle notebook's /kaggle/input, else a download (--download); "
                    "none: Q2 is skipped and Q1 retrieves random patterns.")
flags.DEFINE_enum("layout", CONFIG.layout, list(intel.LAYOUTS),
                  "How to read flattened (N, 6912) npz images; 4-D arrays are detected.")
flags.DEFINE_enum("pixels", CONFIG.pixels, ["correct", "course"],
                  "Q2 and Q2.4: correct (the images as stored) or course (the course skeleton's "
                  "flatten and reshape to (3, 48, 48), as in the homework's runs; run folders "
                  "end in -pixels_course).")
flags.DEFINE_string("p2g_data_path", None,
                    "Folder with the course's train.tsv, valid.tsv, test.tsv (Q3). Default: "
                    "CMUdict (the seed report's numbers are for the course data).")
flags.DEFINE_list("parts", list(CONFIG.parts), "Parts to run: q1, q2, q2_ablations, q3.")
flags.DEFINE_bool("quick", CONFIG.quick,
                  "Shrink epochs and data so that the whole report runs on a laptop CPU in "
                  "minutes (every number labelled as such).")
flags.DEFINE_list("seeds", [str(s) for s in CONFIG.seeds],
                  "Seeds of the training runs (0 to 2^32 - 1); several: tables show mean ± std.")
flags.DEFINE_list("ablation_kernel_sizes", [str(k) for k in CONFIG.ablation_kernel_sizes],
                  "Q2.4: convolution kernel sizes (odd).")
flags.DEFINE_list("ablation_pooling", list(CONFIG.ablation_pooling),
                  "Q2.4: max (2x2 max-pooling in each block), none, or both.")
flags.DEFINE_integer("q3_hidden_size", CONFIG.q3_hidden_size, "Q3 hidden size (course: 128).")
flags.DEFINE_integer("q3_beam", CONFIG.q3_beam, "Q3 beam width for the beam-search rows (0: off).")
flags.DEFINE_enum("overlap", CONFIG.overlap, list(report_config.OVERLAP),
                  "Run Q3 in a second thread beside Q1/Q2/Q2.4, so that its compilation and "
                  "host work hide behind their device time. auto: on one GPU or TPU, not on CPU.")
cli.define_run_flags(CONFIG.epoch_mode)
cli.define_download_flag()
flags.adopt_module_key_flags(cli)       # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = report_config.Config(
      parts=tuple(FLAGS.parts), seeds=tuple(cli.parse_ints(FLAGS.seeds, "seeds")),
      quick=FLAGS.quick, epoch_mode=FLAGS.epoch_mode, layout=FLAGS.layout, pixels=FLAGS.pixels,
      ablation_kernel_sizes=tuple(cli.parse_ints(FLAGS.ablation_kernel_sizes,
                                                 "ablation_kernel_sizes")),
      ablation_pooling=tuple(FLAGS.ablation_pooling), q3_hidden_size=FLAGS.q3_hidden_size,
      q3_beam=FLAGS.q3_beam, overlap=FLAGS.overlap).validate()
  results = report.run(config, FLAGS.workdir, intel_data_path=FLAGS.intel_data_path,
                       p2g_data_path=FLAGS.p2g_data_path, fresh=FLAGS.fresh,
                       download=FLAGS.download, progress=FLAGS.progress,
                       command=" ".join(["python -m experiments.report", *sys.argv[1:]]))
  print(f"report: {FLAGS.workdir}/{report.REPORT} ({'quick, ' if config.quick else ''}"
        f"{results.meta.wall_seconds:.0f} s)", flush=True)
  if results.missing:
    print("REPORT.md is incomplete: " + "; ".join(results.missing), file=sys.stderr,
          flush=True)
    sys.exit(1)
  q1 = results.q1.summary
  if q1 is not None and q1.check is not None and not q1.check.all_ok:
    print("some Q1 checks FAILED (see REPORT.md)", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main, memory_flags="--quick or --q3_hidden_size")
