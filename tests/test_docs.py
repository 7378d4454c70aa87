"""The documentation stays true to the project.

README.md is a short front door that links every page of docs/; every test, file and `python -m prompt_ot`
command that README.md or a page names exists and parses; no table cell grows past what a reader can take in.
"""

from __future__ import annotations

import argparse
import glob
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES]

README_MAX_LINES = 200
README_MAX_LINE = 300
TABLE_ROW_MAX = 400
# the point-by-point comparison with the released code: each row quotes the released file and names our test, so
# its rows are wider than the other pages' (reflowing it is a separate change)
WIDE_TABLE_PAGES = {"fidelity.md"}

# backticked paths under these folders must exist in the project
PATH_FOLDERS = ("prompt_ot", "bench", "reports", "tests", "docs", "workflow")
# paths the pages name as where a run puts its results: written by a run, not kept in git
WRITTEN_BY_A_RUN = (
    "reports/tables/",
    "reports/figures/",
    "reports/metrics.json",
    "reports/paper.pdf",
    "reports/perf/gpu",
    "reports/perf/train_step_gpu.md",
    "reports/perf/forkserver.md",
)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _text_outside_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _backticked(text: str) -> list[str]:
    return [token.strip() for token in re.findall(r"`([^`\n]+)`", _text_outside_fences(text))]


# ----------------------------------------------------------------------------------------------- tests named


def named_tests(text: str) -> tuple[list[tuple[str, str | None, str]], list[str]]:
    """(file, class or None, test) for each `file.py::test_x` (or `file.py::Class::test_x`) reference, each
    `::test_y` that continues the last file named, and each `file.py` named alone (which sets that file); and the
    tokens that look like a test reference but cannot be checked (abbreviated, or no file named before)."""
    named, unreadable, current = [], [], None
    for token in _backticked(text):
        alone = re.fullmatch(r"(?:tests/)?(test_\w+\.py)", token)
        if alone:
            current = alone.group(1)
            continue
        match = re.fullmatch(r"(?:tests/)?(test_\w+\.py)?(?:::([A-Z]\w*))?::(test_\w+)", token)
        if match:
            current = match.group(1) or current
            if current is None:
                unreadable.append(f"{token} (no test file named before it)")
                continue
            named.append((current, match.group(2), match.group(3)))
        elif re.match(r"(?:tests/)?(?:test_\w+\.py)?::", token):
            unreadable.append(f"{token} (not a full test name: write `file.py::test_name`)")
    return named, unreadable


def _missing_tests(named: list[tuple[str, str | None, str]]) -> list[str]:
    missing = []
    for file, cls, test in named:
        path = ROOT / "tests" / file
        reference = f"{file}::{cls + '::' if cls else ''}{test}"
        if not path.is_file():
            missing.append(f"{reference} (no file tests/{file})")
            continue
        source = path.read_text()
        if cls and not re.search(rf"^class {cls}\b", source, re.MULTILINE):
            missing.append(f"{reference} (no class {cls} in tests/{file})")
        elif not re.search(rf"^\s*def {test}\(", source, re.MULTILINE):
            missing.append(f"{reference} (no def {test}( in tests/{file})")
    return missing


def test_every_test_a_page_names_exists():
    problems = []
    for document in DOCUMENTS:
        named, unreadable = named_tests(document.read_text())
        problems += [f"{_rel(document)}: {item}" for item in unreadable + _missing_tests(named)]
    assert not problems, "tests named in the docs that do not exist:\n" + "\n".join(problems)


def test_the_reference_parser_finds_the_tests_of_fidelity_and_reliability():
    # the pages that hold the project's guarantees name many tests; finding few means the parser broke
    for page, least in (("fidelity.md", 30), ("reliability.md", 30)):
        named, _ = named_tests((ROOT / "docs" / page).read_text())
        assert len(named) > least, f"docs/{page}: only {len(named)} test references found"


def test_a_test_file_named_alone_exists():
    missing = []
    for document in DOCUMENTS:
        for token in _backticked(document.read_text()):
            alone = re.fullmatch(r"(?:tests/)?(test_\w+\.py)", token)
            if alone and not (ROOT / "tests" / alone.group(1)).is_file():
                missing.append(f"{_rel(document)}: {token}")
    assert not missing, "test files named in the docs that do not exist:\n" + "\n".join(missing)


# ----------------------------------------------------------------------------------------------- files named


def _expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [
        expanded
        for choice in match.group(1).split(",")
        for expanded in _expand_braces(path[: match.start()] + choice + path[match.end() :])
    ]


def files_named(text: str) -> list[str]:
    """Project paths named in backticks: the first word of a token starting with one of PATH_FOLDERS, without a
    trailing `::name` (a function or class in the file)."""
    paths = []
    for token in _backticked(text):
        word = token.split()[0]
        if re.match(rf"(?:{'|'.join(PATH_FOLDERS)})/", word):
            paths.append(word.split("::")[0].rstrip(".,;:"))
    return paths


