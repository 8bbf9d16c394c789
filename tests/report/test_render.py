"""REPORT.md from hand-made results, without any training: every table and figure of the parts
that ran, mean ± std over seeds, skipped and kept parts, and the completeness check."""

import dataclasses

import pytest

from helpers import cnn_summary, p2g_summary
from hw2jax.recipes import p2g
from hw2jax.recipes.hopfield import capacity, claims, retrieval
from hw2jax.recipes.hopfield import run as hopfield
from hw2jax.report import render
from hw2jax.report import results as R
from hw2jax.report.config import Config, Q2_RUNS, Schedule

DEVICE = R.DeviceInfo(platform="cpu", device_kind="cpu", device_count=1, process_count=1,
                      jax_version="0.0", python="3.11", host_cpus=2, devices=["cpu:0"])


def q1() -> R.Q1:
  ret = retrieval.Result(
      source="6 random +-1 patterns", num_patterns=6, dim=12,
      results={"mask": {"0.1": retrieval.Scores(0.1, 1.0, 1.0, 0.01, 10.0, 5.0, 0.0, 2)}},
      recall_definition="error < 0.05", figures=["retrieval_mask.png", "energy.png"])
  cap = capacity.Result(
      dims=[8], num_patterns=[2, 4], betas=[1.0], recall_rate={"8": {"2": [1.0], "4": [0.5]}},
      per_beta={"1": capacity.BetaCapacity(1.0, {"8": capacity.DimCapacity(
          3.0, False, capacity.Theorem3(1.1, 2.0, None))}, None)},
      figures=["capacity.png"], recall_definition="error < 0.05", theorem3="Theorem 3")
  summary = hopfield.HopfieldSummary(
      config=hopfield.Config(check_trials=4), device="cpu: x1", jax_version="0.0",
      check=claims.Claims(all_ok=True, rows=[]), retrieval=ret, capacity=cap)
  return R.Q1(status=R.DONE, dir="q1", summary=summary, reused=False, check_table="the table")


def q2(seeds=(42,)) -> R.Q2:
  runs = [R.CnnRun(model=m, lr=lr, seed=s, dir=f"q2/{m}-lr{lr:g}/seed{s}",
                   summary=cnn_summary(m, lr, s, val=0.7 + 0.1 * (s - 42)), wall_seconds=1.0)
          for m, lr in Q2_RUNS for s in seeds]
  params = {"vanilla": R.ParamCount(5_340_742, 5_340_742),
            "bn_gap": R.ParamCount(755_718, 755_718),
            "vanilla_nopool": R.ParamCount(302_612_038, None)}
  return R.Q2(status=R.DONE, data=runs[0].summary.data, epochs=2, runs=runs, params=params,
              figure="figures/q2_val_accuracy.png", seeds=list(seeds))


def ablations(seeds=(42,)) -> R.Ablations:
  runs = [R.AblationRun(kernel_size=3, maxpool=pool, seed=s, dir=f"q2_ablations/k3-{pool}/seed{s}",
                        summary=cnn_summary("bn_gap", 0.01, s), wall_seconds=1.0)
          for pool in (True, False) for s in seeds]
  return R.Ablations(status=R.DONE, data=runs[0].summary.data, epochs=1, runs=runs,
                     vanilla_nopool_params=302_612_038, seeds=list(seeds))


def q3(seeds=(42,)) -> R.Q3:
  runs = [R.P2GRun(attention=a, seed=s, dir=f"q3/{'attention' if a else 'noattention'}/seed{s}",
                   summary=p2g_summary(attention=a, seed=s, beam=(0.2, 0.7),
                                       nucleus=(0.3, 0.8, 0.6) if a else None), wall_seconds=2.0)
          for a in (False, True) for s in seeds]
  return R.Q3(status=R.DONE, data=p2g.P2GDataSizes("tsv:p2g", 32, 8, 8, 16, 19, course=True),
              epochs=2,
              runs=runs, course_vocab_params={"noattention": (256_093, 257_117),
                                              "attention": (321_757, 322_781)},
              seeds=list(seeds))


def results(seeds=(42,), quick=False, **parts) -> R.Results:
  meta = R.Meta(command="python -m experiments.report", device=DEVICE, quick=quick,
                seeds=list(seeds), parts=["q1", "q2", "q2_ablations", "q3"], date="today",
                intel_data="intel.npz", p2g_data="p2g", seed_runs_seconds=10.0,
                wall_seconds=12.0)
  every = {"q1": q1(), "q2": q2(seeds), "q2_ablations": ablations(seeds), "q3": q3(seeds)}
  every.update(parts)
  return R.Results(meta=meta, config=Config(seeds=tuple(seeds)), schedule=Schedule(), **every)


def with_figures(res: R.Results, root) -> None:
  """Creates every PNG the report links, so that it is complete."""
  text = render.render(res)
  for link in render.IMAGE_RE.findall(text) + render.LINK_RE.findall(text):
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).write_bytes(b"png")


