"""Compile ``reports/paper.tex`` around a report folder's tables and figures into a PDF (what ``make paper`` runs).

    python -m prompt_ot.report.pdf REPORT_DIR [--out PDF] [--tex TEX]

``REPORT_DIR`` is the ``--out`` folder of ``python -m prompt_ot report`` (``demo/reports`` for the demo); the PDF
goes to ``REPORT_DIR/paper.pdf`` unless ``--out`` says otherwise. pdflatex runs in a temporary folder with
``REPORT_DIR`` first on its search path (``TEXINPUTS``), so ``paper.tex``'s ``\\input{tables/all}`` and
``figures/...`` resolve to that report's files and no aux or log file lands in the source tree or the report
folder; it reruns (at most three passes) while LaTeX asks for it (longtable widths, references), and the PDF
then replaces ``--out`` atomically. Needs ``pdflatex`` (Debian: texlive-latex-base, texlive-latex-recommended).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from prompt_ot.errors import UserError

PAPER = Path(__file__).resolve().parents[2] / "reports" / "paper.tex"
TEX_PACKAGES = "texlive-latex-base texlive-latex-recommended"
MAX_PASSES = 3


def compile_paper(
    report_dir: str | Path, out: str | Path | None = None, tex: str | Path = PAPER, timeout: float = 300
) -> Path:
    """Compile ``tex`` around ``report_dir``'s tables into ``out`` (default ``report_dir/paper.pdf``); return it."""
    from prompt_ot.utils.io import atomic_path

    report_dir, tex = Path(report_dir).resolve(), Path(tex)
    out = Path(out) if out is not None else report_dir / "paper.pdf"
    if not (report_dir / "tables" / "all.tex").is_file():
        raise UserError(
            f"no report tables in {report_dir / 'tables'} (all.tex is missing): "
            f"run `python -m prompt_ot report --out {report_dir}` first"
        )
    if not tex.is_file():
        raise UserError(f"no LaTeX document at {tex}")
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        raise UserError(f"pdflatex is not installed (Debian: apt-get install --no-install-recommends {TEX_PACKAGES})")
    # the report folder before LaTeX's default path (the trailing separator keeps the default)
    env = dict(os.environ, TEXINPUTS=f"{report_dir}{os.pathsep}{os.environ.get('TEXINPUTS', '')}")
    with tempfile.TemporaryDirectory(prefix="prompt-ot-paper-") as build:
        shutil.copyfile(tex, Path(build) / "paper.tex")
        for _ in range(MAX_PASSES):
            result = subprocess.run(
                [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", "paper.tex"],
                cwd=build,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
            )
            if result.returncode != 0:
                raise UserError(
                    f"pdflatex failed on {tex} with the tables of {report_dir}:\n{result.stdout[-3000:].strip()}"
                )
            log = (Path(build) / "paper.log").read_text(errors="replace")
            if "Rerun" not in log:
                break
        with atomic_path(out) as tmp:
            shutil.copyfile(Path(build) / "paper.pdf", tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prompt_ot.report.pdf", description=__doc__.split("\n")[0])
    parser.add_argument("report_dir", metavar="REPORT_DIR", help="folder written by `python -m prompt_ot report`")
    parser.add_argument("--out", metavar="PDF", help="the PDF to write (default: REPORT_DIR/paper.pdf)")
    parser.add_argument("--tex", default=str(PAPER), metavar="TEX", help="the document (default: reports/paper.tex)")
    args = parser.parse_args(argv)
    try:
        out = compile_paper(args.report_dir, args.out, args.tex)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
