"""experiments.p2g end to end in subprocesses: train, outputs, resume, --predict, bad input."""

import json

import pytest

from conftest import p2g_pairs, run_cli, write_p2g_folder

pytestmark = pytest.mark.slow
TINY = ["--hidden_size=8", "--batch_size=16", "--buckets=1"]


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(autouse=True)
def _shared_compilation_cache(jax_cache, monkeypatch):
  """The subprocesses share compiled programs through JAX's persistent cache (a resumed run or
  --predict recompiles what the first run compiled; XLA:CPU compilation dominates these tests)."""
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(jax_cache))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def lines(path):
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_clean_failure(proc, *fragments):
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, proc.stderr
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


def test_train_resume_predict(tmp_path):
  write_p2g_folder(tmp_path / "data", n_train=48, n_valid=12, n_test=12)
  args = ["--data_path=data", "--workdir=run", *TINY]
  first = run_cli("experiments.p2g", *args, "--epochs=2", "--attention", "--beam=2",
                  "--topp=0.8", "--k=2", cwd=tmp_path)
  assert first.returncode == 0, first.stderr
  assert "epoch   1/2" in first.stdout and "val_cer" in first.stdout and "ETA" in first.stdout
  run = tmp_path / "run"
  for name in ("metrics.jsonl", "summary.json", "config.json", "vocab.json", "tables.md",
               "test_predictions.tsv", "cer.png", "attention.png"):
    assert (run / name).is_file(), name
  assert sorted(p.name for p in (run / "checkpoints/latest").iterdir()) == ["1", "2"]
  assert [r["epoch"] for r in lines(run / "metrics.jsonl")] == [1, 2]
  summary = json.loads((run / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["data"]["train"] == 48
  test = summary["test"]
  assert set(test) == {"greedy", "beam2", "nucleus"}
  assert 0 <= test["nucleus"]["wer_at_k"] <= test["nucleus"]["wer"] + 1e-9 <= 1 + 1e-9
  table = (run / "tables.md").read_text()
  assert "| 3.2 | attention | greedy |" in table and "0.2033" in table and "0.6340" not in table
  header = (run / "test_predictions.tsv").read_text().splitlines()[0].split("\t")
  assert header == ["phonemes", "gold", "greedy", "beam2", "sample1", "sample2"]
  assert "| 3.2 | attention | greedy |" in first.stdout

  resumed = run_cli("experiments.p2g", *args, "--epochs=3", "--attention", cwd=tmp_path)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from the checkpoint of epoch 2" in resumed.stdout
  assert "epoch   1/3" not in resumed.stdout and "epoch   3/3" in resumed.stdout
  assert [r["epoch"] for r in lines(run / "metrics.jsonl")] == [1, 2, 3]

  words = [p for p, _ in p2g_pairs(2, seed=9)]
  predicted = run_cli("experiments.p2g", "--workdir=run", f"--predict={', '.join(words)}",
                      "--beam=2", "--topp=0.5", "--k=2", cwd=tmp_path)
  assert predicted.returncode == 0, predicted.stderr
  out = predicted.stdout.splitlines()
  for w in words:
    assert w in out
  assert sum("greedy" in line for line in out) == 2
  assert sum("beam 2" in line for line in out) == 2
  assert sum("sample 2" in line for line in out) == 2

  unknown = run_cli("experiments.p2g", "--workdir=run", "--predict=k æ, ʒ q ŋ", cwd=tmp_path)
  assert_clean_failure(unknown, "word 2", "'ʒ', 'q'")

  other = run_cli("experiments.p2g", *args, "--epochs=3", "--attention", "--lr=0.01",
                  cwd=tmp_path)
  assert_clean_failure(other, "learning_rate=0.003 (now 0.01)", "--fresh")


def test_cmudict_default_trains_and_predicts(tmp_path):
  args = ["--workdir=cmu", "--max_train_words=64", *TINY]
  proc = run_cli("experiments.p2g", *args, "--epochs=1", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "cmudict" in proc.stdout and "| 3.1 | noattention | greedy |" in proc.stdout
  summary = json.loads((tmp_path / "cmu/summary.json").read_text())
  assert summary["data"]["train"] == 64 and summary["data"]["test"] > 1000
  predicted = run_cli("experiments.p2g", "--workdir=cmu", "--predict=K AE T", cwd=tmp_path)
  assert predicted.returncode == 0, predicted.stderr
  assert "K AE T" in predicted.stdout and "greedy" in predicted.stdout


@pytest.mark.parametrize("args, fragments", [
    # The parameter counts are printed before the data is read.
    (["--data_path=missing"], ["--data_path=missing does not exist"]),
    (["--attention", "--data_path=missing"], ["--data_path=missing does not exist"]),
    (["--data_path=data"], ["train.tsv:3: no TAB"]),
    (["--predict=a b"], ["holds no trained P2G model"]),
    (["--hidden_size=7"], ["--hidden_size=7 must be a positive even number"]),
    (["stray"], ["unexpected arguments stray"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragments):
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
