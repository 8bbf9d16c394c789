"""REPORT.md from the report's results: pure functions (results in, markdown out), so that the
report can be rendered and checked for completeness without any training.

Every table of the seed report beside our numbers (mean ± std over seeds), every figure as a
relative PNG link, parameter counts, the Q2.4 ablations, run times and the device. The tables
of Q2 and Q3 are the experiments' own (`cnn_tables.table_2_1`, `p2g.tables_3`), as their CLIs write
them. `missing_items` is the completeness check: figures linked but absent, and the required
headings of every part that ran.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from hw2jax import markdown
from hw2jax.recipes import cnn, cnn_tables, p2g
from hw2jax.models import registry
from hw2jax.report import results as R
from hw2jax.report.config import ABLATION_LR, PART_TITLES, PARTS, SEED_PARTS

T = TypeVar("T")
# A markdown line that must be present for each part that ran (the completeness check).
REQUIRED = {
    "q1": ("### Q1 claims checked", "### Retrieval", "### Figures Q1"),
    "q2": ("### Table 2.1", "### Table 2.3", "### Figures 2.1-2.3"),
    "q2_ablations": ("### Table 2.4",),
    "q3": ("### Tables 3.1-3.3", "### Figures 3.1-3.2"),
}
IMAGE_RE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
LINK_RE = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+\.png)\)")   # figures linked, not shown


def report(results: R.Results, workdir: str | Path) -> tuple[str, list[str]]:
  """REPORT.md (with its completeness section) and what is missing from it."""
  body = render(results)
  missing = missing_items(body, results, Path(workdir))
  if missing:
    tail = ("## Completeness\n\n**Incomplete**: the following are missing:\n\n"
            + "".join(f"- {m}\n" for m in missing))
  else:
    tail = (f"## Completeness\n\nComplete: every table of the parts that ran and all "
            f"{len(IMAGE_RE.findall(body))} figures are present.\n")
  return body + "\n" + tail, missing


def missing_items(text: str, results: R.Results, workdir: Path) -> list[str]:
  """What REPORT.md lacks: figures it links that do not exist in `workdir`, and the sections
  of every part that ran whose headings are absent."""
  links = dict.fromkeys(IMAGE_RE.findall(text) + LINK_RE.findall(text))   # each once, in order
  missing = [f"figure {link}" for link in links if not (workdir / link).is_file()]
  for part, headings in REQUIRED.items():
    if results.part(part).done:
      missing += [f"{PART_TITLES[part]}: section '{h}'" for h in headings if h not in text]
  return missing


def render(results: R.Results) -> str:
  """REPORT.md without the completeness section."""
  meta = results.meta
  out = ["# hw2jax report: IST Deep Learning 2024/25, Homework 2\n"]
  if meta.quick:
    out.append("> **QUICK RUN (`--quick`)**: epochs and data are shrunk so that the whole report "
               "runs on a laptop CPU in minutes. Every number below comes from that shrunk "
               "schedule and is **not** comparable with the seed report; run without `--quick` "
               "for the course's settings.\n")
  out.append(f"- generated {meta.date}" + (f" by `{meta.command}`" if meta.command else "")
             + f"\n- device: {meta.device.describe()}\n" + _seeds_line(results)
             + "- wall time of this invocation (data loading, compilation, training, evaluation, "
             f"plots): {markdown.seconds(meta.wall_seconds)}; a rerun of the same command "
             "resumes every run from its checkpoint\n" + _seed_runs_line(results))
  out.append(markdown.table(
      ["part", "status", "wall time (this invocation)", "from - to (since the start)"],
      [[PART_TITLES[p], _status_cell(results.part(p)),
        markdown.seconds(results.part(p).wall_seconds), _span(results.part(p))]
       for p in PARTS]))
  for part, fn in (("q1", _render_q1), ("q2", _render_q2), ("q2_ablations", _render_ablations),
                   ("q3", _render_q3)):
    r = results.part(part)
    out.append(f"## {PART_TITLES[part]}\n")
    if not r.done:
      out.append(f"**{r.status}**: {r.reason or ''}\n")
      continue
    out.append(fn(r, results))
  out.append(_render_times(results))
  return "\n".join(out)


def _seed_runs_line(results: R.Results) -> str:
  """How long the seed report's own parts took in this invocation: the union of their spans
  (run.seed_runs_seconds), which leaves out the Q2.4 ablations run between them."""
  meta = results.meta
  ran = [p for p in SEED_PARTS if results.part(p).started_seconds is not None]
  if meta.seed_runs_seconds is None or not ran:
    return ""
  names = ", ".join(p.upper() for p in ran)
  which = "the time at least one of them was running"
  if meta.overlap:
    return (f"- the seed report's own parts ({names}) ran for "
            f"{markdown.seconds(meta.seed_runs_seconds)}: {which} (the union of their spans "
            "below); Q3 ran in a second thread beside the other parts (`--overlap`), so the "
            "Q2.4 ablations' time beside Q3 is in it\n")
  return (f"- the seed report's own parts ({names}) ran for "
          f"{markdown.seconds(meta.seed_runs_seconds)}: {which} (the sum of their spans below), "
          "without the Q2.4 ablations\n")


def _seeds(r: R.Part, results: R.Results) -> list[int]:
  """The seeds of one part's runs (a part kept from an earlier invocation may have others)."""
  return r.seeds or results.meta.seeds


