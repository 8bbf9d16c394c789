"""The commands the docs show exist as written: a moved file or a renamed flag fails here.

What is read:
- every fenced code block of README.md, BUILD.md and ARCHITECTURE.md whose language is empty,
  bash, sh, shell, zsh or console (``$ `` prompts are stripped there): each logical line
  (``\\`` continuations joined, ``#`` comments dropped, split at ``&&``, ``||``, ``;``, ``|``),
  skipping lines of an unlabelled block that do not start with a command this project
  provides (so output tables and the layout tree are left alone);
- inline code spans outside those blocks that are a whole command (``./launch.sh ...``,
  ``python -m ...``) or a lone path into the checkout (``tests/test_layout.py``); spans with a
  placeholder (``<name>``, ``*``, ``{a,b}``) are skipped, ``[--optional]`` brackets dropped;
- the usage lines of the module docstrings of experiments/*.py and benchmarks/*.py (what
  ``--help`` prints).

What is checked, per command:
- ``./launch.sh <experiment>`` has experiments/<experiment>.py, ``./launch.sh bench <name>``
  has benchmarks/<name>.py; ``python -m <module>`` of this checkout's folders has its file;
- every ``--flag``, ``--noflag`` (booleans) and ``--flag=value`` is a flag the module defines,
  and the value of an enum flag is one of its choices;
- ``./launch.sh test`` / ``pytest`` targets exist, ``-m`` names registered markers, and a
  selection (files, node ids, ``-k``) collects at least one test;
- ``bash <script> <steps>``: the script exists, each step is one of its ``case`` labels and each
  ``NAME=value`` before it is a variable the script reads;
- every path into a tracked top-level folder of the checkout (tests/, benchmarks/, hw2jax/,
  ...) exists. Paths to user data and outputs (data/, runs/, /tmp/, ../shared/) are exempt.

What is run for real (on CPU, ~35 s of CPU time for the file; launch.sh itself is never run,
since it installs): ``python -m <module> --helpfull`` once per module named (it imports the
module and lists its flags), ``pytest --collect-only`` of each test selection, and the
documented commands cheap enough to run whole, those whose flags are all in CHEAP_FLAGS
(``./launch.sh hopfield --check``: ~7 s), with ``python -m`` in a temporary folder. Training
runs, benchmarks and downloads are not run.
"""

from __future__ import annotations

import ast
import difflib
import functools
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO

DOCS = ("README.md", "BUILD.md", "ARCHITECTURE.md")
DOCSTRING_FOLDERS = ("experiments", "benchmarks")
# Commands whose flags are all in this set are run whole (each takes seconds).
CHEAP_FLAGS = frozenset({"--check"})
SHELL_LANGUAGES = frozenset({"", "bash", "sh", "shell", "zsh", "console"})
LAUNCH = frozenset({"./launch.sh", "launch.sh"})
LAUNCH_BUILTINS = frozenset({"", "-h", "--help", "help", "install"})   # launch.sh's own commands
PYTEST_VALUE_OPTIONS = frozenset({
    "-m", "-k", "-n", "-p", "-c", "-o", "-W", "-r", "--maxfail", "--durations", "--tb",
    "--deselect", "--ignore", "--ignore-glob", "--rootdir", "--basetemp", "--junitxml",
    "--import-mode", "--dist", "--maxprocesses", "--log-level", "--confcutdir"})
PYTEST_BUILTIN_MARKERS = frozenset({
    "skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings"})
OPERATORS = frozenset({"&&", "||", ";", "|", "&", ";;"})
REDIRECTION = re.compile(r"^\d*(>>?|<)(.*)$")           # `> file`, `>>file`, `2>`, `<in`
PLACEHOLDER = re.compile(r"[<>*{}]|\.\.\.")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PYTHON = re.compile(r"(^|/)python(3(\.\d+)?)?$")


@dataclass(frozen=True)
class Command:
  """One logical command line of a doc: where it is and its text (continuations joined)."""
  doc: str
  line: int
  text: str
  strict: bool = True      # False: only lines starting with a program of ours are commands


# ---------------------------------------------------------------------------------------------
# Reading commands out of markdown and docstrings


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
  """Joins `\\`-continued lines the way bash does (the backslash-newline disappears)."""
  out, start, buf = [], None, ""
  for number, line in lines:
    if start is None:
      start = number
    if line.rstrip().endswith("\\"):
      buf += line.rstrip()[:-1]
      continue
    out.append((start, buf + line))
    start, buf = None, ""
  if start is not None:
    out.append((start, buf))
  return out


