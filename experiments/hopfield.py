r"""The Hopfield experiment (Q1): modern Hopfield networks — the homework's claims checked,
image retrieval, capacity.

  python -m experiments.hopfield --check                   # the table of Q1 claims only
  python -m experiments.hopfield                           # check + retrieval + capacity
  python -m experiments.hopfield --parts=retrieval --data_path=data/intel_landscapes.v2.npz \
      --betas=0.001,0.03

Retrieval stores Intel training images when --data_path or discovery ($HW2JAX_DATA, ./data/,
the Kaggle mount) finds them, else random +-1 patterns (--patterns forces one). Writes
summary.json, check.md and PNG figures into --workdir; a previous run's files there are moved to
<workdir>/archive/<time>/ first.
"""

import sys

from absl import flags

from hw2jax import cli
from hw2jax.errors import UserError
from hw2jax.recipes.hopfield import retrieval
from hw2jax.recipes.hopfield import run as hopfield

CONFIG = hopfield.Config()  # the flags' defaults
flags.DEFINE_bool("check", False, "Only the table of Q1 claims (same as --parts=check).")
flags.DEFINE_list("parts", list(hopfield.PARTS), "Parts to run: check, retrieval, capacity.")
flags.DEFINE_integer("seed", CONFIG.seed, "Seed of every random pattern, query and problem "
                     "(0 to 2^32 - 1).")
flags.DEFINE_integer("check_trials", CONFIG.check_trials, "Random problems per claim in the check.")
flags.DEFINE_enum("patterns", CONFIG.patterns, list(retrieval.PATTERN_SOURCES),
                  "Retrieval patterns: auto (Intel when found, else random), intel, random.")
flags.DEFINE_string("data_path", None,
                    "Intel npz, Kaggle zip or folder, or another dataset's npz or "
                    "<class>/<image> folders (its training images are stored). Default: "
                    "$HW2JAX_DATA, ./data/, a Kaggle notebook's /kaggle/input, else a download "
                    "(--download).")
flags.DEFINE_integer("num_patterns", CONFIG.num_patterns, "Stored patterns N for retrieval.")
flags.DEFINE_list("betas", [f"{b:g}" for b in CONFIG.betas], "Retrieval inverse temperatures.")
flags.DEFINE_list("queries", list(CONFIG.queries), "Query kinds: mask (bottom half), noise.")
flags.DEFINE_float("noise", CONFIG.noise, "Std of the Gaussian noise of noisy queries (patterns "
                   "have unit variance per entry).")
flags.DEFINE_integer("steps", CONFIG.steps, "CCCP steps of the retrieval figures (lax.scan).")
flags.DEFINE_float("eps", CONFIG.eps, "Stop of the while-loop variant: change of the association "
                   "matrix (Frobenius norm), as update_steps_eps.")
flags.DEFINE_integer("max_steps", CONFIG.max_steps, "Step cap of the while-loop variant.")
flags.DEFINE_integer("num_show", CONFIG.num_show, "Queries shown in the retrieval figures.")
flags.DEFINE_float("recall_tol", CONFIG.recall_tol,
                   "Recalled: ||q_T - x|| / ||x|| below this (retrieval and capacity).")
flags.DEFINE_integer("capacity_dim", CONFIG.capacity_dim, "D of the recall-vs-N panel.")
flags.DEFINE_list("capacity_dims", [str(d) for d in CONFIG.capacity_dims],
                  "Dimensions of the capacity-vs-D panel.")
flags.DEFINE_list("capacity_betas", [f"{b:g}" for b in CONFIG.capacity_betas],
                  "Inverse temperatures of the capacity experiment.")
flags.DEFINE_integer("capacity_max_patterns", CONFIG.capacity_max_patterns,
                     "Largest N tried (powers of 2 from 2).")
flags.DEFINE_integer("capacity_queries", CONFIG.capacity_queries, "Queries per (N, D).")
flags.DEFINE_float("capacity_noise", CONFIG.capacity_noise,
                   "Noise std per coordinate of capacity queries (patterns have |x| = sqrt(D)).")
flags.DEFINE_integer("capacity_steps", CONFIG.capacity_steps, "Updates per capacity query.")
flags.DEFINE_float("failure_prob", CONFIG.failure_prob, "p of Theorem 3's bound.")
flags.DEFINE_string("workdir", "runs/hopfield", "Output folder.")
cli.define_download_flag()
flags.adopt_module_key_flags(cli)       # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.check and FLAGS["parts"].present and tuple(FLAGS.parts) != ("check",):
    raise UserError(f"--check means --parts=check; give one of --check and "
                    f"--parts={','.join(FLAGS.parts)}")
  parts = ("check",) if FLAGS.check else tuple(FLAGS.parts)
  config = hopfield.Config(
      parts=parts, seed=FLAGS.seed, check_trials=FLAGS.check_trials, patterns=FLAGS.patterns,
      num_patterns=FLAGS.num_patterns, betas=tuple(cli.parse_floats(FLAGS.betas, "betas")),
      queries=tuple(FLAGS.queries), noise=FLAGS.noise, steps=FLAGS.steps, eps=FLAGS.eps,
      max_steps=FLAGS.max_steps, num_show=FLAGS.num_show, recall_tol=FLAGS.recall_tol,
      capacity_dim=FLAGS.capacity_dim,
      capacity_dims=tuple(cli.parse_ints(FLAGS.capacity_dims, "capacity_dims")),
      capacity_betas=tuple(cli.parse_floats(FLAGS.capacity_betas, "capacity_betas")),
      capacity_max_patterns=FLAGS.capacity_max_patterns, capacity_queries=FLAGS.capacity_queries,
      capacity_noise=FLAGS.capacity_noise, capacity_steps=FLAGS.capacity_steps,
      failure_prob=FLAGS.failure_prob).validate()
  summary = hopfield.run(config, FLAGS.workdir, data_path=FLAGS.data_path,
                         download=FLAGS.download)
  print(f"outputs in {FLAGS.workdir}", flush=True)
  if summary.check is not None and not summary.check.all_ok:
    print("some Q1 checks FAILED (see the table)", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main,
          memory_flags="--num_patterns, --capacity_max_patterns or --capacity_queries")
