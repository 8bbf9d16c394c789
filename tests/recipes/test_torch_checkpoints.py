"""--from_torch and --to_torch (hw2jax.recipes.torch_checkpoints; the .pt files:
torch_files): a PyTorch state_dict of the course's design, scored by hw2jax's CLIs, gets the
numbers PyTorch itself gets on the same data; a workdir's best checkpoint exported with
--to_torch loads strictly into the PyTorch models and scores what the run scored; bad files and
mismatching checkpoints are one line and touch no workdir."""

import concurrent.futures
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from helpers import (assert_clean_failure, checksums, numpy_state, run_cli, write_npz,
                     torch_adam_steps, write_p2g_folder)
from hw2jax import metrics
from hw2jax.data import intel, phonemes
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, p2g, p2g_evaluation, torch_files
from hw2jax.recipes import torch_checkpoints as tc

torch = pytest.importorskip("torch")
from benchmarks import torch_baselines as tb  # noqa: E402  (needs torch)

H = 8                  # hidden size of the P2G models here (with attention, as the run below)
CNN_NPZ = dict(n_train=12, n_val=12, n_test=12)     # every CNN test: one compiled evaluation


def read(path):
  return json.loads(path.read_text())


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
  """The PyTorch models here are tiny: a thread pool only fights over a shared CPU (40 Adam
  steps of the seq2seq take ~15x longer with it on two busy cores)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


# -- fixtures: tiny data and briefly trained PyTorch models ------------------------------------


@pytest.fixture(scope="module")
def p2g_folder(tmp_path_factory):
  return write_p2g_folder(tmp_path_factory.mktemp("p2g") / "data", n_train=48, n_valid=12,
                          n_test=12)


@pytest.fixture(scope="module")
def p2g_data(p2g_folder):
  return phonemes.load_tsv_folder(p2g_folder)


def course_ids(pairs, data):
  """`pairs` encoded with the course's first-appearance vocabularies of data.train, as tensors."""
  arrays = phonemes.encode(pairs, *phonemes.course_vocabs(data.train))
  return {k: torch.from_numpy(v.astype(np.int64)) for k, v in arrays.items()}


def torch_seq2seq(data, attention, hidden=H, steps=40, seed=0):
  """The course's Seq2Seq on the course's vocabularies of `data`, after a few full-batch Adam
  steps (it then spells word-like strings of several lengths, not 50 random characters)."""
  torch.manual_seed(seed)
  src, tgt = phonemes.course_vocabs(data.train)
  net = tb.Seq2Seq(len(src), len(tgt), attention, hidden=hidden, dropout=0.0)
  batch = course_ids(data.train, data)
  return torch_adam_steps(net, batch["src"], batch["src_len"], batch["tgt"], steps, 0.01).eval()


def torch_spellings(net, pairs, data):
  """What the PyTorch model spells for `pairs` by greedy decoding (benchmarks' `generate`)."""
  batch = course_ids(pairs, data)
  _, tgt = phonemes.course_vocabs(data.train)
  return [tgt.decode(row) for row in tb.generate(net, batch["src"], batch["src_len"])]


def torch_cnn(images, labels, batch_norm, steps=4):
  """TorchCNN after a few SGD steps in training mode (so BatchNorm has running statistics of
  its own and the accuracy is not chance by construction), returned in eval mode."""
  torch.manual_seed(0)
  net = tb.TorchCNN(batch_norm=batch_norm, dropout=0.0)
  optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
  x, y = nchw(images), torch.from_numpy(labels.astype(np.int64))
  for _ in range(steps):
    optimizer.zero_grad()
    torch.nn.NLLLoss()(net(x), y).backward()
    optimizer.step()
  return net.eval()


def nchw(images):
  """uint8 NHWC -> the course's float NCHW / 256 (benchmarks.torch_baselines.cnn_epoch_seconds)."""
  return torch.from_numpy(images.astype(np.float32) / 256.0).permute(0, 3, 1, 2).contiguous()


