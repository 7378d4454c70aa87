"""`python -m prompt_ot report`: collect per-run metrics files into LaTeX/CSV/Markdown tables and plots.

Writes ``OUT/tables/*.{tex,csv,md}``, ``OUT/tables/all.tex`` (what ``reports/paper.tex`` inputs),
``OUT/figures/*.{png,pdf}`` and ``OUT/tables/index.md``. Compile the document with ``cd reports && pdflatex paper.tex``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prompt_ot.report.paired import DEFAULT_RESAMPLES, DEFAULT_SEED
from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--metrics",
        nargs="+",
        metavar="FILE",
        type=check.existing_file,
        help="metrics files written by the evaluate stage",
    )
    source.add_argument(
        "--metrics-list",
        metavar="LISTFILE",
        type=check.existing_file,
        help="a text file naming one metrics file per line (blank lines and # comments ignored)",
    )
    source.add_argument(
        "--metrics-dir",
        metavar="DIR",
        type=check.existing_dir,
        help="a folder searched recursively for metrics files (*.json of the metrics format)",
    )
    parser.add_argument(
        "--params",
        metavar="FILE",
        help="params.yaml: report only its grid, and refuse when a run of it has no metrics file (see "
        "--allow-missing); default: the params.yaml beside a --metrics-dir that its paths.runs names, else none "
        "(every metrics file found is reported); 'none' reports every file found",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="report a grid with runs missing: each table with runs missing names them in its caption",
    )
    parser.add_argument(
        "--reference",
        nargs="+",
        metavar="METHOD",
        type=check.non_empty,
        help="methods compared with every other by the paired bootstrap (default: params.yaml statistics.references, "
        "else prompt_ot)",
    )
    parser.add_argument(
        "--bootstrap-resamples",
        type=check.positive_int,
        metavar="N",
        help=f"bootstrap resamples (default: params.yaml statistics.resamples, else {DEFAULT_RESAMPLES})",
    )
    parser.add_argument(
        "--bootstrap-seed",
        type=check.non_negative_int,
        metavar="N",
        help=f"the bootstrap's random seed (default: params.yaml statistics.seed, else {DEFAULT_SEED})",
    )
    parser.add_argument("--no-statistics", action="store_true", help="skip the paired statistics and the claims table")
    parser.add_argument(
        "--per-class",
        nargs="+",
        metavar="DATASET",
        type=check.dataset_name,
        default=[],
        help="also write tables/per_class_<DATASET>.{md,csv,tex}: each method's accuracy per class of the dataset",
    )
    parser.add_argument(
        "--published",
        default="reports/published",
        metavar="DIR",
        type=_published,
        help="folder of published reference numbers (default: reports/published)",
    )
    parser.add_argument(
        "--no-published", action="store_true", help="leave the published rows out (also: --published none)"
    )
    parser.add_argument("--no-figures", action="store_true", help="write the tables only (no matplotlib figures)")
    parser.add_argument(
        "--out", default="reports", metavar="DIR", type=check.out_dir, help="report folder (default: reports)"
    )


def _published(text: str) -> str:
    """A folder of published numbers, or "none" (a missing folder is reported when read: --no-published may be set)."""
    if text.lower() != "none" and Path(text).exists() and not Path(text).is_dir():
        raise check.ArgumentTypeError(f"{text} is a file; give the folder of published CSVs, or 'none'")
    return text


def run(args: argparse.Namespace) -> int:
    from prompt_ot.report.build import Statistics, build_report
    from prompt_ot.report.collect import metrics_paths
    from prompt_ot.report.grid import grid_beside
    from prompt_ot.report.published import read_published

    params, source = None, args.params
    if source is None:
        found = grid_beside(args.metrics_dir)
        if found is not None:
            source = str(found)
            print(f"grid: {source} (beside {args.metrics_dir}; --params none reports every metrics file found)")
    if source is not None and source.lower() != "none":
        from prompt_ot.config import load_params

        params = load_params(source)
    paths = metrics_paths(args.metrics, args.metrics_list, args.metrics_dir)
    settings = (params or {}).get("statistics") or {}
    statistics = None
    if not args.no_statistics:
        statistics = Statistics(
            tuple(args.reference or settings.get("references") or ("prompt_ot",)),
            args.bootstrap_resamples or settings.get("resamples", DEFAULT_RESAMPLES),
            args.bootstrap_seed if args.bootstrap_seed is not None else settings.get("seed", DEFAULT_SEED),
            strict=bool(args.reference),
        )
    # "none" (e.g. paths.published in the demo, whose numbers are not comparable) means no published rows
    no_published = args.no_published or str(args.published).lower() == "none"
    published = read_published(None if no_published else args.published)
    report = build_report(
        paths,
        published,
        args.out,
        figures=not args.no_figures,
        params=params,
        params_source=str(source),
        allow_missing=args.allow_missing,
        statistics=statistics,
        per_class=tuple(args.per_class),
    )
    from prompt_ot.report.summary import write_summary

    write_summary(report.tables, args.out)  # OUT/metrics.json: the headline numbers, DVC's metrics of the report
    for line in report.skipped:
        print(f"skipped {line}")
    for line in report.notes:
        print(line)
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if report.evidence is not None:
        for row in report.evidence.claims:
            if "difference" in row:
                detail = (
                    f"{row['reference']} - {row['decided_by']} = {row['difference']:+.2f} "
                    f"[{row['low']:+.2f}, {row['high']:+.2f}]"
                )
            else:
                detail = "not run"
            print(f"claim: {row['statement']}: {row['verdict']} ({detail})")
    print(
        f"wrote {len(report.tables)} tables from {len(paths)} metrics files and {len(report.written)} files "
        f"under {args.out} (index: {args.out}/tables/index.md)"
    )
    return 0
