"""The report stage on synthetic metrics files with known values: numbers, bold, published rows, files, errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from prompt_ot.cli import main
from prompt_ot.errors import UserError
from prompt_ot.report.build import build_report
from prompt_ot.report.collect import metrics_paths
from prompt_ot.report.names import latex_escape
from prompt_ot.report.published import read_published
from prompt_ot.results import RunMetrics, write_metrics
from tests.support.workflow import ROOT

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "reports" / "published"
BACKBONE = "ViT-B-16-quickgelu"
TABLES = "base2novel_average base2novel_per_dataset ablation cross_dataset domain_generalization few_shot".split()


def write_run(
    folder: Path,
    protocol: str,
    method: str,
    dataset: str,
    seed: int,
    accuracy: dict,
    shots: int = 16,
    base_method: str | None = None,
    weight: float | None = None,
    backbone: str = BACKBONE,
) -> Path:
    path = folder / f"{protocol}-{method}-{dataset}-{shots}-{seed}.json"
    write_metrics(
        path,
        RunMetrics(
            protocol,
            method,
            dataset,
            seed,
            shots,
            backbone,
            accuracy,
            base_method=base_method or method,
            regulariser_weight=weight,
        ),
    )
    return path


def b2n_values(
    seed: int = 0, methods=("ivlp", "prompt_ot"), datasets=("caltech101", "dtd", "eurosat"), seeds=(1, 2, 3)
) -> pd.DataFrame:
    """Random base/novel accuracies, one row per run."""
    rng = np.random.default_rng(seed)
    rows = [
        {"method": m, "dataset": d, "seed": s, "base": rng.uniform(50, 95), "novel": rng.uniform(40, 90)}
        for m in methods
        for d in datasets
        for s in seeds
    ]
    return pd.DataFrame(rows)


def write_b2n(folder: Path, values: pd.DataFrame) -> list[Path]:
    return [
        write_run(folder, "base2novel", r.method, r.dataset, int(r.seed), {"base": r.base, "novel": r.novel})
        for r in values.itertuples()
    ]


def report(tmp_path: Path, paths: list[Path], published: bool = True, figures: bool = False) -> Path:
    out = tmp_path / "out"
    build_report(paths, read_published(PUBLISHED if published else None), out, figures=figures)
    return out


def csv(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{name}.csv")


def row(frame: pd.DataFrame, method: str, **where) -> pd.Series:
    mask = frame["method"] == method
    for key, value in where.items():
        mask &= frame[key] == value
    assert mask.sum() == 1, (method, where)
    return frame[mask].iloc[0]


def latex_rows(text: str, n_columns: int) -> list[list[str]]:
    """The value cells of each body row of a generated table (bold markup removed)."""
    body = text.split("\\endlastfoot")[-1] if "\\endlastfoot" in text else text.split("\\midrule", 1)[1]
    rows = []
    for line in body.splitlines():
        if line.rstrip().endswith("\\\\") and "&" in line:
            cells = [c.strip() for c in line.rstrip()[:-2].split(" & ")]
            rows.append([re.sub(r"^\\textbf\{(.*)\}$", r"\1", c) for c in cells[-n_columns:]])
    return rows


def hm(base, novel):
    return 2 * base * novel / (base + novel)


# ---------------------------------------------------------------- numbers


def test_mean_std_over_seeds_match_pandas_reference(tmp_path):
    values = b2n_values()
    out = report(tmp_path, write_b2n(tmp_path / "runs", values), published=False)
    per_dataset, average = csv(out, "base2novel_per_dataset"), csv(out, "base2novel_average")
    values["hm"] = hm(values["base"], values["novel"])
    reference = values.groupby(["method", "dataset"])[["base", "novel", "hm"]].agg(["mean", "std", "count"])
    for (method, dataset), ref in reference.iterrows():
        got = row(per_dataset, method, dataset=dataset)
        for metric in ("base", "novel", "hm"):
            assert got[f"{metric}_mean"] == pytest.approx(ref[(metric, "mean")], abs=1e-10)
            assert got[f"{metric}_std"] == pytest.approx(ref[(metric, "std")], abs=1e-10)
            assert got[f"{metric}_n_seeds"] == 3
    for method, runs in values.groupby("method"):
        per_seed = runs.groupby("seed")[["base", "novel", "hm"]].mean()  # dataset averages of each seed
        got = row(average, method)
        for metric, column in (("base", "base"), ("novel", "novel"), ("hm", "avg_of_hm")):
            assert got[f"{column}_mean"] == pytest.approx(per_seed[metric].mean(), abs=1e-10)
            assert got[f"{column}_std"] == pytest.approx(np.std(per_seed[metric].to_numpy(), ddof=1), abs=1e-10)
            assert got[f"{column}_n_seeds"] == 3
        assert got["n_datasets"] == 3


def test_missing_seed_mean_over_what_exists_with_count_and_warning(tmp_path, capsys):
    values = b2n_values(seed=1)
    values = values[~((values.method == "ivlp") & (values.dataset == "dtd") & (values.seed == 3))]
    paths = write_b2n(tmp_path / "runs", values)
    assert (
        main(
            ["report", "--metrics", *map(str, paths), "--no-published", "--no-figures", "--out", str(tmp_path / "out")]
        )
        == 0
    )
    assert "ivlp on dtd: 2 of 3 seeds (missing 3)" in capsys.readouterr().err
    out = tmp_path / "out"
    ivlp = values[values.method == "ivlp"]
    got = row(csv(out, "base2novel_per_dataset"), "ivlp", dataset="dtd")
    assert got["base_n_seeds"] == 2
    assert got["base_mean"] == pytest.approx(ivlp[ivlp.dataset == "dtd"]["base"].mean(), abs=1e-10)
    average = row(csv(out, "base2novel_average"), "ivlp")
    # mean: average of the per-dataset means of the runs present; std: over the seeds that cover every dataset
    assert average["base_mean"] == pytest.approx(ivlp.groupby("dataset")["base"].mean().mean(), abs=1e-10)
    complete = ivlp[ivlp.seed.isin([1, 2])].groupby("seed")["base"].mean()
    assert average["base_std"] == pytest.approx(complete.std(ddof=1), abs=1e-10)
    assert average["base_n_seeds"] == 2
    assert row(csv(out, "base2novel_average"), "prompt_ot")["base_n_seeds"] == 3


def test_both_hm_definitions_computed_and_labelled(tmp_path):
    # two datasets with opposite trade-offs: HM of the averages is 50, the average of the per-dataset HMs is 18
    paths = [
        write_run(tmp_path, "base2novel", "prompt_ot", "dtd", 1, {"base": 90.0, "novel": 10.0}),
        write_run(tmp_path, "base2novel", "prompt_ot", "eurosat", 1, {"base": 10.0, "novel": 90.0}),
    ]
    out = report(tmp_path, paths, published=False)
    got = row(csv(out, "base2novel_average"), "prompt_ot")
    assert got["hm_of_avg_mean"] == pytest.approx(50.0)
    assert got["avg_of_hm_mean"] == pytest.approx(18.0)
    tex = (out / "tables" / "base2novel_average.tex").read_text()
    assert "& HM of avg. & Avg. of HMs \\\\" in tex
    assert "harmonic mean of the average base and novel accuracies" in tex
    assert "average over datasets of each dataset's harmonic mean" in tex
    assert latex_rows(tex, 4) == [["50.00", "50.00", "50.00", "18.00"]]


def test_hm_of_averages_std_is_over_seeds(tmp_path):
    values = b2n_values(seed=2, methods=("prompt_ot",))
    out = report(tmp_path, write_b2n(tmp_path, values), published=False)
    got = row(csv(out, "base2novel_average"), "prompt_ot")
    per_seed = values.groupby("seed")[["base", "novel"]].mean()
    assert got["hm_of_avg_mean"] == pytest.approx(hm(values.base.mean(), values.novel.mean()), abs=1e-10)
    assert got["hm_of_avg_std"] == pytest.approx(hm(per_seed.base, per_seed.novel).std(ddof=1), abs=1e-10)


# ---------------------------------------------------------------- bold and published rows


def test_bold_goes_to_the_numerically_best_not_the_string_best(tmp_path):
    paths = [
        write_run(tmp_path, "base2novel", "ivlp", "dtd", 1, {"base": 9.5, "novel": 30.0}),
        write_run(tmp_path, "base2novel", "prompt_ot", "dtd", 1, {"base": 10.2, "novel": 20.0}),
    ]
    out = report(tmp_path, paths)  # the published rows (base above 69) must not take the bold
    tex = (out / "tables" / "base2novel_average.tex").read_text()
    assert "\\textbf{10.20}" in tex and "\\textbf{9.50}" not in tex
    assert "\\textbf{30.00}" in tex and "\\textbf{20.00}" not in tex
    per_dataset = (out / "tables" / "base2novel_per_dataset.tex").read_text()
    assert "\\textbf{10.20}" in per_dataset and "\\textbf{9.50}" not in per_dataset
    markdown = (out / "tables" / "base2novel_average.md").read_text()
    assert "**10.20**" in markdown and "**9.50**" not in markdown
    assert not re.search(r"\*\*8\d\.\d\d\*\*", markdown)


def test_published_rows_marked_separate_never_bold_nor_averaged(tmp_path):
    values = b2n_values(seed=3)
    paths = write_b2n(tmp_path / "runs", values)
    with_published = report(tmp_path / "a", paths, published=True)
    without = report(tmp_path / "b", paths, published=False)
    ours_with = csv(with_published, "base2novel_average")
    ours_without = csv(without, "base2novel_average")
    pd.testing.assert_frame_equal(
        ours_with[~ours_with.published].drop(columns="source").reset_index(drop=True),
        ours_without.reset_index(drop=True),
        check_dtype=False,
    )
    quoted = pd.read_csv(PUBLISHED / "published_base2novel.csv")
    published_rows = ours_with[ours_with.published]
    assert list(published_rows["method"]) == list(quoted["method"])
    assert list(published_rows["base_mean"]) == list(quoted["base"])
    assert list(published_rows["hm_of_avg_mean"]) == list(quoted["hm"])
    assert published_rows["avg_of_hm_mean"].isna().all() and published_rows["base_n_seeds"].isna().all()
    tex = (with_published / "tables" / "base2novel_average.tex").read_text()
    body = tex.split("\\midrule")
    assert len(body) == 3 and "Published" in body[2] and "This suite" in body[1]  # ours first, then a ruled block
    for line in body[2].splitlines():
        if "&" in line:
            assert "$^\\dagger$" in line and "\\textbf" not in line
    assert "PromptSRC README" in tex and "never averaged" in tex
    assert "Prompt-OT" not in body[2]  # the paper's own row stays absent


def test_cross_dataset_and_domain_generalization_tables(tmp_path):
    rng = np.random.default_rng(4)
    paths, expected = [], {}
    for method in ("coop", "prompt_ot"):
        for seed in (1, 2):
            cross = {k: float(rng.uniform(30, 90)) for k in ("imagenet", "caltech101", "dtd", "eurosat")}
            domain = {k: float(rng.uniform(30, 90)) for k in ("imagenet", "imagenet_v2", "imagenet_sketch")}
            paths += [
                write_run(tmp_path, "cross_dataset", method, "imagenet", seed, cross),
                write_run(tmp_path, "domain_generalization", method, "imagenet", seed, domain),
            ]
            expected.setdefault(method, []).append(cross)
    out = report(tmp_path, paths)
    table = csv(out, "cross_dataset")
    for method, runs in expected.items():
        got = row(table, method)
        runs = pd.DataFrame(runs)
        targets = runs[["caltech101", "dtd", "eurosat"]].mean(axis=1)
        assert got["source_mean"] == pytest.approx(runs["imagenet"].mean(), abs=1e-10)
        assert got["dtd_std"] == pytest.approx(runs["dtd"].std(ddof=1), abs=1e-10)
        assert got["target_avg_mean"] == pytest.approx(targets.mean(), abs=1e-10)
        assert got["target_avg_std"] == pytest.approx(targets.std(ddof=1), abs=1e-10)
    coop_published = table[(table.method == "CoOp") & table.published].iloc[0]
    assert coop_published["dtd_mean"] == 41.92 and coop_published["target_avg_mean"] == 63.88
    assert "PromptSRC" in set(table[table.published].method)  # from published_other_protocols.csv
    tex = (out / "tables" / "cross_dataset.tex").read_text()
    assert "ImageNet (source) & Caltech101 & DTD & EuroSAT & Target avg." in tex
    domain = (out / "tables" / "domain_generalization.tex").read_text()
    assert "ImageNet-V2 & ImageNet-Sketch & Target avg." in domain and "MaPLe$^\\dagger$" in domain


def test_ablation_only_groups_that_ran_and_few_shot(tmp_path):
    values = b2n_values(seed=5, methods=("ivlp", "prompt_ot", "prompt_ot_vision", "prompt_ot_sinkhorn"))
    paths = write_b2n(tmp_path, values)
    for method in ("coop", "prompt_ot"):
        for shots in (1, 4):
            for seed in (1, 2):
                paths.append(
                    write_run(tmp_path, "few_shot", method, "dtd", seed, {"all": 40.0 + shots + seed}, shots=shots)
                )
    out = report(tmp_path, paths)
    ablation = csv(out, "ablation")
    assert list(ablation["block"].unique()) == ["Modality", "Solver", "OT vs point-wise"]
    assert set(ablation.method) == {"ivlp", "prompt_ot", "prompt_ot_vision", "prompt_ot_sinkhorn"}
    assert "prompt_ot_text" not in set(ablation.method) and "pointwise_l1" not in set(ablation.method)
    average = csv(out, "base2novel_average")
    assert row(ablation, "ivlp")["hm_of_avg_mean"] == pytest.approx(row(average, "ivlp")["hm_of_avg_mean"])
    few = csv(out, "few_shot")
    assert row(few, "coop")["4_mean"] == pytest.approx(45.5) and row(few, "coop")["1_n_seeds"] == 2


# ---------------------------------------------------------------- files


def test_latex_specials_escaped():
    assert latex_escape("a_b&c%d$e#f{g}h~i^j\\k") == (
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    )


def test_names_with_specials_escaped_in_tables(tmp_path):
    paths = [write_run(tmp_path, "base2novel", "my_method&co%", "my_data", 1, {"base": 50.0, "novel": 60.0})]
    out = report(tmp_path, paths, published=False)
    average = (out / "tables" / "base2novel_average.tex").read_text()
    per_dataset = (out / "tables" / "base2novel_per_dataset.tex").read_text()
    assert r"my\_method\&co\%" in average and "my_method&co%" not in average
    assert r"my\_data" in per_dataset
    assert "my_method&co%" in (out / "tables" / "base2novel_average.md").read_text()


def test_csv_numbers_equal_latex_numbers(full_report):
    out = full_report
    for name in TABLES:
        frame = csv(out, name)
        columns = [c[: -len("_mean")] for c in frame.columns if c.endswith("_mean")]
        rows = latex_rows((out / "tables" / f"{name}.tex").read_text(), len(columns))
        assert len(rows) == len(frame), name
        for cells, (_, record) in zip(rows, frame.iterrows()):
            for cell, column in zip(cells, columns):
                mean, std = record[f"{column}_mean"], record[f"{column}_std"]
                expected = "--" if pd.isna(mean) else f"{mean:.2f}" + ("" if pd.isna(std) else f" $\\pm$ {std:.2f}")
                assert cell == expected, (name, record["method"], column)


def test_index_all_tex_and_figures(full_report):
    out = full_report
    inputs = re.findall(r"\\input\{tables/(\w+)\}", (out / "tables" / "all.tex").read_text())
    assert inputs == TABLES + ["claims"]  # the claims table follows the tables it checks
    for stem in (
        "base2novel_tradeoff",
        "lambda_sweep_prompt_ot",
        "cross_dataset_transfer",
        "domain_generalization",
        "few_shot",
    ):
        png, pdf = out / "figures" / f"{stem}.png", out / "figures" / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert pdf.read_bytes()[:4] == b"%PDF"
    index = (out / "tables" / "index.md").read_text()
    assert "## base2novel_average" in index and "figures/base2novel_tradeoff.png" in index


needs_tex = pytest.mark.skipif(
    shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
    reason="pdflatex or pdftotext is not installed (.ci/run installs them)",
)


@pytest.fixture(scope="module")
def paper_pdf(full_report, tmp_path_factory) -> Path:
    """reports/paper.tex compiled around the full report by the code `make paper` runs."""
    from prompt_ot.report.pdf import compile_paper

    before = sorted((REPO / "reports").glob("paper.*"))
    pdf = compile_paper(full_report, tmp_path_factory.mktemp("paper") / "paper.pdf")
    assert sorted((REPO / "reports").glob("paper.*")) == before  # no aux/log file beside paper.tex
    assert sorted(p.name for p in full_report.iterdir()) == ["figures", "metrics.json", "tables"]
    return pdf


@needs_tex
def test_paper_compiles_with_pdflatex(paper_pdf):
    assert paper_pdf.read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in paper_pdf.parent.iterdir()) == ["paper.pdf"]  # nothing else, no temporary left


@needs_tex
def test_paper_pdf_text_holds_every_number_of_the_tables_csv(full_report, paper_pdf):
    text = subprocess.run(
        ["pdftotext", "-layout", str(paper_pdf), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    lines = text.splitlines()
    assert "base accuracy (%), average over datasets" in text  # the figure, found in the report folder too
    # every results table of the paper (the reproduction gap is a check beside them, not in all.tex)
    checks = {"reproduction_gap", "runs", "paired_differences", "claims"}  # beside the results tables
    names = [p.stem for p in sorted((full_report / "tables").glob("*.csv")) if p.stem not in checks]
    assert len(names) == 6
    for name in names:
        frame = csv(full_report, name)
        columns = [c[: -len("_mean")] for c in frame.columns if c.endswith("_mean")]
        for _, record in frame.iterrows():
            means, stds = (record[f"{c}_mean"] for c in columns), (record[f"{c}_std"] for c in columns)
            cells = [
                "–" if pd.isna(m) else f"{m:.2f}" + ("" if pd.isna(s) else f" ± {s:.2f}") for m, s in zip(means, stds)
            ]
            # the row's cells on one line of the PDF, in the table's column order ("--", an en dash, where none)
            pattern = re.compile(r"(?<![\d.])" + r"\s+".join(re.escape(c) for c in cells) + r"(?![\d.])")
            assert any(pattern.search(line) for line in lines), (name, record["name"], cells)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_paper_without_the_demo_says_to_run_make_demo(tmp_path):
    result = subprocess.run(
        ["make", "-s", "paper", f"PAPER_REPORTS={tmp_path / 'reports'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    # the message, then only make's own "*** [Makefile:N: paper] Error 1"
    message, *rest = result.stderr.strip().splitlines()
    assert message == f"make paper: no demo tables in {tmp_path / 'reports'}/tables: run `make demo` first"
    assert len(rest) <= 1 and "Error" in "".join(rest)
    assert not (tmp_path / "reports").exists()


def test_skipped_protocols_logged_and_stale_outputs_removed(tmp_path, capsys):
    runs = tmp_path / "runs"
    cross = write_run(runs, "cross_dataset", "coop", "imagenet", 1, {"imagenet": 70.0, "dtd": 40.0})
    write_b2n(runs, b2n_values(seed=6, methods=("coop",), datasets=("dtd",)))
    out = tmp_path / "out"
    args = ["report", "--metrics-dir", str(runs), "--no-published", "--no-figures", "--out", str(out)]
    assert main(args) == 0
    assert (out / "tables" / "cross_dataset.tex").exists()
    cross.unlink()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "skipped cross_dataset: no cross_dataset runs" in printed and "skipped few_shot" in printed
    assert not (out / "tables" / "cross_dataset.tex").exists()
    assert "cross_dataset" not in (out / "tables" / "all.tex").read_text()
    assert "no cross_dataset runs" in (out / "tables" / "index.md").read_text()


def test_a_report_that_fails_midway_leaves_the_previous_folders_whole(tmp_path, monkeypatch):
    """Tables and figures are built in a hidden folder and swapped in whole: a failure (or a kill) while
    drawing leaves the previous report byte-identical and no half-written folder."""
    from prompt_ot.report import plots

    runs = tmp_path / "runs"
    write_b2n(runs, b2n_values(seed=6, methods=("coop",), datasets=("dtd",)))
    out = tmp_path / "out"
    args = ["report", "--metrics-dir", str(runs), "--no-published", "--out", str(out)]
    assert main(args) == 0
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert any(str(name).startswith("figures") for name in before)
    write_b2n(runs, b2n_values(seed=7, methods=("coop", "prompt_ot"), datasets=("dtd",)))

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "tradeoff", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        main(args)
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before
    assert sorted(p.name for p in out.iterdir()) == ["figures", "metrics.json", "tables"]  # no building folder left


def test_lambda_sweep_figure_only_with_several_weights(tmp_path):
    paths = []
    for weight in (1.0, 10.0):
        method = "prompt_ot" if weight == 10.0 else "prompt_ot_lambda1"
        paths.append(
            write_run(
                tmp_path,
                "base2novel",
                method,
                "dtd",
                1,
                {"base": 70 + weight, "novel": 60.0},
                base_method="prompt_ot",
                weight=weight,
            )
        )
    out = report(tmp_path, paths, published=False, figures=True)
    assert (out / "figures" / "lambda_sweep_prompt_ot.pdf").read_bytes()[:4] == b"%PDF"
    average = csv(out, "base2novel_average")
    assert list(average.method) == ["prompt_ot", "prompt_ot_lambda1"] and list(average["lambda"]) == [10.0, 1.0]
    out_single = report(tmp_path / "single", paths[:1], published=False, figures=True)
    assert not list((out_single / "figures").glob("lambda_sweep_*"))


# ---------------------------------------------------------------- failure modes


def test_corrupt_metrics_file_names_it(tmp_path, capsys):
    good = write_run(tmp_path, "base2novel", "coop", "dtd", 1, {"base": 70.0, "novel": 60.0})
    bad = tmp_path / "broken.json"
    bad.write_text('{"format": "prompt_ot.metrics/1", "protocol": ')
    with pytest.raises(UserError, match=re.escape(str(bad))):
        build_report([good, bad], read_published(None), tmp_path / "out")
    assert main(["report", "--metrics-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_input_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.json").write_text('{"train": []}')  # not a metrics file: skipped
    (tmp_path / "list.txt").write_text("# nothing yet\n\n")
    for args in (["--metrics-dir", str(tmp_path / "empty")], ["--metrics-list", str(tmp_path / "list.txt")], []):
        assert main(["report", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: no") and "metrics" in err and err.count("\n") == 1


def test_duplicate_runs_and_mixed_backbones_rejected(tmp_path):
    first = write_run(tmp_path / "a", "base2novel", "coop", "dtd", 1, {"base": 70.0, "novel": 60.0})
    second = write_run(tmp_path / "b", "base2novel", "coop", "dtd", 1, {"base": 71.0, "novel": 61.0})
    with pytest.raises(UserError, match="same run"):
        metrics = metrics_paths(directory=tmp_path)
        build_report(metrics, read_published(None), tmp_path / "out")
    other = write_run(tmp_path / "c", "base2novel", "coop", "dtd", 2, {"base": 70.0, "novel": 60.0}, backbone="RN50")
    with pytest.raises(UserError, match="mix backbones"):
        build_report([first, other], read_published(None), tmp_path / "out")
    assert second.exists()


def test_missing_accuracy_keys_and_bad_published_folder(tmp_path):
    path = write_run(tmp_path, "base2novel", "coop", "dtd", 1, {"base": 70.0})
    with pytest.raises(UserError, match=f"{re.escape(str(path))}.*'novel'"):
        build_report([path], read_published(None), tmp_path / "out")
    with pytest.raises(UserError, match="--no-published"):
        read_published(tmp_path / "nowhere")
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "published_base2novel.csv").write_text("method,base\nX,1\n")
    with pytest.raises(UserError, match="published_base2novel.csv lacks"):
        read_published(tmp_path / "pub")


def test_every_registry_method_has_a_display_name():
    from prompt_ot.methods import method_names
    from prompt_ot.report.names import METHOD_NAMES

    assert set(method_names()) <= set(METHOD_NAMES)


# ---------------------------------------------------------------- one full report shared by the file tests


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    """Every protocol, a lambda sweep, a missing seed, published rows and figures."""
    folder = tmp_path_factory.mktemp("full")
    runs = folder / "runs"
    values = b2n_values(
        seed=7,
        methods=(
            "zeroshot",
            "ivlp",
            "pointwise_l1",
            "prompt_ot",
            "prompt_ot_text",
            "prompt_ot_vision",
            "prompt_ot_unbalanced",
        ),
    )
    values = values[~((values.method == "ivlp") & (values.dataset == "dtd") & (values.seed == 2))]
    write_b2n(runs, values)
    rng = np.random.default_rng(8)
    for weight in (0.1, 1.0, 100.0):
        for dataset in ("caltech101", "dtd", "eurosat"):
            for seed in (1, 2, 3):
                write_run(
                    runs,
                    "base2novel",
                    f"prompt_ot_lambda{weight:g}",
                    dataset,
                    seed,
                    {"base": float(rng.uniform(60, 90)), "novel": float(rng.uniform(50, 80))},
                    base_method="prompt_ot",
                    weight=weight,
                )
    for method in ("coop", "prompt_ot"):
        for seed in (1, 2, 3):
            write_run(
                runs,
                "cross_dataset",
                method,
                "imagenet",
                seed,
                {k: float(rng.uniform(20, 90)) for k in ("imagenet", "caltech101", "oxford_pets", "dtd")},
            )
            write_run(
                runs,
                "domain_generalization",
                method,
                "imagenet",
                seed,
                {
                    k: float(rng.uniform(20, 90))
                    for k in ("imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
                },
            )
            for shots in (1, 2, 4):
                write_run(runs, "few_shot", method, "dtd", seed, {"all": float(rng.uniform(30, 80))}, shots=shots)
    out = folder / "out"
    assert main(["report", "--metrics-dir", str(runs), "--published", str(PUBLISHED), "--out", str(out)]) == 0
    return out


def small_grid(folder: Path) -> Path:
    """The repository's params.yaml with a grid of two methods, base-to-novel on DTD, seeds 1-3."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["methods"] = ["coop", "prompt_ot"]
    params["protocols"]["base2novel"]["datasets"] = ["dtd"]
    params["protocols"]["cross_dataset"]["sources"] = []
    params["protocols"]["domain_generalization"]["sources"] = []
    params["protocols"]["few_shot"]["methods"] = []
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def grid_report(tmp_path, *extra):
    runs = tmp_path / "runs"
    for seed in (1, 2, 4):  # the grid has seeds 1, 2, 3
        write_run(runs, "base2novel", "coop", "dtd", seed, {"base": 70.0 + seed, "novel": 60.0})
    write_run(runs, "base2novel", "prompt_ot_sinkhorn", "dtd", 1, {"base": 90.0, "novel": 90.0})  # not in its methods
    write_run(runs, "base2novel", "coop", "eurosat", 1, {"base": 90.0, "novel": 90.0})  # not in its datasets
    out = tmp_path / "out"
    argv = ["report", "--params", str(small_grid(tmp_path)), "--metrics-dir", str(runs), "--no-published"]
    return main(argv + ["--no-figures", "--out", str(out), *extra]), out