def _path_problem(path: str) -> str | None:
    if "<" in path or "…" in path or "..." in path:
        return None  # a placeholder: `prompt_ot/data/datasets/<name>.py`
    if path.startswith(WRITTEN_BY_A_RUN):
        return None
    for expanded in _expand_braces(path):
        if any(ch in expanded for ch in "*?["):
            if not glob.glob(str(ROOT / expanded)):
                return f"{path} (the pattern matches no file)"
        elif not (ROOT / expanded).exists():
            return f"{path} (no {expanded})"
    return None


def test_every_file_a_page_names_exists():
    problems = []
    for document in DOCUMENTS:
        for path in files_named(document.read_text()):
            problem = _path_problem(path)
            if problem:
                problems.append(f"{_rel(document)}: {problem}")
    assert not problems, "files named in the docs that are not in the project:\n" + "\n".join(problems)


def test_every_relative_link_resolves():
    problems = []
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text_outside_fences(document.read_text())):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            if not (document.parent / target.split("#")[0]).exists():
                problems.append(f"{_rel(document)}: ({target})")
    assert not problems, "links to files that do not exist:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------------------------- the front door


def test_the_readme_links_every_page():
    readme = README.read_text()
    unlinked = [f"docs/{page.name}" for page in PAGES if f"](docs/{page.name})" not in readme]
    assert PAGES and not unlinked, f"README.md has no link (docs/<page>.md) to: {', '.join(unlinked)}"


def test_the_readme_is_a_short_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move the detail into a page under docs/"
    )
    long = [
        f"line {number}: {len(line)} characters" for number, line in enumerate(lines, 1) if len(line) > README_MAX_LINE
    ]
    assert not long, f"README.md lines longer than {README_MAX_LINE} characters:\n" + "\n".join(long)


def test_no_table_row_of_a_page_is_huge():
    long = []
    for page in PAGES:
        if page.name in WIDE_TABLE_PAGES:
            continue
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.lstrip().startswith("|") and len(line) > TABLE_ROW_MAX:
                long.append(f"docs/{page.name} line {number}: {len(line)} characters")
    assert not long, (
        f"table rows longer than {TABLE_ROW_MAX} characters (split the row, or move the detail "
        "into a list below the table):\n" + "\n".join(long)
    )


# ----------------------------------------------------------------------------------------------- commands named


def stage_commands(text: str) -> list[str]:
    """The argument strings of every `python -m prompt_ot <stage> ...` command in the fenced code blocks."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*\$\s+", "", line)
            line = re.sub(r"\s+#.*$", "", line)  # a comment after the command
            for part in re.split(r"&&|;|\|", line):
                match = re.match(r"\s*(?:\S*/)?python3?(?:\.\d+)? -m prompt_ot\s+(\S.*)", part)
                if match:
                    commands.append(match.group(1).strip())
    return commands


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_stage_command_in_the_docs_parses():
    from prompt_ot.cli import COMMANDS, command_parser

    found, problems, helped = 0, [], set()
    for document in DOCUMENTS:
        for command in stage_commands(document.read_text()):
            found += 1
            where = f"{_rel(document)}: python -m prompt_ot {command}"
            words = shlex.split(command)
            stage = words[0]
            if stage in ("-h", "--help"):
                continue  # `python -m prompt_ot --help`: the list of stages
            if stage not in COMMANDS:
                problems.append(f"{where}: no stage {stage!r} (known: {', '.join(COMMANDS)})")
                continue
            _, parser = command_parser(stage)
            words = words[1 : words.index("--")] if "--" in words else words[1:]
            called = (stage,)
            subparsers = _subparsers(parser)
            if subparsers:
                if not words or words[0] not in subparsers:
                    problems.append(f"{where}: {stage} needs one of {', '.join(subparsers)}")
                    continue
                parser, called = subparsers[words[0]], (stage, words[0])
            known = set(parser._option_string_actions)
            unknown = [word.split("=")[0] for word in words if word.startswith("-") and word.split("=")[0] not in known]
            if unknown:
                problems.append(f"{where}: no option {', '.join(unknown)} (it has: {', '.join(sorted(known))})")
            if called not in helped:
                helped.add(called)
                result = subprocess.run(
                    [sys.executable, "-m", "prompt_ot", *called, "--help"],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                if result.returncode != 0:
                    problems.append(
                        f"{where}: `python -m prompt_ot {' '.join(called)} --help` exited "
                        f"{result.returncode}: {result.stderr.strip()[-500:]}"
                    )
    assert found, "no `python -m prompt_ot <stage>` command found in the fenced code blocks of the docs"
    assert not problems, "commands in the docs that do not parse:\n" + "\n".join(problems)
