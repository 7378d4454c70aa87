"""docs/fidelity.md stays true to the code: every test it names exists, every file it names is in the project, and
the README links it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tests_named(text: str) -> list[tuple[str, str]]:
    """(file, test) for each `file.py::test_x` reference, and each `::test_y` that continues the last file named."""
    named, current = [], None
    for token in re.findall(r"`([^`]+)`", text):
        if re.fullmatch(r"test_\w+\.py", token):  # a file named alone: the `::test` after it are its tests
            current = token
            continue
        match = re.fullmatch(r"(?:(\w+\.py))?::(test_\w+)", token)
        if match:
            current = match.group(1) or current
            assert current, f"{token} names no test file"
            named.append((current, match.group(2)))
    return named


def test_every_test_the_fidelity_page_names_exists():
    text = (ROOT / "docs" / "fidelity.md").read_text()
    named = _tests_named(text)
    assert len(named) > 30
    missing = [f"{file}::{test}" for file, test in named
               if not re.search(rf"^def {test}\(", (ROOT / "tests" / file).read_text(), re.MULTILINE)]
    assert not missing, missing


def test_the_files_the_fidelity_page_names_exist_and_the_readme_links_it():
    text = (ROOT / "docs" / "fidelity.md").read_text()
    paths = set(re.findall(r"`((?:prompt_ot|bench|reports|tests)/[\w/.]+)`", text))
    assert paths and all((ROOT / p).exists() for p in paths), sorted(p for p in paths if not (ROOT / p).exists())
    assert "docs/fidelity.md" in (ROOT / "README.md").read_text()