def test_a_grid_with_runs_missing_is_refused_naming_them_and_nothing_is_written(tmp_path, capsys):
    status, out = grid_report(tmp_path)
    assert status == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4 runs of the grid of" in err
    assert "base2novel coop on dtd (16 shots): seed 3; base2novel prompt_ot on dtd (16 shots): seed 1, 2, 3" in err
    assert "rerun the pipeline" in err and "--allow-missing" in err


def test_allow_missing_reports_the_grid_and_names_the_missing_runs_in_captions_and_log(tmp_path, capsys):
    status, out = grid_report(tmp_path, "--allow-missing")
    assert status == 0
    captured = capsys.readouterr()
    assert "left out 3 runs outside the grid" in captured.out
    assert "(methods prompt_ot_sinkhorn; seeds 4)" in captured.out
    assert "missing from the grid of" in captured.err and "prompt_ot on dtd (16 shots): seed 1, 2, 3" in captured.err
    average = csv(out, "base2novel_average")
    assert list(average.method) == ["coop"] and average["base_mean"].iloc[0] == pytest.approx(71.5)
    caption = (out / "tables" / "base2novel_average.md").read_text().split("\n")[0]
    assert "Runs of the grid missing from these numbers (2 groups): coop on dtd (16 shots): seed 3; " in caption
    assert "prompt_ot on dtd (16 shots): seed 1, 2, 3." in caption


