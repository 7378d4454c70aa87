"""The report's figures: one style per method in every figure, one figure per protocol present (trade-off,
cross-dataset transfer, domain generalisation, few-shot), reproducible bytes; and the headline tables `make demo`
prints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from prompt_ot.report import plots
from prompt_ot.report.build import build_report
from prompt_ot.report.headline import HEADLINES, headlines, main
from prompt_ot.report.model import Cell, Row, Table
from prompt_ot.report.names import dataset_name, method_name
from prompt_ot.report.published import read_published
from prompt_ot.results import RunMetrics, read_metrics, write_metrics
from tests.support.figures import drawn_figures

DEMO_METHODS = [
    "zeroshot",
    "coop",
    "cocoop",
    "kgcoop",
    "ivlp",
    "maple",
    "promptsrc",
    "pointwise_l1",
    "prompt_ot",
    "prompt_ot_vision",
    "prompt_ot_text",
    "prompt_ot_adaptive",
    "prompt_ot_identity_plan",
    "prompt_ot_uniform_plan",
]
FIGURES = ["base2novel_tradeoff", "cross_dataset_transfer", "domain_generalization", "few_shot"]
CROSS_TARGETS = ["caltech101", "oxford_pets", "dtd"]
DG_TARGETS = ["imagenet_v2", "imagenet_sketch"]


def _label(method: str) -> str:
    if method == "prompt_ot_adaptive":
        return method_name(method, "prompt_ot", adaptive=True)
    return method_name(method)


def _row(method: str, cells: dict[str, Cell], **extra) -> Row:
    return Row(method, _label(method), _label(method), cells, extra=extra)


def _cell(rng, lo: float = 40, hi: float = 95) -> Cell:
    return Cell(float(rng.uniform(lo, hi)), float(rng.uniform(0, 2)), 3)


def average_table(methods=DEMO_METHODS, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    rows = [_row(m, {c: _cell(rng) for c in ("base", "novel", "hm_of_avg", "avg_of_hm")}) for m in methods]
    return Table("base2novel_average", "t", {"base": "Base", "novel": "Novel"}, rows)


def transfer_table(name: str, methods=DEMO_METHODS, seed: int = 1) -> Table:
    rng = np.random.default_rng(seed)
    targets = CROSS_TARGETS if name == "cross_dataset" else DG_TARGETS
    columns = {"source": "ImageNet (source)", **{t: dataset_name(t) for t in targets}, "target_avg": "Target avg."}
    rows = [_row(m, {c: _cell(rng) for c in columns}, source_dataset="imagenet") for m in methods]
    return Table(name, "t", columns, rows)


def few_shot_tables(methods=DEMO_METHODS, shots=(1, 2, 4, 16), datasets=("dtd", "eurosat"), seed: int = 2):
    rng = np.random.default_rng(seed)
    columns = {str(k): f"{k} shots" for k in shots}

    def table() -> Table:
        return Table("few_shot", "t", columns, [_row(m, {c: _cell(rng) for c in columns}) for m in methods])

    return table(), {d: table() for d in datasets}


def series(ax) -> dict[str, tuple]:
    """Legend label -> (colour as RGBA, marker, zorder) of each errorbar series of ``ax``."""
    out = {}
    for container in ax.containers:
        line = container.lines[0]
        out[container.get_label()] = (to_rgba(line.get_color()), line.get_marker(), line.get_zorder())
    return out


def shots_of(line) -> list[int]:
    """The shot counts of a few-shot series, whose points lie within 2**±DODGE of them."""
    exponents = np.log2(np.asarray(line.get_xdata(), dtype=float))
    assert np.all(np.abs(exponents - np.round(exponents)) <= plots.DODGE + 1e-9)
    return [2 ** int(e) for e in np.round(exponents)]


def legend_labels(fig) -> list[str]:
    legend = fig.legends[0] if fig.legends else fig.axes[0].get_legend()
    return [t.get_text() for t in legend.get_texts()]


# ---------------------------------------------------------------------------------------------- one style per method


def test_every_demo_method_has_its_own_colour_and_marker_and_zero_shot_is_a_black_star():
    styles = plots.method_styles(DEMO_METHODS)
    assert list(styles) == DEMO_METHODS
    colours = [to_rgba(s.colour) for s in styles.values()]
    assert len(set(colours)) == len(DEMO_METHODS)
    assert len({(to_rgba(s.colour), s.marker) for s in styles.values()}) == len(DEMO_METHODS)
    zero = styles["zeroshot"]
    assert to_rgba(zero.colour) == to_rgba("black") and zero.marker == "*" and zero.markersize >= 12
    assert all(zero.zorder > s.zorder for m, s in styles.items() if m != "zeroshot")
    # the same method keeps its style whatever else is drawn beside it (registry methods: in every report)
    assert plots.method_styles(["prompt_ot", "coop"])["prompt_ot"] == styles["prompt_ot"]
    assert plots.method_style("maple") == styles["maple"]


def test_the_first_slots_give_distinct_colours_and_pairs():
    first = [plots.slot_style(k) for k in range(14)]
    assert len({to_rgba(s.colour) for s in first}) == 14
    many = [plots.slot_style(k) for k in range(len(plots.PALETTE) * len(plots.MARKERS))]
    assert len({(s.colour, s.marker) for s in many}) == len(many)
    assert all(to_rgba(c) != to_rgba("black") for c in plots.PALETTE)
    # methods outside the registry (variants) take the next slots in the order given, so they differ too
    styles = plots.method_styles([*DEMO_METHODS, "prompt_ot_lambda1", "prompt_ot_lambda3", "prompt_ot_lambda30"])
    assert len({to_rgba(s.colour) for s in styles.values()}) == len(styles) == 17


def test_the_tradeoff_figure_draws_each_method_in_its_style_with_zero_shot_on_top():
    table = average_table()
    styles = plots.method_styles(DEMO_METHODS)
    fig = plots.draw_tradeoff(table, styles)
    (ax,) = fig.axes
    assert legend_labels(fig) == [_label(m) for m in DEMO_METHODS]
    drawn = series(ax)
    for method in DEMO_METHODS:
        style = styles[method]
        assert drawn[_label(method)][:2] == (to_rgba(style.colour), style.marker), method
    zorders = {label: z for label, (_, _, z) in drawn.items()}
    assert zorders[_label("zeroshot")] == max(zorders.values())
    assert sorted(zorders.values()).count(zorders[_label("zeroshot")]) == 1
    assert len({colour for colour, _, _ in drawn.values()}) == len(DEMO_METHODS)


def test_published_rows_are_hollow_in_their_methods_colour():
    table = average_table(["coop", "ivlp", "prompt_ot"])
    cells = {"base": Cell(80.0), "novel": Cell(60.0)}
    table.rows += [Row(name, name, name, cells, published=True, group=None) for name in ("CoOp", "IVLP (gloss)", "X")]
    fig = plots.draw_tradeoff(table)
    (ax,) = fig.axes
    containers = {c.get_label(): c for c in ax.containers}
    assert list(containers) == [
        "CoOp",
        "IVLP",
        "Prompt-OT (ours)",
        "CoOp (published)",
        "IVLP (gloss) (published)",
        "X (published)",
    ]
    lines = {label: c.lines[0] for label, c in containers.items()}
    for method in ("CoOp", "IVLP"):
        ours, published = lines[method], lines[f"{method}{' (gloss)' if method == 'IVLP' else ''} (published)"]
        assert to_rgba(published.get_color()) == to_rgba(ours.get_color())
        assert published.get_marker() == ours.get_marker()
        assert published.get_markerfacecolor() == "none" and ours.get_markerfacecolor() != "none"
        assert published.get_zorder() < ours.get_zorder()
    assert lines["X (published)"].get_markerfacecolor() == "none"
    assert to_rgba(lines["X (published)"].get_color()) == to_rgba(plots.PUBLISHED_COLOUR)
    # published numbers have no spread over seeds: no error bars, where ours have them
    assert not containers["CoOp (published)"].has_yerr and containers["CoOp"].has_yerr


# ---------------------------------------------------------------------------------------------- protocol figures


@pytest.mark.parametrize("name", ["cross_dataset", "domain_generalization"])
def test_the_transfer_figures_show_each_target_and_the_average_per_method(name):
    table = transfer_table(name)
    styles = plots.method_styles(DEMO_METHODS)
    fig = plots.draw_transfer(table, styles)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == list(table.columns.values())
    drawn = series(ax)
    assert list(drawn) == [_label(m) for m in DEMO_METHODS] == legend_labels(fig)
    for method in DEMO_METHODS:
        assert drawn[_label(method)][:2] == (to_rgba(styles[method].colour), styles[method].marker)
    assert drawn[_label("zeroshot")][2] == max(z for _, _, z in drawn.values())
    for container, row in zip(ax.containers, table.rows):  # one marker per column, at the row's means
        ys = list(container.lines[0].get_ydata())
        assert ys == pytest.approx([row.cells[c].mean for c in table.columns])
        xs = container.lines[0].get_xdata()
        assert [round(x) for x in xs] == list(range(len(table.columns)))


def test_a_transfer_figure_from_several_sources_has_a_panel_per_source():
    table = transfer_table("cross_dataset", methods=["coop", "prompt_ot"])
    table.columns["source"] = "Source"
    rng = np.random.default_rng(5)
    for method in ("coop", "prompt_ot"):
        cells = {c: _cell(rng) for c in ("source", "caltech101", "target_avg")}
        table.rows.append(_row(method, cells, source_dataset="dtd"))
    fig = plots.draw_transfer(table)
    first, second = fig.axes
    assert [t.get_text() for t in first.get_xticklabels()][0] == "ImageNet (source)"
    assert [t.get_text() for t in second.get_xticklabels()] == ["DTD (source)", "Caltech101", "Target avg."]
    assert legend_labels(fig) == ["CoOp", "Prompt-OT (ours)"]
    assert series(first)["CoOp"][:2] == series(second)["CoOp"][:2]


def test_the_few_shot_figure_has_a_panel_per_dataset_and_one_for_the_average():
    table, per_dataset = few_shot_tables()
    styles = plots.method_styles(DEMO_METHODS)
    fig = plots.draw_few_shot(table, per_dataset, styles)
    assert [ax.get_title() for ax in fig.axes] == ["DTD", "EuroSAT", "Average over 2 datasets"]
    for ax, panel in zip(fig.axes, [*per_dataset.values(), table]):
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "16"]
        drawn = series(ax)
        assert list(drawn) == [_label(m) for m in DEMO_METHODS]
        for method in DEMO_METHODS:
            assert drawn[_label(method)][:2] == (to_rgba(styles[method].colour), styles[method].marker)
        for container, row in zip(ax.containers, panel.rows):
            assert shots_of(container.lines[0]) == [1, 2, 4, 16]
            assert list(container.lines[0].get_ydata()) == pytest.approx([row.cells[c].mean for c in panel.columns])
    assert legend_labels(fig) == [_label(m) for m in DEMO_METHODS]
    single = plots.draw_few_shot(table, {"dtd": per_dataset["dtd"]}, styles)
    assert [ax.get_title() for ax in single.axes] == ["DTD"]  # one dataset: its panel is the average


# ---------------------------------------------------------------------------------------------- through the report


def write_run(folder: Path, protocol: str, method: str, dataset: str, seed: int, accuracy: dict, shots: int = 16):
    path = folder / f"{protocol}-{method}-{dataset}-{shots}-{seed}.json"
    write_metrics(path, RunMetrics(protocol, method, dataset, seed, shots, "ViT-B-16", accuracy, base_method=method))
    return path


def fake_runs(folder: Path, protocols: set[str], methods=("zeroshot", "coop", "prompt_ot")) -> list[Path]:
    rng = np.random.default_rng(9)

    def acc() -> float:
        return float(rng.uniform(30, 90))

    paths = []
    for method in methods:
        for seed in (1, 2):
            if "base2novel" in protocols:
                for dataset in ("dtd", "eurosat"):
                    paths.append(
                        write_run(folder, "base2novel", method, dataset, seed, {"base": acc(), "novel": acc()})
                    )
            if "cross_dataset" in protocols:
                accuracy = {d: acc() for d in ["imagenet", *CROSS_TARGETS]}
                paths.append(write_run(folder, "cross_dataset", method, "imagenet", seed, accuracy))
            if "domain_generalization" in protocols:
                accuracy = {d: acc() for d in ["imagenet", *DG_TARGETS]}
                paths.append(write_run(folder, "domain_generalization", method, "imagenet", seed, accuracy))
            if "few_shot" in protocols:
                for dataset in ("dtd", "eurosat"):
                    for shots in (1, 2, 4):
                        paths.append(write_run(folder, "few_shot", method, dataset, seed, {"all": acc()}, shots=shots))
    return paths


@pytest.mark.parametrize(
    "protocols",
    [
        {"base2novel", "cross_dataset", "domain_generalization", "few_shot"},
        {"cross_dataset"},
        {"domain_generalization", "few_shot"},
        {"base2novel"},
    ],
    ids=lambda p: "+".join(sorted(p)),
)
def test_each_protocols_figure_is_written_only_when_its_table_is(tmp_path, protocols, monkeypatch):
    drawn = drawn_figures(monkeypatch)
    out = tmp_path / "out"
    build_report(fake_runs(tmp_path / "runs", protocols), read_published(None), out, figures=True)
    expected = {
        "base2novel_tradeoff": "base2novel",
        "cross_dataset_transfer": "cross_dataset",
        "domain_generalization": "domain_generalization",
        "few_shot": "few_shot",
    }
    wanted = sorted(stem for stem, protocol in expected.items() if protocol in protocols)
    files = sorted(f"{stem}.{suffix}" for stem in wanted for suffix in ("pdf", "png"))
    assert sorted(p.name for p in (out / "figures").iterdir()) == files
    assert sorted(drawn) == wanted
    index = (out / "tables" / "index.md").read_text()
    assert all(f"figures/{stem}.png" in index for stem in wanted)
    styles = plots.method_styles(["zeroshot", "coop", "prompt_ot"])
    for stem, fig in drawn.items():  # every figure: the three methods, each in its one style
        for ax in fig.axes:
            got = series(ax)
            assert list(got) == ["CLIP (zero-shot)", "CoOp", "Prompt-OT (ours)"], stem
            for method, label in zip(styles, got):
                assert got[label][:2] == (to_rgba(styles[method].colour), styles[method].marker), (stem, method)
    if "cross_dataset" in protocols:
        (ax,) = drawn["cross_dataset_transfer"].axes
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == ["ImageNet (source)", "Caltech101", "OxfordPets", "DTD", "Target avg."]
    if "few_shot" in protocols:
        titles = [ax.get_title() for ax in drawn["few_shot"].axes]
        assert titles == ["DTD", "EuroSAT", "Average over 2 datasets"]
        for ax in drawn["few_shot"].axes:
            assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
            assert all(shots_of(c.lines[0]) == [1, 2, 4] for c in ax.containers)
        coop_dtd = drawn["few_shot"].axes[0].containers[1].lines[0]  # CoOp on DTD: per shot, the mean of its seeds
        runs = [read_metrics(p) for p in sorted((tmp_path / "runs").glob("few_shot-coop-dtd-*.json"))]
        means = [np.mean([r.accuracy["all"] for r in runs if r.shots == k]) for k in (1, 2, 4)]
        assert list(coop_dtd.get_ydata()) == pytest.approx(means)


def test_rerunning_the_report_gives_byte_identical_figures(tmp_path):
    paths = fake_runs(tmp_path / "runs", {"base2novel", "cross_dataset", "domain_generalization", "few_shot"})
    first, second = tmp_path / "a", tmp_path / "b"
    build_report(paths, read_published(None), first, figures=True)
    build_report(paths, read_published(None), second, figures=True)
    for stem in FIGURES:
        for suffix in ("pdf", "png"):
            a, b = first / "figures" / f"{stem}.{suffix}", second / "figures" / f"{stem}.{suffix}"
            assert a.read_bytes() == b.read_bytes(), f"{stem}.{suffix}"
        assert (first / "figures" / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"


# ---------------------------------------------------------------------------------------------- headline tables


def test_the_headline_tables_in_protocol_order_a_missing_protocol_left_out(tmp_path, capsys):
    tables = tmp_path / "reports" / "tables"
    tables.mkdir(parents=True)
    for name in ("few_shot", "base2novel_average", "cross_dataset", "base2novel_per_dataset", "ablation"):
        (tables / f"{name}.md").write_text(f"**{name}**: caption\n\n| Method | x |\n|:--|--:|\n| CoOp | 1 |\n")
    (tables / "index.md").write_text("# index\n")
    text = headlines(tmp_path / "reports")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [f"## {HEADLINES[n]}" for n in ("base2novel_average", "cross_dataset", "few_shot")]
    bodies = [line for line in text.splitlines() if line.startswith("**")]
    assert bodies == ["**base2novel_average**: caption", "**cross_dataset**: caption", "**few_shot**: caption"]
    assert "domain_generalization" not in text and "ablation" not in text and "per_dataset" not in text
    assert main([str(tmp_path / "reports")]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_no_headline_table_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "reports" / "tables").mkdir(parents=True)
    (tmp_path / "reports" / "tables" / "ablation.md").write_text("x\n")
    for folder in (tmp_path / "reports", tmp_path / "nowhere"):
        assert main([str(folder)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"error: no headline table in {folder / 'tables'}")
        assert "python -m prompt_ot report --out" in captured.err and captured.err.count("\n") == 1


def test_the_headlines_of_a_real_report(tmp_path):
    paths = fake_runs(tmp_path / "runs", {"base2novel", "domain_generalization", "few_shot"})
    build_report(paths, read_published(None), tmp_path / "reports", figures=False)
    headings = [line for line in headlines(tmp_path / "reports").splitlines() if line.startswith("## ")]
    shown = ("base2novel_average", "domain_generalization", "few_shot", "claims")
    assert headings == [f"## {HEADLINES[n]}" for n in shown]