def commands_in_markdown(text: str, doc: str) -> list[Command]:
  """Every command of the fenced shell blocks and inline code spans of a markdown text."""
  commands: list[Command] = []
  lines = text.splitlines()
  prose: list[tuple[int, str]] = []
  i = 0
  while i < len(lines):
    fence = re.match(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
    if not fence:
      prose.append((i + 1, lines[i]))
      i += 1
      continue
    marker, language = fence.group(1), fence.group(2).lower()
    body: list[tuple[int, str]] = []
    i += 1
    while i < len(lines) and not lines[i].strip().startswith(marker[0] * len(marker)):
      body.append((i + 1, lines[i]))
      i += 1
    i += 1                                                        # the closing fence
    prose.append((i, ""))                                         # a block ends a paragraph
    if language not in SHELL_LANGUAGES:
      continue
    if language == "console":
      body = [(n, line.strip()[2:]) for n, line in body if line.strip().startswith("$ ")]
    for number, line in _logical_lines(body):
      if line.strip() and not line.strip().startswith("#"):
        commands.append(Command(doc, number, line.strip(), strict=bool(language)))
  commands += _inline_commands(prose, doc)
  return sorted(commands, key=lambda c: c.line)


def _inline_commands(prose: list[tuple[int, str]], doc: str) -> list[Command]:
  """Inline code spans of the prose that are a whole command or a lone path of the checkout."""
  commands = []
  paragraph: list[tuple[int, str]] = []
  for number, line in prose + [(0, "")]:
    if line.strip():
      paragraph.append((number, line))
      continue
    if paragraph:
      text = "\n".join(line for _, line in paragraph)
      starts = [0]
      for _, line in paragraph:
        starts.append(starts[-1] + len(line) + 1)
      for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        code = " ".join(span.group(1).split())
        if PLACEHOLDER.search(code):
          continue
        line_number = paragraph[sum(1 for s in starts[1:] if s <= span.start())][0]
        tokens = code.replace("[", " ").replace("]", " ").split()
        if not tokens:
          continue
        first = tokens[0]
        if ENV_ASSIGNMENT.match(first) and len(tokens) > 1:
          first = next((t for t in tokens if not ENV_ASSIGNMENT.match(t)), "")
        if _is_our_command(first, tokens) or (len(tokens) == 1 and _repo_path(first)):
          commands.append(Command(doc, line_number, code.replace("[", "").replace("]", "")))
      paragraph = []
  return commands


def _is_our_command(program: str, tokens: list[str]) -> bool:
  """Whether a line starting with `program` runs something of this project."""
  if program in LAUNCH or program in ("pytest", "py.test"):
    return True
  rest = tokens[tokens.index(program) + 1:] if program in tokens else []
  if PYTHON.search(program):
    return "-m" in rest or any(_repo_path(t) for t in rest[:1])
  if program in ("bash", "sh"):
    return bool(rest) and (rest[0] in LAUNCH or _repo_path(rest[0]) is not None)
  return False


def commands_in_docstrings(folder: str) -> dict[str, list[Command]]:
  """The usage lines (`  python -m ...`) of the module docstrings of a folder's .py files."""
  found = {}
  for path in sorted((REPO / folder).glob("*.py")):
    tree = ast.parse(path.read_text())
    if not (tree.body and isinstance(tree.body[0], ast.Expr)
            and isinstance(getattr(tree.body[0], "value", None), ast.Constant)
            and isinstance(tree.body[0].value.value, str)):
      continue
    node = tree.body[0].value
    doc = str(path.relative_to(REPO))
    numbered = list(enumerate(node.value.splitlines(), start=node.lineno))
    found[doc] = [Command(doc, number, line.strip(), strict=False)
                  for number, line in _logical_lines(numbered) if line.strip()]
  return found


# ---------------------------------------------------------------------------------------------
# What the checkout holds


@functools.cache
def tracked_top_level() -> frozenset[str]:
  """The checkout's tracked top-level files and folders (tests, hw2jax, launch.sh, ...)."""
  try:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                            check=True, timeout=30).stdout.split()
  except (OSError, subprocess.SubprocessError):
    listed = []
  names = {p.split("/")[0] for p in listed}
  return frozenset(names or {"benchmarks", "experiments", "hw2jax", "tests", "launch.sh",
                             "pyproject.toml", "README.md", "BUILD.md", "ARCHITECTURE.md"})