def test_a_report_of_a_project_runs_folder_is_held_to_the_grid_beside_it(tmp_path, capsys):
    """`python -m prompt_ot report --metrics-dir runs` in a project folder finds its params.yaml (paths.runs names
    the folder), so a run deleted by hand cannot vanish from the tables unnoticed; --params none opts out."""
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load(small_grid(tmp_path).read_text())
    params["paths"]["runs"] = "runs"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for seed in (1, 2, 3):
        write_run(project / "runs", "base2novel", "coop", "dtd", seed, {"base": 70.0, "novel": 60.0})
    argv = ["report", "--metrics-dir", str(project / "runs"), "--no-published", "--no-figures"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 2
    assert "3 runs of the grid of" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "b"), "--params", "none"]) == 0
    assert list(csv(tmp_path / "b", "base2novel_average").method) == ["coop"]


def test_methods_on_different_datasets_are_flagged_and_ablation_uses_common_datasets(tmp_path):
    from prompt_ot.report.build import build_tables
    from prompt_ot.report.collect import load_runs

    paths = [
        write_run(tmp_path, "base2novel", "ivlp", "dtd", 1, {"base": 80.0, "novel": 60.0}),
        write_run(tmp_path, "base2novel", "prompt_ot", "dtd", 1, {"base": 70.0, "novel": 70.0}),
        write_run(tmp_path, "base2novel", "prompt_ot", "eurosat", 1, {"base": 90.0, "novel": 90.0}),
    ]
    report = build_tables(load_runs(paths), read_published(None))
    assert any("different datasets (ivlp 1, prompt_ot 2)" in w for w in report.warnings)
    tables = {t.name: t for t in report.tables}
    average = {r.key: r for r in tables["base2novel_average"].rows}
    assert average["prompt_ot"].cells["base"].mean == pytest.approx(80.0)
    ablation = {r.key: r for r in tables["ablation"].rows}
    assert ablation["prompt_ot"].cells["base"].mean == pytest.approx(70.0)  # dtd only, the datasets ivlp has
    assert ablation["prompt_ot"].extra["n_datasets"] == 1