def _seeds_line(results: R.Results) -> str:
  per_part = {p: _seeds(results.part(p), results) for p in ("q2", "q2_ablations", "q3")
              if results.part(p).done}
  distinct = {tuple(v) for v in per_part.values()} or {tuple(results.meta.seeds)}
  if len(distinct) > 1:
    return "- seeds: " + "; ".join(f"{PART_TITLES[p].split(' ')[0]} {', '.join(map(str, v))}"
                                   for p, v in per_part.items()) + \
        " (tables: mean ± sample standard deviation over a part's seeds; figures: its first)\n"
  seeds = list(distinct.pop())
  return (f"- seeds: {', '.join(map(str, seeds))}"
          + (" (tables: mean ± sample standard deviation over the seeds; figures: seed "
             f"{seeds[0]})" if len(seeds) > 1 else "") + "\n")


def _span(r: R.Part) -> str:
  if r.started_seconds is None:
    return markdown.DASH
  return f"{markdown.seconds(r.started_seconds)} - {markdown.seconds(r.finished_seconds)}"


def _status_cell(r: R.Part) -> str:
  if r.done:
    return "done (kept from an earlier invocation)" if r.earlier else "done"
  return f"{r.status}: {r.reason or ''}"


def _quick_note(results: R.Results, text: str) -> str:
  return (f"\n*Quick run: {text}; not comparable with the seed report.*\n"
          if results.meta.quick else "")


def _image(caption: str, link: str) -> str:
  return f"![{caption}]({link})\n\n*{caption}*\n"


def _epochs(n: int) -> str:
  return f"{n} epoch" + ("" if n == 1 else "s")


def _group(runs: Sequence[T], key: Callable[[T], tuple]) -> dict[tuple, list[T]]:
  groups: dict[tuple, list[T]] = {}
  for r in runs:
    groups.setdefault(key(r), []).append(r)
  return groups


# ----------------------------------------------------------------------------------------------
# The parts


def _render_q1(r: R.Q1, results: R.Results) -> str:
  s = r.summary
  out = ["### Q1 claims checked\n",
         "Each claim of Q1 measured on random problems; the two controls are deliberately wrong "
         "updates that the same checks must reject.\n",
         "```\n" + (r.check_table or "").rstrip() + "\n```\n",
         "All checks pass.\n" if s.check and s.check.all_ok else
         "**Some checks FAILED** (see the table).\n",
         _quick_note(results, f"{s.config.check_trials} random problems per claim (course: "
                              f"64), capacity up to N={s.config.capacity_max_patterns:,}")]
  ret, cap = s.retrieval, s.capacity
  if ret:
    rows = [[kind, beta, markdown.fmt(m.recall_rate, 3), markdown.fmt(m.mean_relative_error, 3),
             f"{m.energy_first:.4g} -> {m.energy_last:.4g}", m.updates_until_eps]
            for kind, per_beta in ret.results.items() for beta, m in per_beta.items()]
    out += ["### Retrieval\n",
            f"Stored patterns: {ret.source} (N={ret.num_patterns}, D={ret.dim}); recalled: "
            f"{ret.recall_definition}.\n",
            markdown.table(["queries", "beta", "recall rate", "mean rel. error",
                            "mean energy first -> last", "updates until eps"], rows)]
  if cap:
    rows = [[beta, markdown.fmt(info.log_capacity_per_dim, 3)]
            + [_capacity_cell(info.by_dim[str(dim)]) for dim in cap.dims]
            for beta, info in cap.per_beta.items()]
    out += ["### Capacity\n",
            f"N at which the recall rate falls below 90% ({cap.recall_definition}); '>=' where "
            "it never fell on the grid.\n",
            markdown.table(["beta", "log N per dimension"] + [f"D={d}" for d in cap.dims],
                           rows)]
  out.append("### Figures Q1\n")
  for fig in (ret.figures if ret else []) + (cap.figures if cap else []):
    out.append(_image(f"Q1: {fig[:-4].replace('_', ' ')}", f"{r.dir}/{fig}"))
  return "\n".join(out)


