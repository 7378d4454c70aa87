"""The report stage as one function: metrics files + published numbers -> tables, figures and an index.

Layout under ``out``: ``tables/<name>.{tex,csv,md}``, ``tables/all.tex`` (``\\input``s every table written
this time; ``paper.tex`` inputs it), ``tables/reproduction_gap.{tex,csv,md}`` (ours against the published
numbers, ``gap``; always written, not in ``all.tex``), ``figures/*.{png,pdf}`` (one per protocol present:
``base2novel_tradeoff``, ``cross_dataset_transfer``, ``domain_generalization``, ``few_shot``; and
``lambda_sweep_<method>`` for a method run with several lambdas) and ``tables/index.md``; besides them
``tables/runs.csv`` (every run's numbers in long form), ``tables/suspect_runs.md`` (runs that look wrong, and why),
``tables/paired_differences.{tex,csv,md}`` (a paired bootstrap of each reference method against the others) and
``tables/claims.{tex,csv,md}`` (the paper's claims, each with its verdict).
Outputs of a table or figure that has no data any more are removed, so the folder never shows stale numbers.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from prompt_ot.errors import UserError
from prompt_ot.report import claims, evidence, gap, plots, render, tables
from prompt_ot.report.collect import load_runs, wide
from prompt_ot.report.grid import dataset_option_notes, select_grid
from prompt_ot.report.model import Table
from prompt_ot.report.names import dataset_order
from prompt_ot.report.paired import DEFAULT_RESAMPLES, DEFAULT_SEED
from prompt_ot.report.per_class import per_class_files
from prompt_ot.report.published import Published
from prompt_ot.utils.io import atomic_write_text

TABLE_NAMES = [
    "base2novel_average",
    "base2novel_per_dataset",
    "ablation",
    "cross_dataset",
    "domain_generalization",
    "few_shot",
]


@dataclass
class Report:
    tables: list[Table] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per table not written, with the reason
    notes: list[str] = field(default_factory=list)  # what the input selection left out
    warnings: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    gap: gap.Gap | None = None  # ours against the published numbers (build_report)
    # table name -> dataset -> the same table on that dataset's runs alone: the figures' panels, never written
    per_dataset: dict[str, dict[str, Table]] = field(default_factory=dict)
    evidence: claims.Evidence | None = None  # paired differences and the claims (build_report)
    suspects: list[evidence.Suspect] = field(default_factory=list)


@dataclass(frozen=True)
class Statistics:
    """The paired bootstrap's settings (params.yaml ``statistics``, or the report's options)."""

    references: tuple[str, ...] = claims.DEFAULT_REFERENCES
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    strict: bool = False  # a reference without runs is an error (named by the user), not a note (a default)


TABLE_PROTOCOL = {
    "base2novel_average": "base2novel",
    "base2novel_per_dataset": "base2novel",
    "ablation": "base2novel",
    "cross_dataset": "cross_dataset",
    "domain_generalization": "domain_generalization",
    "few_shot": "few_shot",
}


def build_tables(runs, published: Published) -> Report:
    """All tables the runs allow; a protocol without runs is skipped with a reason."""
    report = Report()
    protocols = set(runs["protocol"])
    if "base2novel" in protocols:
        frame = wide(runs, "base2novel")
        average, warnings = tables.base2novel_average(frame, published)
        report.tables += [average, tables.base2novel_per_dataset(frame)]
        report.warnings += warnings
        ablation = tables.ablation(frame)
        if ablation is None:
            report.skipped.append("ablation: fewer than two methods of any ablation group ran base2novel")
        else:
            report.tables.append(ablation)
    else:
        report.skipped += [f"{name}: no base2novel runs" for name in TABLE_NAMES[:3]]
    for protocol in ("cross_dataset", "domain_generalization"):
        if protocol in protocols:
            table, warnings = tables.transfer(wide(runs, protocol), protocol, published)
            report.tables.append(table)
            report.warnings += warnings
        else:
            report.skipped.append(f"{protocol}: no {protocol} runs")
    if "few_shot" in protocols:
        frame = wide(runs, "few_shot")
        table, warnings = tables.few_shot(frame)
        report.tables.append(table)
        report.warnings += warnings
        report.per_dataset["few_shot"] = {
            dataset: tables.few_shot(frame[frame["dataset"] == dataset])[0]
            for dataset in sorted(frame["dataset"].unique(), key=dataset_order)
        }
    else:
        report.skipped.append("few_shot: no few_shot runs")
    return report


def _figures(report: Report, figures: Path) -> list[Path]:
    """One figure per protocol whose table the report holds (and the lambda sweeps); every method in the same style
    in all of them."""
    by_name = {t.name: t for t in report.tables}
    styles = plots.method_styles(r.key for t in report.tables for r in t.rows if not r.published)
    written = []
    if "base2novel_average" in by_name:
        average = by_name["base2novel_average"]
        written += plots.tradeoff(average, figures, styles)
        for base_method, rows in plots.lambda_sweeps(average).items():
            written += plots.lambda_sweep(base_method, rows, figures)
    for name in ("cross_dataset", "domain_generalization"):
        if name in by_name:
            written += plots.transfer(by_name[name], figures, styles)
    if "few_shot" in by_name:
        written += plots.few_shot(by_name["few_shot"], figures, report.per_dataset.get("few_shot"), styles)
    return written


def _index(report: Report, n_files: int, figures: list[Path], out: Path) -> str:
    lines = ["# prompt-ot report", "", f"Generated by `python -m prompt_ot report` from {n_files} metrics files.", ""]
    for table in report.tables:
        lines += [
            f"## {table.name}",
            "",
            render.to_markdown(table),
            f"Files: `{table.name}.tex`, `{table.name}.csv`, `{table.name}.md`",
            "",
        ]
    if report.evidence is not None:
        for name in (claims.CLAIMS_NAME, claims.PAIRED_NAME):
            lines += [f"## {name}", "", f"See `{name}.md` (also `{name}.tex`, `{name}.csv`).", ""]
    lines += [
        f"## {evidence.SUSPECT_NAME}",
        "",
        f"{len(report.suspects)} suspect runs: `{evidence.SUSPECT_NAME}.md`. Every run's numbers: `runs.csv`.",
        "",
    ]
    if report.gap is not None:
        lines += [
            f"## {gap.NAME}",
            "",
            gap.to_markdown(report.gap),
            f"Files: `{gap.NAME}.tex`, `{gap.NAME}.csv`, `{gap.NAME}.md`",
            "",
        ]
    if figures:
        lines += (
            ["## Figures", ""]
            + [f"![{p.stem}](../{p.relative_to(out).as_posix()})" for p in figures if p.suffix == ".png"]
            + [""]
        )
    for title, items in (("Skipped", report.skipped), ("Notes", report.notes), ("Warnings", report.warnings)):
        if items:
            lines += [f"## {title}", ""] + [f"- {item}" for item in items] + [""]
    return "\n".join(lines)


def build_report(
    paths: list[Path],
    published: Published,
    out: str | Path,
    figures: bool = True,
    params: dict | None = None,
    params_source: str = "params.yaml",
    allow_missing: bool = False,
    statistics: Statistics | None = Statistics(),
    per_class: tuple[str, ...] = (),
) -> Report:
    """Read the metrics files (only the grid of ``params`` when given: a run of the grid without a metrics file is
    refused unless ``allow_missing``, and then named in the captions and warnings), then write every table, the
    figures (unless ``figures`` is False), the paired statistics and claims (unless ``statistics`` is None), a
    per-class table of each dataset in ``per_class``,
    ``tables/all.tex`` and ``tables/index.md``.

    Everything is written into a hidden building folder first; ``tables/`` (and ``figures/``) then replace
    the old folders whole, so a killed report never leaves a half-updated folder behind.
    """
    from prompt_ot.utils.io import building_folder, replace_folder

    out = Path(out)
    runs, notes, warnings, selection = load_runs(paths), [], [], None
    if params is not None:
        selection = select_grid(runs, params, params_source, allow_missing)
        runs, notes, warnings = selection.runs, selection.notes, selection.warnings
    report = build_tables(runs, published)
    report.notes = notes
    report.warnings[:0] = warnings
    if selection is not None:
        for table in report.tables:
            table.notes += selection.missing_notes(TABLE_PROTOCOL.get(table.name, ""))
            table.notes += dataset_option_notes(params)
    report.gap = gap.reproduction_gap(runs, published)
    report.notes.append(report.gap.summary())
    report.suspects = evidence.suspect_runs(runs)
    report.warnings += [f"suspect run: {s.line()}" for s in report.suspects]
    extra_files = [("runs.csv", evidence.runs_frame(runs).to_csv(index=False))]
    extra_files.append((f"{evidence.SUSPECT_NAME}.md", evidence.suspect_markdown(report.suspects, len(runs))))
    for dataset in per_class:  # per-class tables asked for (prompt_ot/report/per_class.py)
        extra_files += per_class_files(runs, dataset)
    if statistics is not None and statistics.strict:
        unknown = [r for r in statistics.references if r not in set(runs["method"])]
        if unknown:
            raise UserError(
                f"--reference {' '.join(unknown)}: no runs of this method in the report; methods with runs: "
                f"{', '.join(sorted(set(runs['method'])))}"
            )
    if statistics is not None:
        report.evidence = claims.gather(runs, statistics.references, statistics.resamples, statistics.seed)
        report.notes += [f"not compared: {line}" for line in report.evidence.skipped]
        extra_files += claims.paired_files(report.evidence, runs) + claims.claims_files(report.evidence, runs)
    else:
        report.skipped.append("paired statistics and claims: switched off")
    stage = building_folder(out / "tables")
    try:
        for table in report.tables:
            for suffix, text in (
                (".tex", render.to_latex(table)),
                (".csv", render.to_csv(table)),
                (".md", render.to_markdown(table)),
            ):
                atomic_write_text(stage / "tables" / f"{table.name}{suffix}", text)
                report.written.append(out / "tables" / f"{table.name}{suffix}")
        for name, text in gap.files(report.gap) + extra_files:
            atomic_write_text(stage / "tables" / name, text)
            report.written.append(out / "tables" / name)
        inputs = [f"\\input{{tables/{t.name}}}" for t in report.tables] or ["No tables: the metrics held no runs."]
        if report.evidence is not None and report.tables:
            inputs.append(f"\\input{{tables/{claims.CLAIMS_NAME}}}")
        atomic_write_text(
            stage / "tables" / "all.tex",
            "% generated by `python -m prompt_ot report`: the tables of "
            "its last run; paths are relative to the report folder\n" + "\n".join(inputs) + "\n",
        )
        drawn = _figures(report, stage / "figures") if figures else []
        written = [out / p.relative_to(stage) for p in drawn]
        atomic_write_text(stage / "tables" / "index.md", _index(report, len(paths), written, out))
        replace_folder(stage / "tables", out / "tables")
        if figures:
            (stage / "figures").mkdir(exist_ok=True)
            replace_folder(stage / "figures", out / "figures")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report.written += [out / "tables" / "all.tex"] + written + [out / "tables" / "index.md"]
    return report