def test_tables_say_which_recipe_and_mark_rows_tested_before_their_last_epoch(tmp_path):
    """Captions name the recipe the rows used; rows whose runs were tested before their last epoch (Prompt-OT's
    released base-to-novel recipe tests epoch 31 of 40) carry ‡ and a note naming the epoch."""
    paths = []
    for row_ in b2n_values(methods=("ivlp", "prompt_ot")).itertuples():
        epoch, epochs = (31, 40) if row_.method == "prompt_ot" else (20, 20)
        path = tmp_path / f"{row_.method}-{row_.dataset}-{row_.seed}.json"
        write_metrics(
            path,
            RunMetrics(
                "base2novel",
                row_.method,
                row_.dataset,
                int(row_.seed),
                16,
                BACKBONE,
                {"base": row_.base, "novel": row_.novel},
                base_method=row_.method,
                epoch=epoch,
                epochs=epochs,
                recipe="released",
            ),
        )
        paths.append(path)
    out = report(tmp_path, paths, published=False)
    markdown = (out / "tables" / "base2novel_average.md").read_text()
    assert "Recipe: released, each method trained with its authors' released recipe" in markdown
    assert "| Prompt-OT (ours) ‡ |" in markdown and "| IVLP |" in markdown
    assert (
        "‡ Tested before the last epoch, as the released scripts do (train.eval_epoch): Prompt-OT (ours): epoch "
        "31 of 40." in markdown
    )
    latex = (out / "tables" / "base2novel_average.tex").read_text()
    assert r"Prompt-OT (ours)$^\ddagger$" in latex and r"$^\ddagger$ Tested before the last epoch" in latex
    frame = csv(out, "base2novel_average")
    assert row(frame, "prompt_ot")["tested_early"] and not row(frame, "ivlp")["tested_early"]
    per_dataset = (out / "tables" / "base2novel_per_dataset.md").read_text()
    assert "Recipe: released" in per_dataset and "Prompt-OT (ours) ‡" in per_dataset
    # runs of the shared recipe, tested at their last epoch: no marks, the other sentence
    for path in paths:
        text = (
            path.read_text().replace('"epoch": 31', '"epoch": 40').replace('"recipe": "released"', '"recipe": "shared"')
        )
        path.write_text(text)
    out = report(tmp_path / "shared", paths, published=False)
    markdown = (out / "tables" / "base2novel_average.md").read_text()
    assert "Recipe: shared, every method trained with Prompt-OT's recipe" in markdown and "‡" not in markdown