def save(net_or_state, path):
  state = net_or_state if isinstance(net_or_state, dict) else net_or_state.state_dict()
  torch.save(state, path)
  return path


# -- the proof: PyTorch's numbers, from hw2jax ---------------------------------------------------


@pytest.mark.slow
def test_a_pytorch_seq2seq_scores_in_hw2jax_exactly_what_it_spells_in_pytorch(
    tmp_path, p2g_folder, p2g_data):
  net = torch_seq2seq(p2g_data, attention=True)
  pt = save(net, tmp_path / "seq2seq.pt")
  args = [f"--from_torch={pt}", f"--data_path={p2g_folder}", f"--hidden_size={H}",
          "--attention", "--workdir=eval"]
  proc = run_cli("experiments.p2g", *args, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  run = tmp_path / "eval"
  for name in ("summary.json", "tables.md", "test_predictions.tsv", "attention.png"):
    assert (run / name).is_file(), name
  summary = read(run / "summary.json")
  expected = torch_spellings(net, p2g_data.test, p2g_data)
  golds = [w for _, w in p2g_data.test]
  assert len(set(expected)) > 3                      # real, varied spellings
  rows = [line.split("\t") for line in (run / "test_predictions.tsv").read_text().splitlines()]
  assert [r[2] for r in rows[1:]] == expected        # word for word
  assert summary["test"]["greedy"]["cer"] == pytest.approx(metrics.cer(expected, golds),
                                                           abs=1e-12)
  assert summary["test"]["greedy"]["wer"] == pytest.approx(metrics.wer(expected, golds),
                                                           abs=1e-12)
  valid = [w for _, w in p2g_data.valid]
  assert summary["valid"]["cer"] == pytest.approx(
      metrics.cer(torch_spellings(net, p2g_data.valid, p2g_data), valid), abs=1e-12)
  assert summary["checkpoint"]["path"] == str(pt.resolve()) and summary["attention"] is True
  assert summary["data"]["source"] == p2g_data.source
  assert "| test | greedy |" in (run / "tables.md").read_text()


@pytest.mark.slow
def test_a_pytorch_cnn_has_in_hw2jax_the_accuracy_it_has_in_pytorch(tmp_path):
  """BN+GAP: running statistics and the GAP head (the vanilla head's NCHW flatten order is
  checked logit for logit in tests/models/test_torch_port.py)."""
  npz = write_npz(tmp_path / "tiny.npz", **CNN_NPZ)
  data = intel.load_npz(npz)
  net = torch_cnn(*data.split("train"), batch_norm=True)
  pt = save(net, tmp_path / "bn.pt")
  proc = run_cli("experiments.cnn", f"--from_torch={pt}", "--model=bn_gap",
                 f"--data_path={npz}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  run = tmp_path / "runs" / "cnn" / "from_torch" / "bn"              # the default workdir
  summary = read(run / "summary.json")
  for split in ("val", "test"):
    images, labels = data.split(split)
    with torch.no_grad():
      log_probs = net(nchw(images))
    accuracy = float((log_probs.argmax(-1).numpy() == labels).mean())
    loss = float(torch.nn.NLLLoss()(log_probs, torch.from_numpy(labels.astype(np.int64))))
    assert summary[split]["accuracy"] == accuracy, split
    assert summary[split]["loss"] == pytest.approx(loss, rel=1e-5), split
  assert summary["model"] == "bn_gap" and summary["checkpoint"]["path"] == str(pt.resolve())
  table = (run / "tables.md").read_text().splitlines()
  assert table[0].startswith("| model |") and table[2].startswith("| BN+GAP | 3x3 |")
  assert not table[3].startswith("|")                            # one row


# -- mismatching checkpoints and bad files -------------------------------------------------------


def edited(state, rename=None, reshape=None):
  """A numpy state_dict with one key renamed ((old, new)) or one entry of another shape, as
  torch tensors (what torch.save wants)."""
  state = dict(state)
  if rename:
    state[rename[1]] = state.pop(rename[0])
  if reshape:
    key, shape = reshape
    state[key] = np.zeros(shape, np.float32)
  return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def bad_inputs(p2g_folder, npz):
  """{case: (CLI, its arguments, what the one error line must say)}; the files are written by
  `write_bad_inputs` into each case's folder."""
  p2g_cli = ["experiments.p2g", f"--data_path={p2g_folder}", f"--hidden_size={H}", "--attention"]
  return {
      "both flags": (["experiments.p2g", "--from_torch=a.pt", "--to_torch=b.pt"],
                     ["--from_torch and --to_torch cannot be combined"]),
      "missing file": (["experiments.p2g", "--from_torch=missing.pt"],
                       ["--from_torch=missing.pt: no such file"]),
      "not a torch file": (["experiments.cnn", "--from_torch=notes.pt"],
                           ["--from_torch=notes.pt is not a PyTorch file"]),
      "wrong key": ([*p2g_cli, "--from_torch=bad.pt"],
                    ["missing key 'decoder.lstm.weight_hh_l0'"]),
      "attention mismatch": ([*p2g_cli, "--from_torch=bad.pt"],
                             ["missing key 'decoder.attn.W_s.weight'", "--attention"]),
      "wrong shape": (["experiments.cnn", f"--data_path={npz}", "--from_torch=bad.pt"],
                      ["shape (512, 1000) of 'head.3.weight' but expected (512, 1024)"]),
      "NaN weights": (["experiments.cnn", f"--data_path={npz}", "--from_torch=bad.pt"],
                      ["--from_torch=bad.pt: entry 'blocks.0.block.0.weight' holds NaN/inf "
                       "(1 of 864 values); expected finite weights"]),
      "pickle protocol 4": ([*p2g_cli, "--from_torch=bad.pt"],       # no torch warnings either
                            ["--from_torch=bad.pt was pickled with protocol 4, which "
                             "torch.load(weights_only=True) cannot read"]),
  }


def write_bad_inputs(case, folder, p2g_data):
  folder.mkdir()
  (folder / "a.pt").write_bytes(b"")
  (folder / "notes.pt").write_text("not a checkpoint\n")
  if case in ("wrong key", "attention mismatch"):
    state = numpy_state(torch_seq2seq(p2g_data, attention=case == "wrong key", steps=0))
    rename = ("decoder.lstm.weight_hh_l0", "decoder.lstm.weight_hh")
    save(edited(state, rename=rename if case == "wrong key" else None), folder / "bad.pt")
  elif case == "wrong shape":
    save(edited(numpy_state(tb.TorchCNN()), reshape=("head.3.weight", (512, 1000))),
         folder / "bad.pt")
  elif case == "NaN weights":
    state = numpy_state(tb.TorchCNN())
    state["blocks.0.block.0.weight"][0, 0, 0, 0] = np.nan
    save(edited(state), folder / "bad.pt")
  elif case == "pickle protocol 4":
    torch.save({"w": torch.zeros(2)}, folder / "bad.pt", pickle_protocol=4)


@pytest.mark.slow
def test_bad_flags_files_and_checkpoints_are_one_line_exit_2_and_create_no_workdir(
    tmp_path, p2g_folder, p2g_data):
  """Each case in a folder of its own, all run at once: each is a process start that fails
  within seconds, and importing jax and torch is most of it."""
  cases = bad_inputs(p2g_folder, write_npz(tmp_path / "tiny.npz", **CNN_NPZ))
  before = {}
  for case in cases:
    write_bad_inputs(case, tmp_path / case, p2g_data)
    before[case] = checksums(tmp_path / case)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    procs = dict(zip(cases, pool.map(lambda c: run_cli(*cases[c][0], cwd=tmp_path / c),
                                     cases)))
  for case, proc in procs.items():
    assert proc.returncode == 2, f"{case}: {proc.stdout}{proc.stderr}"
    assert_clean_failure(proc, *cases[case][1])
    assert not (tmp_path / case / "runs").exists() and not (tmp_path / case / "b.pt").exists()
    assert checksums(tmp_path / case) == before[case], case


@pytest.mark.parametrize("content, fragment", [
    ("model", "holds pickled Python objects (torch.nn.modules.linear.Linear), not only tensors "
              "(a whole model?); save model.state_dict()"),
    ("numpy arrays", "holds pickled Python objects (numpy."),
    ("text", "is not a PyTorch file torch.load can read (UnpicklingError)"),
    ("training checkpoint", "entry 'epoch' is of type int, not a tensor"),
    ("list", "holds a list, not a state_dict; save model.state_dict()"),
    ("empty dict", "holds an empty dict, not a state_dict"),
    ("empty file", "is not a PyTorch file torch.load can read (EOFError"),
    ("zip", "is not a PyTorch file torch.load can read (RuntimeError"),
    ("folder", "is a folder, not a file"),
    ("os.system pickle", f"holds code (it calls {os.system.__module__}.system), which "
                         "torch.load(weights_only=True) refused to run; only tensors are read"),
    ("os.system zip", f"holds code (it calls {os.system.__module__}.system), which "
                      "torch.load(weights_only=True) refused to run"),
    ("protocol 4", "was pickled with protocol 4, which torch.load(weights_only=True) cannot "
                   "read; save it with torch.save's default pickle_protocol"),
    ("os.system raw pickle, protocol 4", f"holds code (it calls {os.system.__module__}.system)"),
    ("int key", "entry key 1 (int) is not a parameter name, so this is no state_dict"),
    ("named pipe", "x.pt: is a named pipe (FIFO), not a regular file"),
])
def test_what_is_not_a_state_dict_is_one_line_and_warns_nothing(tmp_path, recwarn, content,
                                                                fragment):
  path = tmp_path / "x.pt"
  linear = torch.nn.Linear(2, 3)
  if content == "model":
    torch.save(linear, path)
  elif content == "numpy arrays":
    torch.save({"w": np.zeros(2)}, path)
  elif content == "text":
    path.write_text("not a checkpoint\n")
  elif content == "training checkpoint":
    torch.save({"model": linear.weight.detach(), "epoch": 3}, path)
  elif content == "list":
    torch.save([linear.weight.detach()], path)
  elif content == "empty dict":
    torch.save({}, path)
  elif content == "empty file":
    path.write_bytes(b"")
  elif content == "zip":
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
      z.writestr("a", "b")
  elif content == "os.system pickle":
    path.write_bytes(pickle.dumps(CallsSystem(), protocol=2))
  elif content == "os.system zip":
    torch.save(CallsSystem(), path)
  elif content == "protocol 4":
    torch.save({"w": linear.weight.detach()}, path, pickle_protocol=4)
  elif content == "os.system raw pickle, protocol 4":
    path.write_bytes(pickle.dumps(CallsSystem(), protocol=4))
  elif content == "int key":
    torch.save({1: linear.weight.detach()}, path)
  elif content == "named pipe":
    os.mkfifo(path)                 # opening it would wait for a writer: the test would hang
  else:
    path.mkdir()
  with pytest.raises(UserError) as e:
    torch_files.read_state_dict(path)
  assert "\n" not in str(e.value) and fragment in str(e.value), str(e.value)
  assert not [str(w.message) for w in recwarn]


class CallsSystem:
  """Unpickled by plain pickle, this runs a shell command."""

  def __reduce__(self):
    return os.system, ("echo unpickled",)


@pytest.mark.parametrize("dtype, value, fragment", [
    ("int32", [1, 2], "entry 'w' is int32; expected floating-point weights (float16, bfloat16, "
                      "float32, float64)"),
    ("complex64", [1, 2], "entry 'w' is complex64; expected floating-point weights"),
    ("float8_e4m3fn", [1, 2], "entry 'w' is float8_e4m3fn; expected floating-point weights"),
    ("bool", [True, False], "entry 'w' is bool; expected floating-point weights"),
    ("float32", [1, float("nan")], "entry 'w' holds NaN/inf (1 of 2 values); expected finite "
                                   "weights"),
    ("float16", [float("inf"), 1], "entry 'w' holds NaN/inf (1 of 2 values)"),
])
def test_weights_that_are_not_finite_floats_are_one_line_naming_the_entry(
    tmp_path, recwarn, dtype, value, fragment):
  """An int tensor would be cast to other weights, complex would lose its imaginary part (with
  a numpy warning), NaN would be scored as NaN: none of them is the model that was saved."""
  path = save({"ok": torch.zeros(2), "w": torch.tensor(value).to(getattr(torch, dtype))},
              tmp_path / "x.pt")
  with pytest.raises(UserError) as e:
    torch_files.read_state_dict(path)
  assert str(e.value).startswith(f"--from_torch={path}: {fragment}"), str(e.value)
  assert "\n" not in str(e.value) and not [str(w.message) for w in recwarn]


def test_every_float_precision_and_batchnorms_int_step_count_are_read(tmp_path):
  """float16/bfloat16/float32/float64 weights and PyTorch's int64 num_batches_tracked (which
  the import ignores) are what real state_dicts hold."""
  state = {"a": torch.ones(2, dtype=torch.float16), "b": torch.ones(2, dtype=torch.bfloat16),
           "c": torch.ones(2), "d": torch.ones(2, dtype=torch.float64),
           "bn.num_batches_tracked": torch.tensor(7)}
  back = torch_files.read_state_dict(save(state, tmp_path / "x.pt"))
  assert {k: v.dtype.name for k, v in back.items()} == {
      "a": "float16", "b": "float32", "c": "float32", "d": "float64",
      "bn.num_batches_tracked": "int64"}


def test_without_pytorch_the_flags_say_how_to_install_it(tmp_path, monkeypatch):
  path = save({"w": torch.zeros(2)}, tmp_path / "w.pt")
  monkeypatch.setitem(sys.modules, "torch", None)          # `import torch` fails
  with pytest.raises(UserError) as e:
    torch_files.read_state_dict(path)
  message = str(e.value)
  assert message.startswith("--from_torch needs PyTorch") and "\n" not in message
  assert "./launch.sh" in message and \
      "pip install torch --index-url https://download.pytorch.org/whl/cpu" in message
  assert "[bench]" not in message                 # PyPI's torch on Linux: the CUDA build
  with pytest.raises(UserError, match=r"^--to_torch needs PyTorch"):
    torch_files.write_state_dict({"w": np.zeros(2, np.float32)}, tmp_path / "out.pt")


def test_a_written_state_dict_reads_back_and_is_never_overwritten(tmp_path):
  arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
            "bn.num_batches_tracked": np.array(7, np.int64)}
  path = torch_files.write_state_dict(arrays, tmp_path / "new" / "folder" / "x.pt")
  back = torch_files.read_state_dict(path)
  assert back.keys() == arrays.keys()
  for k in arrays:
    np.testing.assert_array_equal(back[k], arrays[k])
    assert back[k].dtype == arrays[k].dtype
  before = path.read_bytes()
  with pytest.raises(UserError, match="already exists; give a new file name"):
    torch_files.write_state_dict({"b": np.zeros(1, np.float32)}, path)
  assert path.read_bytes() == before
  assert sorted(p.name for p in path.parent.iterdir()) == ["x.pt"]      # no temp file left


def dead_pid() -> int:
  """The id of a process that has ended (and been reaped)."""
  proc = subprocess.Popen([sys.executable, "-c", ""])
  proc.wait()
  return proc.pid


def test_an_export_removes_temp_files_of_dead_processes_and_keeps_live_ones(tmp_path):
  """kill -9 during --to_torch leaves `.<name>.tmp-<pid>` (`.<name>.tmp<pid>` before the pid
  had a dash); the next export to the same file removes it, but not a live process's write in
  progress nor another target's."""
  dead, live = dead_pid(), os.getppid()
  left = [f".x.pt.tmp-{dead}", f".x.pt.tmp{dead}", f".x.pt.tmp-{live}", f".y.pt.tmp-{dead}"]
  for name in left:
    (tmp_path / name).write_bytes(b"half a checkpoint")
  torch_files.write_state_dict({"w": np.zeros(2, np.float32)}, tmp_path / "x.pt")
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      [f".x.pt.tmp-{live}", f".y.pt.tmp-{dead}", "x.pt"])


