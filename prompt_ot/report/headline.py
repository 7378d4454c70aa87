"""The headline table of each protocol a report holds, as Markdown under a one-line heading (what `make demo` prints
at its end).

    python -m prompt_ot.report.headline REPORT_DIR

``REPORT_DIR`` is the ``--out`` folder of ``python -m prompt_ot report`` (``demo/reports`` for the demo); the tables
are read from ``REPORT_DIR/tables/<name>.md``, in protocol order; a protocol without its table is left out. No
headline table at all is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prompt_ot.errors import UserError

# table (file stem under tables/) -> the heading printed above it, in the order printed
HEADLINES = {
    "base2novel_average": "Base-to-novel generalisation, average over datasets",
    "cross_dataset": "Cross-dataset transfer",
    "domain_generalization": "Domain generalisation",
    "few_shot": "Few-shot classification, average over datasets",
    "claims": "The paper's claims, checked on these runs (paired bootstrap; docs/statistics.md)",
}


def headline_tables(report_dir: str | Path) -> list[tuple[str, Path]]:
    """(heading, Markdown file) of each headline table under ``report_dir/tables``, in protocol order."""
    tables = Path(report_dir) / "tables"
    paths = [(heading, tables / f"{name}.md") for name, heading in HEADLINES.items()]
    return [(heading, path) for heading, path in paths if path.is_file()]


def headlines(report_dir: str | Path) -> str:
    """The headline tables, each under a ``## heading`` line, separated by a blank line."""
    found = headline_tables(report_dir)
    if not found:
        tables = Path(report_dir) / "tables"
        raise UserError(
            f"no headline table in {tables} (none of {', '.join(f'{n}.md' for n in HEADLINES)}): "
            f"run `python -m prompt_ot report --out {report_dir}` first"
        )
    return "\n".join(f"## {heading}\n\n{path.read_text().rstrip()}\n" for heading, path in found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prompt_ot.report.headline", description=__doc__.split("\n")[0])
    parser.add_argument("report_dir", metavar="REPORT_DIR", help="folder written by `python -m prompt_ot report`")
    args = parser.parse_args(argv)
    try:
        text = headlines(args.report_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