def test_the_compared_methods_are_named_beside_their_published_rows_and_in_the_ablation(tmp_path):
    values = b2n_values(seed=8, methods=("coop", "cocoop", "maple", "promptsrc", "prompt_ot"))
    out = report(tmp_path, write_b2n(tmp_path / "runs", values), figures=True)
    average = csv(out, "base2novel_average")
    ours = average[~average.published]
    assert {"CoCoOp", "MaPLe", "PromptSRC", "Prompt-OT (ours)"} <= set(ours.name)
    published = set(average[average.published].method)
    assert {"CoCoOp", "MaPLe", "PromptSRC"} <= published  # reports/published, quoted from the PromptSRC README
    ablation = csv(out, "ablation")
    compared = ablation[ablation.block == "Against the compared methods"]
    assert set(compared.method) == {"prompt_ot", "promptsrc", "maple", "cocoop", "coop"}
    assert row(compared, "maple")["hm_of_avg_mean"] == pytest.approx(row(average, "maple")["hm_of_avg_mean"])
    assert (out / "figures" / "base2novel_tradeoff.png").is_file()


# ---------------------------------------------------------------- reproduction gap

BENCHMARK = (
    "imagenet caltech101 oxford_pets stanford_cars flowers102 food101 fgvc_aircraft sun397 dtd eurosat ucf101".split()
)
DOMAIN_TARGETS = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
SPECIAL_SOURCE = "Prompt-OT paper, Tables 1 & 2 (50% of runs_x)"