def test_a_failed_write_leaves_no_temp_file_and_no_target(tmp_path, monkeypatch):
  """torch.save reports a full disk as a RuntimeError after writing part of the file."""
  written = []

  def full_disk(obj, f):          # (the temp file, opened by write_state_dict: never a link)
    written.append(os.path.basename(f.name))
    f.write(b"half a checkpoint")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

  monkeypatch.setattr(torch, "save", full_disk)
  with pytest.raises(UserError) as e:
    torch_files.write_state_dict({"w": np.zeros(2, np.float32)}, tmp_path / "x.pt")
  assert str(e.value) == (f"--to_torch={tmp_path / 'x.pt'} could not be written (torch.save: "
                          "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs "
                          f"598); check the free space in {tmp_path}")
  assert written == [f".x.pt.tmp-{os.getpid()}"]             # whose it is: this process's
  assert list(tmp_path.iterdir()) == []


# -- the workdir of an evaluation ---------------------------------------------------------------


def test_an_evaluation_workdir_is_reused_only_by_the_same_checkpoint(tmp_path, p2g_data):
  """Same file, settings and data: printed, not recomputed; other decoding: decoded again (the
  previous evaluation archived); another checkpoint: refused unless --fresh, which archives the first evaluation."""
  config = p2g.Config(hidden_size=H, attention=True)
  first_pt = save(torch_seq2seq(p2g_data, attention=True, steps=5), tmp_path / "a.pt")
  second_pt = save(torch_seq2seq(p2g_data, attention=True, steps=5, seed=1), tmp_path / "b.pt")
  workdir, logs = tmp_path / "w", []
  evaluate = lambda path, fresh=False, decoding=p2g_evaluation.Decoding(): tc.evaluate_p2g(
      *tc.read_checkpoint(path), config, p2g_data, workdir, decoding=decoding, fresh=fresh,
      log=logs.append)
  first = evaluate(first_pt)
  assert first.checkpoint.path == str(first_pt.resolve()) and set(first.test) == {"greedy"}
  assert read(workdir / "summary.json")["test"].keys() == {"greedy"}
  before = checksums(workdir)
  assert evaluate(first_pt) == first
  assert any("already holds this evaluation" in line for line in logs)
  assert checksums(workdir) == before
  plain = p2g.Config(hidden_size=H)                    # the checkpoint has attention
  with pytest.raises(UserError, match="unexpected key 'decoder.attn.W_s.weight'"):
    tc.evaluate_p2g(*tc.read_checkpoint(first_pt), plain, p2g_data, workdir)
  assert checksums(workdir) == before

  beam = evaluate(first_pt, decoding=p2g_evaluation.Decoding(beam=2))
  assert set(beam.test) == {"greedy", "beam2"} and beam.test["greedy"] == first.test["greedy"]
  assert "| test | beam 2 (best beam) |" in (workdir / "tables.md").read_text()
  (greedy_only,) = (workdir / "archive").iterdir()        # the first evaluation, kept
  assert read(greedy_only / "summary.json")["test"].keys() == {"greedy"}

  with pytest.raises(UserError) as e:
    evaluate(second_pt)
  assert "\n" not in str(e.value) and "holds a run" in str(e.value)
  assert "other settings" in str(e.value)
  assert "a.pt" in str(e.value) and "--fresh" in str(e.value)
  second = evaluate(second_pt, fresh=True)
  assert second.checkpoint.path.endswith("b.pt")
  archived = sorted((workdir / "archive").iterdir())
  assert len(archived) == 2 and read(archived[1] / "summary.json")["checkpoint"]["path"] == str(
      first_pt.resolve())


