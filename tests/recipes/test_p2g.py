"""experiments.p2g end to end in subprocesses: train, outputs, resume, --predict, bad input."""

import json
import shutil

import pytest

from helpers import (REPO, assert_clean_failure, open_run, p2g_pairs, p2g_summary, run_cli,
                     write_p2g_folder)
from hw2jax.data import sources
from hw2jax.errors import UserError
from hw2jax.recipes import p2g, p2g_predict

pytestmark = pytest.mark.slow
TINY = ["--hidden_size=8", "--batch_size=16", "--widths=2"]


def lines(path):
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def life(tmp_path_factory):
  """One P2G workdir, each step a CLI call: 2 epochs with attention, the same with --epochs=3,
  then --predict of two words with every decoder. Returns the folder and, per step, (the
  process, metrics.jsonl, summary.json and the checkpoints' epochs right after it)."""
  root = tmp_path_factory.mktemp("life")
  write_p2g_folder(root / "data", n_train=48, n_valid=12, n_test=12)
  args = ["--data_path=data", "--workdir=run", *TINY, "--attention"]
  words = [p for p, _ in p2g_pairs(2, seed=9)]
  steps = {}
  for name, cmd in (("first", [*args, "--epochs=2"]), ("resumed", [*args, "--epochs=3"]),
                    ("predict", ["--workdir=run", f"--predict={', '.join(words)}", "--beam=2",
                                 "--topp=0.5", "--k=2"])):
    proc = run_cli("experiments.p2g", *cmd, cwd=root)
    steps[name] = (proc, lines(root / "run" / "metrics.jsonl"),
                   json.loads((root / "run" / "summary.json").read_text()),
                   sorted(p.name for p in (root / "run" / "checkpoints").iterdir()))
  return root / "run", steps, words


@pytest.mark.xdist_group("p2g_life")     # one worker runs the `life` fixture once
def test_a_run_writes_metrics_summary_tables_predictions_figures_and_checkpoints(life):
  run, steps, _ = life
  proc, metrics, summary, epochs = steps["first"]
  assert proc.returncode == 0, proc.stderr
  assert epochs == ["1", "2"]
  for name in ("metrics.jsonl", "summary.json", "config.json", "vocab.json", "tables.md",
               "test_predictions.tsv", "cer.png", "attention.png"):
    assert (run / name).is_file(), name
  assert [r["epoch"] for r in metrics] == [1, 2] and "val_cer" in metrics[0]
  assert summary["status"] == "completed" and summary["data"]["train"] == 48
  assert set(summary["test"]) == {"greedy"} and 0 <= summary["test"]["greedy"]["wer"] <= 1
  table = (run / "tables.md").read_text()
  assert "| 3.2 | attention | greedy |" in table and "0.2033" in table
  predictions = (run / "test_predictions.tsv").read_text().splitlines()
  assert predictions[0].split("\t") == ["phonemes", "gold", "greedy"] and len(predictions) == 13
  assert "| 3.2 | attention | greedy |" in proc.stdout and "ETA" in proc.stdout


@pytest.mark.xdist_group("p2g_life")     # one worker runs the `life` fixture once
def test_the_same_command_with_more_epochs_trains_only_the_new_one(life):
  run, steps, _ = life
  proc, metrics, summary, epochs = steps["resumed"]
  assert proc.returncode == 0, proc.stderr
  assert metrics[:2] == steps["first"][1] and [r["epoch"] for r in metrics] == [1, 2, 3]
  assert summary["epochs_done"] == 3 and epochs[-1] == "3"
  assert "resuming from the checkpoint of epoch 2" in proc.stdout


@pytest.mark.xdist_group("p2g_life")     # one worker runs the `life` fixture once
def test_predict_spells_each_word_with_every_decoder_and_writes_nothing(life):
  run, steps, words = life
  proc, *files = steps["predict"]
  assert proc.returncode == 0, proc.stderr
  assert files == list(steps["resumed"][1:])
  out = proc.stdout.splitlines()
  assert all(w in out for w in words)
  for decoder in ("greedy", "beam 2", "sample 2"):
    assert sum(decoder in line for line in out) == 2, decoder
  # (Unknown symbols in --predict, other settings and changed data on this workdir:
  # tests/recipes/test_identity.py, library-level; one line at the CLI: tests/test_cli.py.)


def test_tables_put_our_numbers_beside_the_seed_report():
  runs = [p2g_summary(greedy=(0.25, 0.8), beam=(0.24, 0.79), nucleus=(0.3, 0.85, 0.7))]
  table = p2g.tables_3([p2g.TableRow(False, runs)]).splitlines()
  assert table[2] == ("| 3.1 | noattention | greedy | 0.2500 | 0.8000 | — | 0.2992 | 0.7970 "
                      "| — |")
  assert table[3].startswith("| 3.1 | noattention | beam 5 (best beam) | 0.2400 | 0.7900 | — |")
  assert table[4] == ("| 3.3 | noattention | nucleus p=0.8, 3 samples | 0.3000 | 0.8500 | "
                      "0.7000 | 0.2242 | 0.7660 | 0.6340 |")
  other_p = [p2g_summary(nucleus=(0.3, 0.85, 0.7), top_p=0.5)]
  assert p2g.tables_3([p2g.TableRow(False, other_p)]).splitlines()[3].endswith(
      "| 0.7000 | — | — | — |")
  two_seeds = [p2g_summary(seed=42, greedy=(0.2, 0.7)), p2g_summary(seed=43, greedy=(0.3, 0.8))]
  assert "| 0.2500 ± 0.0707 | 0.7500 ± 0.0707 |" in p2g.tables_3([p2g.TableRow(False,
                                                                                two_seeds)])