def gap_fixture(tmp_path: Path):
    """Runs of coop and prompt_ot (published rows) and kgcoop (none) on every protocol, and a published folder:
    the repository's transfer CSVs plus test-only base-to-novel and few-shot numbers."""
    rng = np.random.default_rng(11)
    values = b2n_values(seed=11, methods=("coop", "prompt_ot", "kgcoop"), datasets=BENCHMARK)
    values = values[~((values.method == "prompt_ot") & (values.dataset == "eurosat") & (values.seed == 3))]
    paths = write_b2n(tmp_path / "runs", values)
    transfer = []
    for method in ("coop", "prompt_ot"):
        for seed in (1, 2):
            accuracy = {d: float(rng.uniform(20, 90)) for d in BENCHMARK}
            paths.append(write_run(tmp_path / "runs", "cross_dataset", method, "imagenet", seed, accuracy))
            transfer.append({"protocol": "cross_dataset", "method": method, "seed": seed, **accuracy})
    for seed in (1, 2, 3):
        accuracy = {d: float(rng.uniform(20, 90)) for d in ["imagenet", *DOMAIN_TARGETS]}
        paths.append(write_run(tmp_path / "runs", "domain_generalization", "coop", "imagenet", seed, accuracy))
        transfer.append({"protocol": "domain_generalization", "method": "coop", "seed": seed, **accuracy})
    paths.append(write_run(tmp_path / "runs", "few_shot", "coop", "dtd", 1, {"all": 55.5}, shots=4))  # one seed
    published = tmp_path / "published"
    published.mkdir()
    for name in ("published_cross_dataset_per_dataset.csv", "published_other_protocols.csv"):
        shutil.copy(PUBLISHED / name, published / name)
    (published / "published_base2novel.csv").write_text(
        "method,base,novel,hm,source\nCoOp,82.69,63.22,71.66,PromptSRC README\n"
        f'Prompt-OT,70.00,65.00,,"{SPECIAL_SOURCE}"\n'
    )
    (published / "published_base2novel_per_dataset.csv").write_text(
        "method,dataset,base,novel,hm,source\nCoOp,dtd,79.44,41.18,54.24,CoOp paper\n"
        "CoOp,eurosat,92.19,54.74,68.69,CoOp paper\nPrompt-OT,dtd,72.5,60.0,,test\n"
    )
    (published / "published_few_shot.csv").write_text(
        "method,dataset,shots,accuracy,source\nCoOp,dtd,4,56.0,CoOp paper\nCoOp,average,4,68.7,CoOp paper\n"
    )
    return paths, values, pd.DataFrame(transfer), published