def test_one_mode_at_a_time():
  tc.one_mode(from_torch=None, to_torch="x.pt", predict=None)
  with pytest.raises(UserError, match="^--to_torch and --predict cannot be combined"):
    tc.one_mode(from_torch=None, to_torch="x.pt", predict="k æ t")


# -- --to_torch ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_exported_p2g_run_loads_strictly_into_pytorch_and_scores_what_the_run_scored(
    tmp_path, p2g_folder, p2g_data):
  config = p2g.Config(attention=True, hidden_size=H, batch_size=16, widths=1, epochs=1,
                      tensorboard=False)
  trained = p2g.train_and_evaluate(config, p2g_data, tmp_path / "run", log=lambda line: None)
  exported = run_cli("experiments.p2g", f"--data_path={p2g_folder}", "--workdir=run",
                     "--to_torch=out/run.pt", cwd=tmp_path)
  assert exported.returncode == 0, exported.stderr
  pt = tmp_path / "out" / "run.pt"
  src, tgt = phonemes.course_vocabs(p2g_data.train)
  net = tb.Seq2Seq(len(src), len(tgt), True, hidden=H)
  net.load_state_dict(torch.load(pt, weights_only=True), strict=True)

  # --from_torch's library call (its CLI runs above): it shares this process's compiled decoders
  again = tc.evaluate_p2g(*tc.read_checkpoint(pt), config, p2g_data, tmp_path / "eval",
                          log=lambda line: None)
  assert again.test["greedy"] == trained.test["greedy"]
  assert again.valid.cer == trained.best_val.val_cer
  assert (torch_spellings(net, p2g_data.test, p2g_data)
          == [r.split("\t")[2] for r in
              (tmp_path / "run" / "test_predictions.tsv").read_text().splitlines()[1:]])

  before = pt.read_bytes()
  with pytest.raises(UserError, match=r"^--to_torch=.*run\.pt already exists; give a new file"):
    tc.export_p2g(tmp_path / "run", p2g_data, pt)
  assert pt.read_bytes() == before
  other = write_p2g_folder(tmp_path / "other", n_train=10, n_valid=2, n_test=2, seed=5)
  with pytest.raises(UserError, match="give other vocabularies than .*vocab.json; give the "
                                      "--data_path the run was trained on"):
    tc.export_p2g(tmp_path / "run", phonemes.load_tsv_folder(other), tmp_path / "x.pt",
                  log=lambda s: None)
  assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_an_exported_cnn_run_loads_strictly_into_torchcnn_with_its_step_count(tmp_path):
  npz = write_npz(tmp_path / "tiny.npz", **CNN_NPZ)
  data = intel.load_npz(npz)
  trained = cnn.train_and_evaluate(cnn.Config(model="bn_gap", epochs=1, batch_size=6,
                                              tensorboard=False), data, tmp_path / "run",
                                   log=lambda line: None)
  exported = run_cli("experiments.cnn", "--workdir=run", "--to_torch=bn.pt", cwd=tmp_path)
  assert exported.returncode == 0, exported.stderr
  state = torch.load(tmp_path / "bn.pt", weights_only=True)
  net = tb.TorchCNN(batch_norm=True).eval()
  net.load_state_dict(state, strict=True)
  assert int(state["blocks.0.block.1.num_batches_tracked"]) == 2         # 12 images / batch 6
  images, labels = data.split("test")
  with torch.no_grad():
    accuracy = float((net(nchw(images)).argmax(-1).numpy() == labels).mean())
  assert trained.best_val.test_accuracy == accuracy
  config = cnn.Config(model="bn_gap")
  again = tc.evaluate_cnn(*tc.read_checkpoint(tmp_path / "bn.pt"), config, data,
                          tmp_path / "eval", log=lambda line: None)
  assert again.test.accuracy == accuracy
  for workdir in (tmp_path / "none", tmp_path / "eval"):     # nothing, an evaluation
    with pytest.raises(UserError, match="holds no trained CNN run"):
      tc.export_cnn(workdir, tmp_path / "x.pt")
  assert not (tmp_path / "none").exists() and not (tmp_path / "x.pt").exists()