def _repo_path(token: str) -> str | None:
  """The path part of `token` when it points into a tracked folder of the checkout, else None."""
  path = token.split("::")[0]
  if path.startswith("./"):
    path = path[2:]
  if not path or PLACEHOLDER.search(path) or "$" in path or " " in path:
    return None
  return path if path.split("/")[0] in tracked_top_level() else None


@dataclass(frozen=True)
class Flag:
  boolean: bool
  choices: tuple[str, ...] | None


@functools.cache
def module_flags(module: str) -> dict[str, Flag] | str:
  """The flags `python -m module` accepts (from its --helpfull), or why they are unknown."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  result = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  output = result.stdout + result.stderr
  lines = output.splitlines()
  if "flags:" in lines:
    lines = lines[len(lines) - 1 - lines[::-1].index("flags:"):]
  flags = {}
  for line in lines:
    m = re.match(r"^  --(\[no\])?([\w.-]+):(?: <([^>]*)>:)?", line)
    if m:
      choices = tuple(m.group(3).split("|")) if m.group(3) else None
      flags[m.group(2)] = Flag(bool(m.group(1)), choices)
  if not flags:
    return f"`python -m {module} --helpfull` listed no flags: " + " | ".join(
        output.strip().splitlines()[-3:])
  return flags


@functools.cache
def registered_markers() -> frozenset[str]:
  config = tomllib.loads((REPO / "pyproject.toml").read_text())
  markers = config.get("tool", {}).get("pytest", {}).get("ini_options", {}).get("markers", [])
  return frozenset(m.split(":")[0].split("(")[0].strip() for m in markers)


@functools.cache
def collect(args: tuple[str, ...]) -> str | None:
  """None when `pytest args` selects at least one test, else pytest's complaint."""
  result = subprocess.run(
      [sys.executable, "-m", "pytest", *args, "--collect-only", "-q", "-n", "0",
       "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=300)
  if result.returncode == 0:
    return None
  tail = [line for line in (result.stdout + result.stderr).strip().splitlines() if line.strip()]
  return f"pytest collects nothing (exit {result.returncode}): " + " | ".join(tail[-2:])


@functools.cache
def run_whole(module: str, args: tuple[str, ...]) -> str | None:
  """None when `python -m module args` exits 0 in an empty folder, else its last lines."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  with tempfile.TemporaryDirectory() as folder:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=300)
  if result.returncode == 0:
    return None
  tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
  return f"exits {result.returncode} when run: " + " | ".join(tail)


# ---------------------------------------------------------------------------------------------
# Checking one command


def _tokens(text: str) -> list[str]:
  lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
  lexer.whitespace_split = True
  lexer.commenters = "#"
  return list(lexer)


def _simple_commands(tokens: list[str]) -> list[list[str]]:
  """Splits tokens at `&&`, `||`, `;`, `|`, dropping redirections (`> file`, `2>&1`)."""
  out, current, i = [], [], 0
  while i < len(tokens):
    token = tokens[i]
    redirection = REDIRECTION.match(token)
    if token in OPERATORS:
      out.append(current)
      current = []
    elif redirection:
      if not redirection.group(2):                                # the target is what follows
        i += 2 if i + 1 < len(tokens) and tokens[i + 1] == "&" else 1
    else:
      current.append(token)
    i += 1
  out.append(current)
  return [c for c in out if c]


def check_command(command: Command, run_cheap: bool = True) -> list[str]:
  """What is wrong with one documented command ([] when nothing), each as one message."""
  try:
    tokens = _tokens(command.text)
  except ValueError as e:
    return [f"cannot be parsed as a shell command ({e})"] if command.strict else []
  problems: list[str] = []
  for simple in _simple_commands(tokens):
    problems += _check_simple(simple, command.strict, run_cheap)
  return problems


def _check_simple(tokens: list[str], strict: bool, run_cheap: bool) -> list[str]:
  env = []
  while tokens and ENV_ASSIGNMENT.match(tokens[0]):
    env.append(tokens.pop(0).split("=")[0])
  if not tokens:
    return []
  program, args = tokens[0], tokens[1:]
  if not strict and not _is_our_command(program, tokens):
    return []
  if program in ("bash", "sh") and args and args[0] in LAUNCH:
    program, args = args[0], args[1:]
  if program in LAUNCH:
    return _paths([program]) + _check_launch(args, run_cheap)
  if PYTHON.search(program):
    return _check_python(args, run_cheap)
  if program in ("pytest", "py.test"):
    return _check_pytest(args)
  if program in ("bash", "sh") and args and not args[0].startswith("-"):
    return _check_script(args[0], args[1:], env)
  if program in ("mkdir", "touch"):                              # names what is about to exist
    return []
  # Someone else's program: check its paths, and any command it carries (ssh, gcloud --command).
  problems = _paths([program] + [a for a in args if not a.startswith("-")])
  for arg in args:
    embedded = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
    if " " in embedded.strip():
      problems += check_command(Command("", 0, embedded, strict=False), run_cheap)
  return problems


def _paths(tokens: list[str]) -> list[str]:
  problems = []
  for token in tokens:
    values = [token.split("=", 1)[1]] if token.startswith("-") and "=" in token else [token]
    for value in values:
      path = _repo_path(value)
      if path and not (REPO / path).exists():
        problems.append(f"names {path}, which does not exist" + _nearest_file(path))
  return problems


def _nearest_file(path: str) -> str:
  name = Path(path).name
  matches = sorted(str(p.relative_to(REPO)) for p in REPO.rglob(name)
                   if ".venv" not in p.parts and ".git" not in p.parts)
  return f" (found: {', '.join(matches[:3])})" if matches else ""


def _check_launch(args: list[str], run_cheap: bool) -> list[str]:
  name = args[0] if args else ""
  if name in LAUNCH_BUILTINS:
    return []
  if name == "test":
    return _check_pytest(args[1:])
  if name == "bench":
    if len(args) < 2:
      return ["`launch.sh bench` needs a benchmark name"]
    if PLACEHOLDER.search(args[1]):
      return []
    if not (REPO / "benchmarks" / f"{args[1]}.py").is_file():
      return [f"launch.sh bench {args[1]}: there is no benchmarks/{args[1]}.py"]
    return _check_module(f"benchmarks.{args[1]}", args[2:], run_cheap)
  if not (REPO / "experiments" / f"{name}.py").is_file():
    return [f"launch.sh has no command {name!r} (no experiments/{name}.py, not test, bench or "
            "install)"]
  return _check_module(f"experiments.{name}", args[1:], run_cheap)


def _check_script(script: str, args: list[str], env: list[str]) -> list[str]:
  """`NAME=value bash script step...`: the script exists, reads NAME and has each step."""
  problems = _paths([script])
  path = _repo_path(script)
  if problems or not path or not (REPO / path).is_file():
    return problems
  text = (REPO / path).read_text()
  labels = {label for group in re.findall(r"^\s*([\w|-]+)\)", text, re.M)
            for label in group.split("|")}
  for arg in args:
    if labels and not arg.startswith("-") and not PLACEHOLDER.search(arg) and arg not in labels:
      problems.append(f"{path} has no step {arg} (its steps: {', '.join(sorted(labels))})")
  for name in env:
    if not re.search(r"\$\{?" + name + r"\b", text):
      problems.append(f"{path} does not read ${name}")
  return problems


def _check_python(args: list[str], run_cheap: bool) -> list[str]:
  args = list(args)
  while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):
    option = args.pop(0)
    if option in ("-X", "-W") and args:
      args.pop(0)
  if not args or args[0] == "-c":
    return []
  if args[0] == "-m":
    if len(args) < 2:
      return ["`python -m` without a module"]
    module, rest = args[1], args[2:]
    if PLACEHOLDER.search(module):
      return []
    if module == "pytest":
      return _check_pytest(rest)
    top = module.split(".")[0]
    if top not in tracked_top_level():
      return []                                                  # pip, venv, someone else's
    file = REPO / Path(*module.split("."))
    if not (file.with_suffix(".py").is_file() or (file / "__main__.py").is_file()):
      return [f"module {module} does not exist (no {file.relative_to(REPO)}.py)"]
    return _check_module(module, rest, run_cheap)
  return _paths(args[:1])                                        # python some/script.py


def _check_module(module: str, args: list[str], run_cheap: bool) -> list[str]:
  source = (REPO / Path(*module.split("."))).with_suffix(".py")
  problems = _paths([a for a in args if not a.startswith("-") or "=" in a])
  if not source.is_file() or "absl" not in source.read_text():
    return problems
  flags = module_flags(module)
  if isinstance(flags, str):
    if "No module named 'torch'" in flags:                        # the bench extra is missing
      return problems
    return problems + [flags]
  for arg in args:
    if not arg.startswith("--") or arg == "--":
      continue
    name, has_value, value = arg[2:].partition("=")
    flag = flags.get(name)
    if flag is None and name.startswith("no") and not has_value:
      negated = flags.get(name[2:])
      if negated is not None and negated.boolean:
        continue
      if negated is not None:
        problems.append(f"{module}: --{name[2:]} is not a boolean, so --{name} does not exist")
        continue
    if flag is None:
      near = difflib.get_close_matches(name, flags, n=1)
      problems.append(f"{module} has no flag --{name}"
                      + (f" (did you mean --{near[0]}?)" if near else ""))
    elif (flag.choices and has_value and value not in flag.choices
          and not PLACEHOLDER.search(value) and "$" not in value):
      problems.append(f"{module}: --{name}={value} is not one of {'|'.join(flag.choices)}")
  flag_args = [a for a in args if a.startswith("-")]
  if run_cheap and not problems and flag_args and set(flag_args) <= CHEAP_FLAGS and (
      len(flag_args) == len(args)):
    failure = run_whole(module, tuple(args))
    if failure:
      problems.append(f"python -m {module} {' '.join(args)} {failure}")
  return problems


def _check_pytest(args: list[str]) -> list[str]:
  problems, targets, selecting = [], [], False
  i = 0
  while i < len(args):
    arg = args[i]
    option, has_value, value = arg.partition("=")
    if arg.startswith("-"):
      if option in PYTEST_VALUE_OPTIONS and not has_value:
        value = args[i + 1] if i + 1 < len(args) else ""
        i += 1
      if option == "-m":
        unknown = sorted(set(re.findall(r"[A-Za-z_]\w*", value)) - {"and", "or", "not"}
                         - registered_markers() - PYTEST_BUILTIN_MARKERS)
        if unknown:
          problems.append(f"pytest -m names unregistered markers: {', '.join(unknown)}")
      selecting |= option in ("-k", "--deselect")
    else:
      targets.append(arg)
      path = arg.split("::")[0]
      if not (REPO / path).exists():
        problems.append(f"pytest target {path} does not exist" + _nearest_file(path))
    i += 1
  if not problems and (targets or selecting):
    failure = collect(tuple(args))
    if failure:
      problems.append(failure)
  return problems


def _prefetch_flags(commands: list[Command]) -> None:
  """Starts the --helpfull of every module the commands seem to name, in parallel."""
  modules = set()
  for command in commands:
    modules.update(re.findall(r"-m\s+((?:experiments|benchmarks)\.\w+)", command.text))
    modules.update("benchmarks." + m for m in re.findall(r"launch\.sh\s+bench\s+(\w+)",
                                                          command.text))
    modules.update("experiments." + m for m in re.findall(r"launch\.sh\s+(\w+)", command.text))
  modules = sorted(m for m in modules
                   if (REPO / Path(*m.split("."))).with_suffix(".py").is_file())
  with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
    list(pool.map(module_flags, modules))


def problems_in(commands: list[Command], run_cheap: bool = True) -> list[str]:
  """`doc:line: what is wrong` + the command, for every broken command."""
  _prefetch_flags(commands)
  found = []
  for command in commands:
    for problem in check_command(command, run_cheap):
      found.append(f"{command.doc}:{command.line}: {problem}\n    {command.text}")
  return found


# ---------------------------------------------------------------------------------------------
# The tests


def _doc_commands(name: str) -> list[Command]:
  if name.endswith(".md"):
    return commands_in_markdown((REPO / name).read_text(), name)
  return commands_in_docstrings(name.split("/")[0]).get(name, [])


DOCSTRING_MODULES = tuple(
    str(p.relative_to(REPO)) for folder in DOCSTRING_FOLDERS
    for p in sorted((REPO / folder).glob("*.py")) if p.name != "__init__.py")


@pytest.mark.parametrize("doc", DOCS + DOCSTRING_MODULES)
def test_every_documented_command_names_existing_modules_files_flags_and_tests(doc):
  problems = problems_in(_doc_commands(doc))
  assert not problems, f"{len(problems)} broken command(s) in {doc}:\n" + "\n".join(problems)


def test_the_readme_and_build_md_commands_are_all_found():
  """Guards the parser: if it silently found nothing, the test above would prove nothing."""
  readme = [c.text.split(" #")[0].strip() for c in _doc_commands("README.md")]
  build = [c.text.split(" #")[0].strip() for c in _doc_commands("BUILD.md")]
  assert "./launch.sh cnn --lr=0.01" in readme
  assert "./launch.sh hopfield --check" in readme
  assert any(t.startswith("./launch.sh test ") and "-k" in t for t in build)
  assert any("gcloud" in t and "python -m experiments.cnn" in t for t in build)
  assert len(readme) >= 15 and len(build) >= 15


SYNTHETIC = """\
# A doc

```bash
./launch.sh hopfield --chek            # renamed flag
./launch.sh cnn --optimizer=rmsprop    # no such choice
./launch.sh cnn --nolr                 # not a boolean
./launch.sh cnn --nomaxpool --lr=0.1 \\
    --workdir=runs/x                   # fine, over two lines
./launch.sh test tests/test_cnn.py -k count
./launch.sh test tests/models/test_cnn.py -k no_test_is_called_this
./launch.sh bench no_such_benchmark
./launch.sh nosuchexperiment
python -m experiments.nosuch --lr=1
OUT=x bash benchmarks/gpu_checks.sh no_such_step
bash benchmarks/no_such_script.sh
./launch.sh test -m "not slow and speedy"
```

```
claim    measured    # an output block: not commands
```

See `tests/no_such_file.py` and `hw2jax/models/cnn.py`; run `python -m experiments.p2g --beem=5`
or `./launch.sh bench <name>`.
"""


def test_the_checker_catches_renamed_flags_missing_files_and_empty_selections():
  problems = problems_in(commands_in_markdown(SYNTHETIC, "SYNTHETIC.md"), run_cheap=False)
  text = "\n".join(problems)
  expected = [
      "SYNTHETIC.md:4: experiments.hopfield has no flag --chek (did you mean --check?)",
      "SYNTHETIC.md:5: experiments.cnn: --optimizer=rmsprop is not one of sgd|adam",
      "SYNTHETIC.md:6: experiments.cnn: --lr is not a boolean, so --nolr does not exist",
      "SYNTHETIC.md:9: pytest target tests/test_cnn.py does not exist (found: "
      "tests/models/test_cnn.py, tests/recipes/test_cnn.py)",
      "SYNTHETIC.md:10: pytest collects nothing (exit 5)",
      "SYNTHETIC.md:11: launch.sh bench no_such_benchmark: there is no "
      "benchmarks/no_such_benchmark.py",
      "SYNTHETIC.md:12: launch.sh has no command 'nosuchexperiment'",
      "SYNTHETIC.md:13: module experiments.nosuch does not exist",
      "SYNTHETIC.md:14: benchmarks/gpu_checks.sh has no step no_such_step",
      "SYNTHETIC.md:15: names benchmarks/no_such_script.sh, which does not exist",
      "SYNTHETIC.md:16: pytest -m names unregistered markers: speedy",
      "SYNTHETIC.md:23: names tests/no_such_file.py, which does not exist",
      "SYNTHETIC.md:23: experiments.p2g has no flag --beem (did you mean --beam?)",
  ]
  for fragment in expected:
    assert fragment in text, f"not reported: {fragment}\nreported:\n{text}"
  assert len(problems) == len(expected), text                     # lines 7-8, 20, 24 are fine


def test_the_cheap_commands_are_run_and_a_failing_one_is_reported():
  assert run_whole("experiments.hopfield", ("--check",)) is None
  failing = run_whole("experiments.hopfield", ("--check", "--betas=abc"))
  assert failing and failing.startswith("exits ")


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_point_to_no_file_a_clone_lacks(doc):
  """The project's development machines keep data in ../shared beside the checkout; a user's
  clone has no such folder, so the docs name the files a user has (Kaggle's zip, data/p2g)."""
  text = (REPO / doc).read_text()
  assert "../shared" not in text and "shared/data" not in text, doc