def gap_reference(values: pd.DataFrame, transfer: pd.DataFrame, published: Path) -> pd.DataFrame:
    """The expected gap rows, computed here with pandas from the generated accuracies and the published CSVs."""
    names = {"coop": "CoOp", "prompt_ot": "Prompt-OT"}  # the published names of our methods in these files
    values = values.assign(hm=hm(values["base"], values["novel"]))
    ours = []  # protocol, method, dataset, shots, metric, mean, std, n
    for (method, dataset), runs in values.groupby(["method", "dataset"]):
        for metric in ("base", "novel", "hm"):
            ours.append(
                ("base2novel", method, dataset, 16, metric, runs[metric].mean(), runs[metric].std(ddof=1), len(runs))
            )
    for method, runs in values.groupby("method"):
        per_dataset = runs.groupby("dataset")[["base", "novel"]].mean()
        complete = runs.groupby("seed")["dataset"].nunique() == runs["dataset"].nunique()
        per_seed = runs[runs["seed"].isin(complete[complete].index)].groupby("seed")[["base", "novel"]].mean()
        for metric in ("base", "novel"):
            ours.append(
                (
                    "base2novel",
                    method,
                    "average",
                    16,
                    metric,
                    per_dataset[metric].mean(),
                    per_seed[metric].std(ddof=1),
                    len(per_seed),
                )
            )
        ours.append(
            (
                "base2novel",
                method,
                "average",
                16,
                "hm",
                hm(per_dataset.base.mean(), per_dataset.novel.mean()),
                hm(per_seed.base, per_seed.novel).std(ddof=1),
                len(per_seed),
            )
        )
    for (protocol, method), runs in transfer.groupby(["protocol", "method"]):
        targets = [d for d in (BENCHMARK[1:] if protocol == "cross_dataset" else DOMAIN_TARGETS)]
        runs = runs.assign(average=runs[targets].mean(axis=1))
        for dataset in ["imagenet", *targets, "average"]:
            ours.append(
                (protocol, method, dataset, 16, "accuracy", runs[dataset].mean(), runs[dataset].std(ddof=1), len(runs))
            )
    ours.append(("few_shot", "coop", "dtd", 4, "accuracy", 55.5, np.nan, 1))
    ours.append(("few_shot", "coop", "average", 4, "accuracy", 55.5, np.nan, 1))  # over dtd only
    ours = pd.DataFrame(
        ours, columns=["protocol", "method", "dataset", "shots", "metric", "ours_mean", "ours_std", "n_seeds"]
    )
    # the published numbers, long
    pub = []
    b2n = pd.read_csv(published / "published_base2novel.csv").assign(dataset="average")
    b2n = pd.concat([b2n, pd.read_csv(published / "published_base2novel_per_dataset.csv")])
    for metric in ("base", "novel", "hm"):
        pub.append(b2n.assign(protocol="base2novel", shots=16, metric=metric, published=b2n[metric]))
    cross = pd.read_csv(published / "published_cross_dataset_per_dataset.csv").rename(columns={"target_avg": "average"})
    cross = cross.melt(id_vars=["method", "source"], var_name="dataset", value_name="published")
    pub.append(cross.assign(protocol="cross_dataset", shots=16, metric="accuracy"))
    other = pd.read_csv(published / "published_other_protocols.csv")
    other = other[other.protocol == "domain_generalization"].rename(
        columns={"source_acc": "imagenet", "target_avg": "average"}
    )
    other = other.melt(id_vars=["protocol", "method", "source"], var_name="dataset", value_name="published")
    pub.append(other.assign(shots=16, metric="accuracy"))
    few = pd.read_csv(published / "published_few_shot.csv")
    pub.append(few.assign(protocol="few_shot", metric="accuracy", published=few["accuracy"]))
    pub = (
        pd.concat(pub)[["protocol", "method", "dataset", "shots", "metric", "published", "source"]]
        .dropna(subset=["published"])
        .rename(columns={"method": "published_method"})
    )
    ours["published_method"] = ours["method"].map(names)
    expected = ours.merge(pub, on=["protocol", "published_method", "dataset", "shots", "metric"])
    # a published average covers the benchmark's datasets: ours over dtd only is not compared
    expected = expected[~((expected.protocol == "few_shot") & (expected.dataset == "average"))]
    expected["difference"] = expected["ours_mean"] - expected["published"]
    expected["within_spread"] = [
        pd.NA if n < 2 else bool(abs(d) <= 2 * s)
        for d, s, n in zip(expected.difference, expected.ours_std, expected.n_seeds)
    ]
    return expected, ours


def test_reproduction_gap_matches_a_pandas_reference_and_counts_what_it_leaves_out(tmp_path, capsys):
    paths, values, transfer, published = gap_fixture(tmp_path)
    out = tmp_path / "out"
    assert (
        main(
            ["report", "--metrics", *map(str, paths), "--published", str(published), "--no-figures", "--out", str(out)]
        )
        == 0
    )
    got = pd.read_csv(out / "tables" / "reproduction_gap.csv")
    expected, ours = gap_reference(values, transfer, published)
    keys = ["protocol", "method", "dataset", "shots", "metric"]
    assert sorted(map(tuple, got[keys].values.tolist())) == sorted(map(tuple, expected[keys].values.tolist()))
    assert "kgcoop" not in set(got.method)  # no published row
    merged = expected.merge(got, on=keys, suffixes=("_ref", ""))
    for column in ("ours_mean", "ours_std", "published", "difference"):
        assert np.allclose(merged[column], merged[f"{column}_ref"], atol=1e-10, equal_nan=True), column
    assert (merged["n_seeds"] == merged["n_seeds_ref"]).all()
    assert np.allclose(merged["spread_limit"], 2 * merged["ours_std_ref"], atol=1e-10, equal_nan=True)
    for flag, reference in zip(merged["within_spread"], merged["within_spread_ref"]):
        assert (pd.isna(flag) and pd.isna(reference)) or bool(flag) == reference
    assert merged["within_spread"].isna().sum() == 1  # the few-shot run with one seed
    assert set(merged["within_spread"].dropna()) == {True, False}  # the data exercise both outcomes
    assert (merged["source"] == merged["source_ref"]).all()
    # every (method, protocol, dataset) of ours that no published number matched is left out and counted
    combos = set(map(tuple, ours[["protocol", "method", "dataset", "shots"]].values.tolist()))
    compared = set(map(tuple, expected[["protocol", "method", "dataset", "shots"]].values.tolist()))
    left_out = len(combos - compared) - 1  # the few-shot average over other datasets is counted apart
    assert left_out == 47
    sentence = f"Left out: {left_out} (method, protocol, dataset) combinations of ours without a published number"
    markdown = (out / "tables" / "reproduction_gap.md").read_text()
    tex = (out / "tables" / "reproduction_gap.tex").read_text()
    assert sentence + ", and 1 average of ours over other datasets than the published average's." in markdown
    assert sentence in tex and "2 times our standard deviation over seeds (sample std, ddof=1" in tex
    printed = capsys.readouterr().out
    assert f"left out {left_out} (method, protocol, dataset) combinations" in printed
    assert f"reproduction gap: {len(expected)} numbers compared" in printed
    assert "## reproduction_gap" in (out / "tables" / "index.md").read_text()
    assert "reproduction_gap" not in (out / "tables" / "all.tex").read_text()
    # LaTeX: specials of the source escaped; the numbers are the CSV's, at the printed precision
    assert latex_escape(SPECIAL_SOURCE) in tex and SPECIAL_SOURCE not in tex and SPECIAL_SOURCE in markdown
    rows = latex_rows(tex, 4)
    assert len(rows) == len(got)
    for cells, record in zip(rows, got.itertuples()):
        ours_cell = f"{record.ours_mean:.2f}" + ("" if pd.isna(record.ours_std) else f" $\\pm$ {record.ours_std:.2f}")
        within = "n/a" if pd.isna(record.within_spread) else ("yes" if record.within_spread else "no")
        assert cells == [ours_cell, f"{record.published:.2f}", f"${record.difference:+.2f}$", within]