def test_a_summary_survives_json():
  summary = p2g_summary(attention=True, beam=(0.2, 0.7), nucleus=(0.3, 0.8, 0.6))
  data = summary.to_json()
  assert set(data["test"]["greedy"]) == {"cer", "wer"}               # as summary.json always had
  assert data["test"]["nucleus"] == {"cer": 0.3, "wer": 0.8, "wer_at_k": 0.6, "top_p": 0.8,
                                     "k": 3}
  assert p2g.P2GRunSummary.from_json(data) == summary


@pytest.mark.parametrize("args, fragments", [
    # The parameter counts are printed before the data is read.
    (["--data_path=missing"], ["--data_path=missing does not exist"]),
    (["--attention", "--data_path=missing"], ["--data_path=missing does not exist"]),
    (["--data_path=data"], ["train.tsv:3: no TAB"]),
    (["--predict=a b"], ["holds no trained P2G model"]),
    (["--hidden_size=7"], ["--hidden_size=7 must be a positive even number"]),
    (["--data_path=ok", "--batch_size=100000"],
     ["--batch_size=100000 is larger than the training set (8 pairs)"]),
    (["--data_path=ok", "--batch_size=8", "--hidden_size=200000"],
     ["out of device memory (it tried to allocate", "--batch_size or --hidden_size"]),
    (["stray"], ["unexpected arguments stray"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragments):
  write_p2g_folder(tmp_path / "ok", n_train=8, n_valid=2, n_test=2)
  folder = write_p2g_folder(tmp_path / "data", n_train=8, n_valid=2, n_test=2)
  text = (folder / "train.tsv").read_text().splitlines()
  text[2] = text[2].replace("\t", " ")
  (folder / "train.tsv").write_text("\n".join(text) + "\n")
  proc = run_cli("experiments.p2g", "--workdir=w", *args, cwd=tmp_path)
  assert_clean_failure(proc, *fragments)
  if "--data_path=missing" in args:
    counts = ("321,757", "322,781") if "--attention" in args else ("256,093", "257,117")
    for c in counts:
      assert c in proc.stdout


def test_workdir_reuse_and_fresh_archive(tmp_path):
  prepare = lambda config, data, fresh, log=print: open_run(
      tmp_path, config.to_json(), data, fresh=fresh, run_files=p2g.RUN_FILES, log=log)
  config = p2g.Config(hidden_size=8)
  prepare(config, "tsv:a", False, log=lambda s: None)
  for name in ("metrics.jsonl", "vocab.json", "test_predictions.tsv", "attention.png"):
    (tmp_path / name).write_text("old")
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "notes.txt").write_text("mine")
  prepare(p2g.Config(hidden_size=8, epochs=30), "tsv:a", False)
  with pytest.raises(UserError, match="data tsv:a .now tsv:b."):
    prepare(config, "tsv:b", False)
  with pytest.raises(UserError, match="attention=False .now True."):
    prepare(p2g.Config(hidden_size=8, attention=True), "tsv:a", False)
  logs = []
  prepare(config, "tsv:b", True, log=logs.append)
  (archive,) = (tmp_path / "archive").iterdir()
  assert sorted(p.name for p in archive.iterdir()) == sorted(
      ["config.json", "metrics.jsonl", "vocab.json", "test_predictions.tsv", "attention.png",
       "checkpoints"])
  assert (tmp_path / "notes.txt").read_text() == "mine" and "moved" in logs[0]


FIXTURE = REPO / "tests" / "fixtures" / "p2g_workdir_1cb5fe3"


def test_a_workdir_written_before_the_redesign_resumes_and_predicts(tmp_path):
  """tests/fixtures/p2g_workdir_1cb5fe3: 2 epochs of a tiny P2G model trained by commit 1cb5fe3
  (before the library was laid out by role) on write_p2g_folder(n_train=24, n_valid=6,
  n_test=6). Its config.json and checkpoints read with today's code: it predicts, and resumed
  to 3 epochs it keeps its two epochs and adds the third. (It no longer ends where a fresh run
  of today's code does: since then the LSTM biases take PyTorch's doubled update.)"""
  folder = write_p2g_folder(tmp_path / "p2g", n_train=24, n_valid=6, n_test=6)
  data = sources.load_p2g(folder)
  old = tmp_path / "old"
  shutil.copytree(FIXTURE, old)
  saved = json.loads((old / "config.json").read_text())
  (old / "config.json").write_text(json.dumps({**saved, "data": data.source}))
  words = [p for p, _ in data.test[:2]]
  assert len(p2g_predict.predict(old, words, log=lambda line: None)) == 2
  config = p2g.Config.from_json({**saved["config"], "epochs": 3})
  logs = []
  resumed = p2g.train_and_evaluate(config, data, old, log=logs.append)
  assert any("resuming from the checkpoint of epoch 2" in line for line in logs), logs
  assert resumed.epochs_done == 3 and resumed.status == "completed"
  strip = lambda path: [{k: v for k, v in r.items() if k != "seconds"}
                        for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())]
  assert strip(old)[:2] == strip(FIXTURE) and strip(old)[2]["epoch"] == 3