def _capacity_cell(c) -> str:
  if c.capacity_90 is None:
    return "< 2"
  return (">= " if c.at_least else "") + f"{c.capacity_90:,.0f}"


def _render_q2(r: R.Q2, results: R.Results) -> str:
  data, first = r.data, _seeds(r, results)[0]
  out = [f"Data: {data.source} ({data.train:,} train / {data.val:,} validation / "
         f"{data.test:,} test images). {_epochs(r.epochs)}, batch 8, plain SGD, dropout 0.1, "
         "PyTorch-style initialisation; accuracies of the last epoch (as the seed report), and "
         "the test accuracy of the best-validation epoch beside them. "
         f"{cnn_tables.pixels_note(r.runs[0].summary.config.pixels if r.runs else 'correct')}\n",
         "### Table 2.1\n"]
  groups = _group(r.runs, lambda x: (x.model, x.lr))
  out.append(cnn_tables.table_2_1([
      cnn_tables.TableRow(model, lr, [x.summary for x in runs],
                   next((f"{x.dir}/{cnn.CURVES}" for x in runs if x.seed == first), None))
      for (model, lr), runs in groups.items()]))
  out.append(_quick_note(results, f"{_epochs(r.epochs)} on {data.train:,} training images"))
  out.append("### Table 2.3\n")
  p = r.params
  out.append(cnn_tables.table_2_3({m: p[m].ours for m in registry.families() if m in p}))
  out.append(f"Without max-pooling the vanilla model's flatten head would see 48x48x128 "
             f"features: {p['vanilla_nopool'].ours:,} parameters, so the pooling ablations "
             "use the BN+GAP model (Table 2.4).\n")
  out.append("### Figures 2.1-2.3\n")
  number = 1
  for x in (x for x in r.runs if x.seed == first):
    if x.model == "vanilla":
      caption = f"Figure 2.{number}: vanilla CNN, lr {x.lr:g} (seed {first})"
      number += 1
    else:
      caption = f"BN+GAP CNN, lr {x.lr:g} (seed {first})"
    out.append(_image(caption, f"{x.dir}/{cnn.CURVES}"))
  out.append(_image(f"All four runs of Table 2.1 (seed {first})", r.figure))
  return "\n".join(out)


def _render_ablations(r: R.Ablations, results: R.Results) -> str:
  data = r.data
  out = ["### Table 2.4\n",
         f"The BN+GAP model (global average pooling makes its head independent of the "
         f"feature-map size), lr {ABLATION_LR:g}, {_epochs(r.epochs)}, batch 8, SGD, on "
         f"{data.source} ({data.train:,} / {data.val:,} / {data.test:,} images). "
         f"Without max-pooling the vanilla flatten head would hold "
         f"{r.vanilla_nopool_params:,} parameters. "
         f"{cnn_tables.pixels_note(r.runs[0].summary.config.pixels if r.runs else 'correct')}\n"]
  rows = []
  for (k, pool), runs in _group(r.runs, lambda x: (x.kernel_size, x.maxpool)).items():
    summaries = [x.summary for x in runs]
    params = sorted({s.trainable_params for s in summaries})
    rows.append([
        f"{k}x{k}", "yes" if pool else "no", " / ".join(f"{v:,}" for v in params),
        markdown.mean_std([s.final.val_accuracy for s in summaries]),
        markdown.mean_std([s.final.test_accuracy for s in summaries]),
        cnn_tables.statuses([(x.seed, x.summary.status) for x in runs]),
        markdown.mean_std([s.train_seconds_total / max(1, s.epochs_done) for s in summaries], 1)
        + " s",
        ("(the Q2 BN+GAP run) " if runs[0].shared_with_q2 else "")
        + f"[curves]({runs[0].dir}/{cnn.CURVES})"])
  out.append(markdown.table(["kernel", "max-pool", "parameters", "val acc", "test acc", "status",
                             "time per epoch", f"run (seed {_seeds(r, results)[0]})"], rows))
  out.append(_quick_note(results, f"{_epochs(r.epochs)} on {data.train:,} training images"))
  return "\n".join(out)