def test_reproduction_gap_spread_factor_is_a_parameter(tmp_path):
    from prompt_ot.report.collect import load_runs
    from prompt_ot.report.gap import SPREAD_K, reproduction_gap

    paths, values, transfer, published = gap_fixture(tmp_path)
    expected, _ = gap_reference(values, transfer, published)
    runs, numbers = load_runs(paths), read_published(published)
    assert SPREAD_K == 2
    for k in (0.5, 1.0, 3.0):
        got = reproduction_gap(runs, numbers, k=k).frame
        merged = expected.merge(got, on=["protocol", "method", "dataset", "shots", "metric"], suffixes=("_ref", ""))
        assert len(merged) == len(expected)
        reference = [
            pd.NA if n < 2 else bool(abs(d) <= k * s)
            for d, s, n in zip(merged.difference_ref, merged.ours_std_ref, merged.n_seeds_ref)
        ]
        assert [None if pd.isna(f) else bool(f) for f in merged.within_spread] == [
            None if pd.isna(r) else r for r in reference
        ]


def test_reproduction_gap_escapes_names_and_without_published_numbers_writes_empty_files(tmp_path, capsys):
    paths = [
        write_run(
            tmp_path / "runs", "base2novel", "my_method&co%", "my_data", seed, {"base": 50.0 + seed, "novel": 60.0}
        )
        for seed in (1, 2)
    ]
    # a lambda variant of Prompt-OT: the paper's Prompt-OT row is not its number
    paths.append(
        write_run(
            tmp_path / "runs",
            "base2novel",
            "prompt_ot_lambda1",
            "my_data",
            1,
            {"base": 50.0, "novel": 60.0},
            base_method="prompt_ot",
            weight=1.0,
        )
    )
    published = tmp_path / "published"
    published.mkdir()
    (published / "published_base2novel_per_dataset.csv").write_text(
        "method,dataset,base,novel,hm,source\nmy_method&co%,my_data,51.0,61.0,,a_b #1\n"
        "Prompt-OT,my_data,50.0,60.0,54.5,paper\n"
    )
    out = tmp_path / "out"
    args = ["report", "--metrics", *map(str, paths), "--no-figures", "--out", str(out)]
    assert main([*args, "--published", str(published)]) == 0
    got = pd.read_csv(out / "tables" / "reproduction_gap.csv")
    assert list(got.method) == ["my_method&co%"] * 2  # not the variant
    assert list(got.metric) == ["base", "novel"] and list(got.difference) == pytest.approx([0.5, -1.0])
    assert list(got.within_spread) == [True, False]  # std of (51, 52) is 0.707: |0.5| <= 1.41, |-1| > 0
    tex = (out / "tables" / "reproduction_gap.tex").read_text()
    assert r"my\_method\&co\%" in tex and r"my\_data" in tex and r"a\_b \#1" in tex and "my_method&co%" not in tex
    assert "Left out: 3 (method, protocol, dataset) combinations of ours" in tex  # the averages, the variant
    # no published folder (paths.published: none in the demo): the files are still written, with no rows
    assert main([*args, "--published", "none"]) == 0
    assert "left out 4 (method, protocol, dataset) combinations" in capsys.readouterr().out
    empty = pd.read_csv(out / "tables" / "reproduction_gap.csv")
    assert empty.empty and "within_spread" in empty.columns
    for suffix in ("md", "tex"):
        text = (out / "tables" / f"reproduction_gap.{suffix}").read_text()
        assert "No published numbers were read" in text and "Left out: 4 (method, protocol, dataset)" in text
    assert "\\begin{longtable}" not in (out / "tables" / "reproduction_gap.tex").read_text()


def test_the_report_summary_holds_each_protocols_means_and_no_published_row(full_report):
    """reports/metrics.json, DVC's metrics of the report: the tables' means of this suite's rows, per protocol."""
    import math

    from prompt_ot.report.build import build_tables
    from prompt_ot.report.collect import load_runs, metrics_paths
    from prompt_ot.report.published import read_published
    from prompt_ot.report.summary import summary

    written = json.loads((full_report / "metrics.json").read_text())
    tables = build_tables(
        load_runs(metrics_paths(directory=full_report.parent / "runs")), read_published(ROOT / "reports" / "published")
    ).tables
    assert written == json.loads(json.dumps(summary(tables)))
    average = {t.name: t for t in tables}["base2novel_average"]
    for row in average.rows:
        if row.published:
            assert row.key not in written["base2novel"]
        else:
            assert written["base2novel"][row.key]["hm"] == row.cells["hm_of_avg"].mean
    assert set(written) == {"base2novel", "cross_dataset", "domain_generalization", "few_shot"}
    for protocol in ("cross_dataset", "domain_generalization"):  # per source dataset
        assert set(written[protocol]) == {"imagenet"}
        assert all(
            set(v) == {"source", "target_avg"} and all(math.isfinite(x) for x in v.values())
            for v in written[protocol]["imagenet"].values()
        )
    assert set(written["few_shot"]) == {"coop", "prompt_ot"}
    assert all(set(v) == {"1shot", "2shot", "4shot"} for v in written["few_shot"].values())
