"""Inputs the CLIs refuse in one line instead of running on silently wrong values: seeds outside
32 bits (JAX keeps only their low 32), infinite float flags, Hopfield betas beyond float32's
range, and a JAX_PLATFORMS this machine cannot start."""

import dataclasses
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_clean_failure, checksums, cli_env, run_cli, write_npz
from hw2jax import cli
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, p2g
from hw2jax.recipes.hopfield import retrieval
from hw2jax.recipes.hopfield import run as hopfield
from hw2jax.models import hopfield as hf
from hw2jax.report import config as report_config

CONFIGS = {"cnn": (cnn.Config(), "seed"), "p2g": (p2g.Config(), "seed"),
           "hopfield": (hopfield.Config(), "seed"), "report": (report_config.Config(), "seeds")}


def _with_seed(name, seed):
  config, field = CONFIGS[name]
  return dataclasses.replace(config, **{field: (0, seed) if field == "seeds" else seed})


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [-1, 2 ** 32, 2 ** 64])
def test_seeds_outside_32_bits_are_refused_by_every_experiment(name, seed):
  with pytest.raises(UserError, match=rf"={'0,' if name == 'report' else ''}{seed} must be in "
                                      r"0\.\.4294967295: seeds have 32 bits"):
    _with_seed(name, seed).validate()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_largest_32_bit_seed_is_accepted(name):
  _with_seed(name, 2 ** 32 - 1).validate()


def test_report_seeds_that_jax_would_merge_are_not_two_runs():
  with pytest.raises(UserError, match="--seeds=0,4294967296 must be in 0..4294967295"):
    report_config.Config(seeds=(0, 2 ** 32)).validate()
  with pytest.raises(UserError, match="--seeds=3,3 must be distinct integers"):
    report_config.Config(seeds=(3, 3)).validate()


@pytest.mark.parametrize("config, message", [
    (cnn.Config(l2_decay=float("inf")), "--l2_decay=inf must be a finite number >= 0"),
    (cnn.Config(l2_decay=float("nan")), "--l2_decay=nan must be a finite number >= 0"),
    (hopfield.Config(noise=float("inf")), "--noise=inf must be a finite number >= 0"),
    (hopfield.Config(capacity_noise=float("inf")),
     "--capacity_noise=inf must be a finite number >= 0"),
])
def test_float_flags_that_must_be_finite_refuse_inf_and_nan(config, message):
  with pytest.raises(UserError, match=message):
    config.validate()


@pytest.mark.parametrize("changes, message", [
    ({"betas": (0.03, 1e30)}, r"--betas=0.03,1e\+30 must be from 2.48e-07 to 1716 with N=64, "
                              "D=6912, noise 1"),
    ({"betas": (1e-50,)}, "--betas=1e-50 must be from 2.48e-07"),
    ({"capacity_betas": (1e9,)}, r"--capacity_betas=1e\+09 must be from 5.78e-07 to 5.217e\+05 "
                                 "with N=16384, D=32"),
    ({"noise": 1e12}, r"--noise=1e\+12 is too large: with N=64, D=6912 no beta"),
    ({"capacity_noise": 1e300}, r"--capacity_noise=1e\+300 is too large"),
])
def test_betas_beyond_float32s_range_are_refused(changes, message):
  with pytest.raises(UserError, match=message):
    dataclasses.replace(hopfield.Config(), **changes).validate()


def test_masked_queries_alone_allow_larger_betas_than_noisy_ones():
  low, high = retrieval.beta_range(64, 6912, 0.0)
  assert low < 3e-7 and high == 2 ** 24 / 6912
  hopfield.Config(queries=("mask",), betas=(2000.0,)).validate()
  with pytest.raises(UserError, match="--betas=2000 must be from"):
    hopfield.Config(betas=(2000.0,)).validate()


@pytest.mark.parametrize("end", [0, 1])
def test_energies_and_states_are_finite_at_both_ends_of_the_beta_range(end):
  rng = np.random.default_rng(0)
  n, d, noise = 16, 512, 1.0
  X = rng.standard_normal((n, d))
  X = ((X - X.mean(1, keepdims=True)) / X.std(1, keepdims=True)).astype(np.float32)
  Q = X + noise * rng.standard_normal(X.shape).astype(np.float32)
  beta = jnp.float32(retrieval.beta_range(n, d, noise)[end])
  final, (_, energies) = hf.retrieve(jnp.asarray(X), jnp.asarray(Q), beta, 4, trajectory=True)
  energies = np.asarray(energies)
  assert np.isfinite(np.asarray(final)).all() and np.isfinite(energies).all()
  assert np.all(np.diff(energies, axis=0) <= 1e-3 * np.abs(energies[:-1]) + 1)     # never rises


def test_an_unknown_jax_platform_is_one_line_naming_the_available_ones():
  line = cli.describe_platform_error("bogus", ["cpu"])
  assert line.startswith("JAX_PLATFORMS=bogus: no such platform here (available: cpu); unset it")
  assert "available" not in cli.describe_platform_error("tpu", [])


@pytest.mark.slow
def test_an_unknown_jax_platform_is_one_line_and_changes_nothing(tmp_path):
  """Caught where JAX starts its backend (after flags, before any workdir is touched): the
  CLIs may set XLA_FLAGS in main, so the backend is not started early to check it."""
  write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=6)
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "kept.txt").write_text("x")
  before = checksums(tmp_path)
  env = {**cli_env(tmp_path), "JAX_PLATFORMS": "bogus"}
  proc = subprocess.run([sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz",
                         "--workdir=w", "--epochs=1"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert_clean_failure(proc, "JAX_PLATFORMS=bogus: no such platform here (available: cpu")
  assert {k: v for k, v in checksums(tmp_path).items() if not k.startswith("cache/")} == before


@pytest.mark.slow
@pytest.mark.parametrize("module, args, fragment", [
    ("experiments.hopfield", ["--check", "--seed=-1"], "--seed=-1 must be in 0..4294967295"),
    ("experiments.report", ["--quick", "--seeds=0,4294967296"],
     "--seeds=0,4294967296 must be in 0..4294967295"),
])
def test_bad_seeds_stop_a_cli_in_one_line_changing_nothing(tmp_path, module, args, fragment):
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "kept.txt").write_text("x")
  before = checksums(tmp_path)
  proc = run_cli(module, "--workdir=w", *args, cwd=tmp_path, timeout=300)
  assert_clean_failure(proc, fragment)
  assert checksums(tmp_path) == before
  assert os.listdir(tmp_path / "w") == ["kept.txt"]