def _render_q3(r: R.Q3, results: R.Results) -> str:
  data, first = r.data, _seeds(r, results)[0]
  if data.course:
    source = f"Data: the course's P2G files ({data.source})."
  else:
    source = (f"Data: **CMUdict** ({data.source}), because no `--p2g_data_path` was given. "
              "The seed report's numbers are for the course's WikiPron (IPA) data: compare "
              "them only qualitatively.")
  by_model = _group(r.runs, lambda x: (x.attention,))
  out = [f"{source} {data.train:,} / {data.valid:,} / {data.test:,} pairs; vocabularies "
         f"{data.source_vocab} / {data.target_vocab}. {_epochs(r.epochs)}, Adam 0.003, batch "
         "64, dropout 0.3; the test set is decoded from the best-validation-CER checkpoint.\n",
         "### Tables 3.1-3.3\n",
         p2g.tables_3([p2g.TableRow(a, [x.summary for x in runs])
                       for (a,), runs in by_model.items()]),
         _quick_note(results, f"{_epochs(r.epochs)} on {data.train:,} training pairs"),
         "### Parameters\n"]
  rows = []
  for (attention,), runs in by_model.items():
    name = "attention" if attention else "noattention"
    flax_n, torch_n = r.course_vocab_params[name]
    rows.append([name, f"{flax_n:,}", f"{torch_n:,}",
                 f"{p2g.EXPECTED_PARAMS[attention]:,} / {p2g.EXPECTED_TORCH_PARAMS[attention]:,}",
                 f"{runs[0].summary.trainable_params:,}"])
  out.append(markdown.table(["model", "course vocabularies (Flax)", "(PyTorch convention)",
                             "expected (Flax / PyTorch)", "this data's vocabularies"], rows))
  out.append("Flax LSTM cells carry one bias per gate, PyTorch two (1,024 more parameters).\n")
  out.append("### Figures 3.1-3.2\n")
  for x in (x for x in r.runs if x.seed == first):
    number, what = ("3.2", "with") if x.attention else ("3.1", "without")
    out.append(_image(f"Figure {number}: validation CER per epoch, {what} attention "
                      f"(seed {first})", f"{x.dir}/{p2g.CER_PLOT}"))
    if x.attention:
      out.append(_image(f"Attention maps of greedy decoding, test words (seed {first})",
                        f"{x.dir}/{p2g.p2g_evaluation.ATTENTION_PLOT}"))
  return "\n".join(out)


def _render_times(results: R.Results) -> str:
  rows = []
  for part in ("q2", "q2_ablations", "q3"):
    r = results.part(part)
    if not r.done:
      continue
    for x in r.runs:
      if part == "q2":
        name = f"{cnn_tables.model_label(x.model)} lr {x.lr:g}"
      elif part == "q2_ablations":
        name = f"BN+GAP k{x.kernel_size} {cnn.pooling_label(x.maxpool)}" + (
            " (= the Q2 BN+GAP run)" if x.shared_with_q2 else "")
      else:
        name = "attention" if x.attention else "no attention"
      rows.append([PART_TITLES[part].split(" ")[0], name, x.seed, x.summary.epochs_done,
                   markdown.seconds(x.summary.train_seconds_total),
                   markdown.seconds(x.wall_seconds)])
  out = ["## Run times\n",
         f"Device: {results.meta.device.describe()}. Train time: the sum of the epoch times over "
         "all invocations (the first epoch of a process includes compilation); wall time: this "
         "invocation's call, with data transfer, compilation, test evaluation and plots (short "
         "for runs resumed complete).\n"]
  if rows:
    out.append(markdown.table(["part", "run", "seed", "epochs", "train time", "wall time"], rows))
  return "\n".join(out)