def test_a_report_with_every_part_is_complete(tmp_path):
  res = results()
  with_figures(res, tmp_path)
  text, missing = render.report(res, tmp_path)
  assert missing == [] and "Complete: every table" in text
  for heading in [h for hs in render.REQUIRED.values() for h in hs] + ["## Run times"]:
    assert heading in text
  assert "| vanilla | 5,340,742 | 5,340,742 | yes |" in text and "All checks pass." in text
  assert "| 3.3 | attention | nucleus p=0.8, 3 samples |" in text
  assert "[curves](q2_ablations/k3-True/seed42/curves.png)" in text
  assert len(render.IMAGE_RE.findall(text)) == 3 + 5 + 3
  # The run-times table names the pooling as every log and title does.
  assert "| BN+GAP k3 no max-pool |" in text and "| BN+GAP k3 max-pool |" in text


def test_several_seeds_give_mean_and_std_and_the_first_seeds_figures(tmp_path):
  text = render.render(results(seeds=(42, 43)))
  row = next(line for line in text.splitlines() if line.startswith("| vanilla | 0.1 |"))
  assert "0.7500 ± 0.0707" in row
  assert "seeds: 42, 43 (tables: mean ± sample standard deviation" in text
  figures = render.IMAGE_RE.findall(text)
  assert all("seed43" not in f for f in figures) and any("seed42" in f for f in figures)


def test_skipped_and_unrequested_parts_say_why_and_need_no_sections(tmp_path):
  res = results(q2=R.Q2(status=R.SKIPPED, reason="no Intel image data found"),
                q2_ablations=R.Ablations(status=R.NOT_REQUESTED, reason="not in --parts"))
  with_figures(res, tmp_path)
  text, missing = render.report(res, tmp_path)
  assert missing == [] and "**skipped**: no Intel image data found" in text
  assert "### Table 2.1" not in text and "| Q2.4 (kernel-size and pooling ablations) | not " \
                                        "requested: not in --parts |" in text


def test_parts_kept_from_an_earlier_invocation_are_marked_with_their_seeds():
  kept = dataclasses.replace(q3(seeds=(7,)), earlier=True)
  text = render.render(results(q3=kept))
  assert "| Q3 (phoneme-to-grapheme) | done (kept from an earlier invocation) |" in text
  assert "- seeds: Q2 42; Q2.4 42; Q3 7" in text and "(seed 7)" in text


def test_the_completeness_check_names_missing_figures_and_sections(tmp_path):
  res = results()
  with_figures(res, tmp_path)
  (tmp_path / "q3/attention/seed42/attention.png").unlink()
  text = render.render(res)
  assert render.missing_items(text, res, tmp_path) == [
      "figure q3/attention/seed42/attention.png"]
  cut = text.replace("### Table 2.4", "### Something else")
  assert "Q2.4 (kernel-size and pooling ablations): section '### Table 2.4'" in \
      render.missing_items(cut, res, tmp_path)


@pytest.mark.parametrize("quick", [True, False])
def test_quick_runs_are_labelled_as_such(quick):
  text = render.render(results(quick=quick))
  assert ("QUICK RUN" in text) == quick and (text.count("*Quick run:") == 4) == quick


def test_report_json_reads_back_as_the_same_results():
  res = results(seeds=(42, 43))
  assert R.Results.from_json(res.to_json()) == res


def test_the_seed_runs_sentence_counts_only_q1_q2_q3_and_says_so():
  spans = {"q1": (1, 10), "q2": (10, 30), "q2_ablations": (30, 100), "q3": (100, 120)}
  res = results(**{p: dataclasses.replace(r, started_seconds=spans[p][0],
                                          finished_seconds=spans[p][1])
                   for p, r in (("q1", q1()), ("q2", q2()), ("q2_ablations", ablations()),
                                ("q3", q3()))})
  res = dataclasses.replace(res, meta=dataclasses.replace(res.meta, seed_runs_seconds=49.0))
  text = render.render(res)
  assert ("- the seed report's own parts (Q1, Q2, Q3) ran for 49s: the time at least one of "
          "them was running (the sum of their spans below), without the Q2.4 ablations\n") in text
  overlap = dataclasses.replace(res, meta=dataclasses.replace(res.meta, overlap=True))
  assert "union of their spans below); Q3 ran in a second thread" in render.render(overlap)
  kept = dataclasses.replace(res, q1=q1())
  assert "own parts (Q2, Q3) ran for" in render.render(kept)
  assert "own parts" not in render.render(results())       # none ran in this invocation


def test_table_2_1_of_a_short_run_says_its_epochs_and_explains_no_dash_it_lacks():
  text = render.render(results())             # the runs trained 2 epochs
  assert "| val acc (2 epochs) | test acc (2 epochs) | seed val acc (40 epochs) |" in text
  assert "— in a seed column" not in text.split("### Table 2.1")[1].split("###")[0]
