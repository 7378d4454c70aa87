"""Build the report's tables (numbers only) from the wide per-run frames and the published numbers."""

from __future__ import annotations

import math

import pandas as pd

from prompt_ot.report.collect import RUN_COLUMNS
from prompt_ot.report.model import Cell, Row, Table
from prompt_ot.report.names import dataset_name, dataset_order, latex_escape, method_name, method_order
from prompt_ot.report.published import Published
from prompt_ot.report.stats import dataset_average, harmonic_mean, missing_seed_warnings, seed_cells

AVERAGE_COLUMNS = {"base": "Base", "novel": "Novel", "hm_of_avg": "HM of avg.", "avg_of_hm": "Avg. of HMs"}
HM_NOTE = (
    "HM of avg. is the harmonic mean of the average base and novel accuracies; Avg. of HMs is the "
    "average over datasets of each dataset's harmonic mean."
)
PUBLISHED_BLOCK = "Published"
ABLATIONS = [
    ("Modality", ["prompt_ot_vision", "prompt_ot_text", "prompt_ot"]),
    ("Solver", ["prompt_ot", "prompt_ot_sinkhorn", "prompt_ot_unbalanced"]),
    # the same cost and lambda with the optimal plan replaced by a control (prompt_ot.losses.ot.PLANS)
    ("Transport plan", ["prompt_ot", "prompt_ot_identity_plan", "prompt_ot_uniform_plan"]),
    ("OT vs point-wise", ["prompt_ot", "promptsrc", "pointwise_l1", "ivlp"]),
    ("Against the compared methods", ["prompt_ot", "promptsrc", "maple", "cocoop", "kgcoop", "coop"]),
    # lambda fixed (the demo's lambda-sweep grid, demo/lambda_sweep.yaml) against lambda adapted to an OT budget
    (
        "Regularisation strength",
        ["prompt_ot_lambda1", "prompt_ot_lambda3", "prompt_ot", "prompt_ot_lambda30", "prompt_ot_adaptive"],
    ),
]


def _adaptive(runs: pd.DataFrame | None) -> bool:
    """True for the runs of a method whose lambda adapted while training (their weight: lambda when tested)."""
    return runs is not None and "adaptive" in runs and bool(runs["adaptive"].fillna(False).astype(bool).any())


def _methods(frame: pd.DataFrame):
    """(method, base_method, weight, runs) for each method in the frame, in display order; an adaptive lambda has
    no one weight (None: it sorts after its base's fixed weights)."""
    out = []
    for method, runs in frame.groupby("method", sort=False):
        base_method, weight = runs["base_method"].iloc[0], runs["weight"].iloc[0]
        weight = None if pd.isna(weight) or _adaptive(runs) else float(weight)
        out.append((method, base_method, weight, runs))
    return sorted(out, key=lambda m: method_order(m[0], m[1], m[2]))


def _tested_epochs(runs: pd.DataFrame) -> str | None:
    """'31 of 40' when the runs were tested before their last epoch (as Prompt-OT's released scripts do), else None."""
    if "tested_epoch" not in runs or "epochs" not in runs:
        return None
    pairs = {
        (int(t), int(e))
        for t, e in zip(runs["tested_epoch"], runs["epochs"])
        if pd.notna(t) and pd.notna(e) and 0 < t < e
    }
    return ", ".join(f"{t} of {e}" for t, e in sorted(pairs)) or None


def _our_row(method, base_method, weight, cells, runs=None, **kw) -> Row:
    extra = {"base_method": base_method, "lambda": weight, **kw.pop("extra", {})}
    adaptive = _adaptive(runs)
    if adaptive:  # the mean over the row's runs of lambda when tested
        extra |= {"adaptive": True, "adaptive_lambda": float(runs["weight"].mean())}
    early = _tested_epochs(runs) if runs is not None else None
    if early:
        extra["tested_epoch"] = early
    return Row(
        method,
        method_name(method, base_method, weight, adaptive=adaptive),
        method_name(method, base_method, weight, latex=True, adaptive=adaptive),
        cells,
        extra=extra,
        early=early is not None,
        **kw,
    )


def recipe_notes(frame: pd.DataFrame, rows: list[Row]) -> list[str]:
    """Caption sentences: which recipe the rows used, and at which epoch the marked rows were tested."""
    from prompt_ot.recipes import describe

    notes = []
    recipes = sorted({r for r in frame.get("recipe", pd.Series(dtype=object)) if isinstance(r, str)})
    if len(recipes) == 1:
        notes.append(f"Recipe: {recipes[0]}, {describe(recipes[0])}.")
    elif recipes:
        notes.append(f"Recipes: the rows mix {' and '.join(recipes)} runs.")
    early = {f"{row.label}: epoch {row.extra['tested_epoch']}" for row in rows if row.early}
    if early:
        notes.append(
            "‡ Tested before the last epoch, as the released scripts do (train.eval_epoch): "
            + "; ".join(sorted(early))
            + "."
        )
    return notes


def _published_row(method: str, source: str, cells: dict[str, float]) -> Row:
    return Row(
        method,
        method,
        latex_escape(method),
        {k: Cell(float(v)) for k, v in cells.items() if pd.notna(v)},
        block=PUBLISHED_BLOCK,
        group=None,
        published=True,
        extra={"source": source},
    )


def _dedupe(rows: list[Row]) -> list[Row]:
    """Make labels unique within a block by adding the method id where two display names collide."""
    seen: dict[tuple[str, str], int] = {}
    for row in rows:
        seen[(row.block, row.label)] = seen.get((row.block, row.label), 0) + 1
    for row in rows:
        if seen[(row.block, row.label)] > 1:
            row.label += f" [{row.key}]"
            row.latex_label += f" [{latex_escape(row.key)}]"
    return rows


def average_cells(runs: pd.DataFrame) -> tuple[dict[str, Cell], int]:
    """Base, novel and both HMs of one method averaged over its datasets; also the dataset count."""
    avg = dataset_average(runs, ["base", "novel", "hm"])
    per_seed_hm = harmonic_mean(avg.per_seed["base"], avg.per_seed["novel"])
    hm_of_avg = Cell(
        float(harmonic_mean(avg.mean["base"], avg.mean["novel"])), float(per_seed_hm.std(ddof=1)), int(per_seed_hm.size)
    )
    return {
        "base": avg.cell("base"),
        "novel": avg.cell("novel"),
        "hm_of_avg": hm_of_avg,
        "avg_of_hm": avg.cell("hm"),
    }, avg.n_datasets


def base2novel_average(frame: pd.DataFrame, published: Published) -> tuple[Table, list[str]]:
    rows, covered = [], {}
    for method, base_method, weight, runs in _methods(frame):
        cells, n_datasets = average_cells(runs)
        covered[method] = frozenset(runs["dataset"])
        rows.append(_our_row(method, base_method, weight, cells, runs, extra={"n_datasets": n_datasets}))
    warnings = missing_seed_warnings(frame, "base2novel", ["method"])
    if len(set(covered.values())) > 1:
        warnings.append(
            "base2novel: methods average over different datasets ("
            + ", ".join(f"{m} {len(d)}" for m, d in covered.items())
            + "); compare with care"
        )
    counts = {m: len(d) for m, d in covered.items()}
    for _, pub in published.base2novel.iterrows():
        rows.append(
            _published_row(
                pub["method"], pub["source"], {"base": pub["base"], "novel": pub["novel"], "hm_of_avg": pub["hm"]}
            )
        )
    n = sorted(set(counts.values()))
    notes = [HM_NOTE] + recipe_notes(frame, rows)
    if published.base2novel.size:
        notes.append(
            "Published rows average 11 datasets and 3 seeds as their sources report them; their HM is the "
            "HM of the averages."
        )
    title = (
        f"Base-to-novel generalisation: accuracy (%) averaged over {'/'.join(map(str, n))} datasets, "
        f"mean ± std over seeds."
    )
    return Table("base2novel_average", title, dict(AVERAGE_COLUMNS), _dedupe(rows), notes), warnings


def base2novel_per_dataset(frame: pd.DataFrame) -> Table:
    rows = []
    for dataset in sorted(frame["dataset"].unique(), key=dataset_order):
        for method, base_method, weight, runs in _methods(frame[frame["dataset"] == dataset]):
            rows.append(
                _our_row(
                    method,
                    base_method,
                    weight,
                    seed_cells(runs, ["base", "novel", "hm"]),
                    runs,
                    block=dataset_name(dataset),
                    group=dataset,
                    extra={"dataset": dataset},
                )
            )
    title = "Base-to-novel generalisation per dataset: accuracy (%), mean ± std over seeds; HM = 2BN/(B+N) per run."
    return Table(
        "base2novel_per_dataset",
        title,
        {"base": "Base", "novel": "Novel", "hm": "HM"},
        _dedupe(rows),
        recipe_notes(frame, rows),
        long=True,
        show_blocks=True,
    )


def ablation(frame: pd.DataFrame) -> Table | None:
    """Average base/novel/HM of the ablation groups; each group over the datasets all its methods ran on."""
    rows, notes = [], []
    for group, members in ABLATIONS:
        present = [m for m in members if m in set(frame["method"])]
        if len(present) < 2:
            continue
        part = frame[frame["method"].isin(present)]
        common = set.intersection(*(set(part.loc[part["method"] == m, "dataset"]) for m in present))
        part = part[part["dataset"].isin(common)]
        if not common:
            continue
        notes.append(f"{group}: {len(common)} datasets.")
        for method, base_method, weight, runs in _methods(part):
            cells, n_datasets = average_cells(runs)
            rows.append(
                _our_row(
                    method, base_method, weight, cells, runs, block=group, group=group, extra={"n_datasets": n_datasets}
                )
            )
    if not rows:
        return None
    notes = [
        "Each block averages over the datasets that all its methods ran on: " + " ".join(notes),
        "Prompt-OT (ours) is OT on joint image and text features with an exact plan.",
        HM_NOTE,
        *recipe_notes(frame, rows),
    ]
    title = "Ablations of Prompt-OT on base-to-novel generalisation: average accuracy (%), mean ± std over seeds."
    return Table("ablation", title, dict(AVERAGE_COLUMNS), _dedupe(rows), notes, show_blocks=True)


def _transfer_runs(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per run: 'source' (accuracy on the training dataset), each target, and 'target_avg' over its targets."""
    meta = [
        "method",
        "base_method",
        "weight",
        "adaptive",
        "dataset",
        "seed",
        "shots",
        "recipe",
        "tested_epoch",
        "epochs",
    ]
    keys = [c for c in frame.columns if c not in RUN_COLUMNS]
    records = []
    for _, run in frame.iterrows():
        targets = {k: run[k] for k in keys if k != run["dataset"] and pd.notna(run[k])}
        records.append(
            {
                **{m: run[m] for m in meta},
                "source": run.get(run["dataset"], math.nan),
                **targets,
                "target_avg": sum(targets.values()) / len(targets) if targets else math.nan,
                "targets": frozenset(targets),
            }
        )
    runs = pd.DataFrame(records)
    target_keys = sorted({k for t in runs["targets"] for k in t}, key=dataset_order)
    return runs, target_keys


def transfer(frame: pd.DataFrame, protocol: str, published: Published) -> tuple[Table, list[str]]:
    """Cross-dataset or domain-generalisation table: source accuracy, each target, target average."""
    runs, targets = _transfer_runs(frame)
    sources = sorted(runs["dataset"].unique(), key=dataset_order)
    columns = {
        "source": f"{dataset_name(sources[0])} (source)" if len(sources) == 1 else "Source",
        **{t: dataset_name(t) for t in targets},
        "target_avg": "Target avg.",
    }
    rows, warnings = [], missing_seed_warnings(runs, protocol, ["method"])
    for method, base_method, weight, method_runs in _methods(runs):
        for source in sources:
            part = method_runs[method_runs["dataset"] == source]
            if part.empty:
                continue
            if part["targets"].nunique() > 1:
                warnings.append(
                    f"{protocol} {method} from {source}: its runs evaluate different targets, "
                    f"so their target averages cover different datasets"
                )
            row = _our_row(
                method, base_method, weight, seed_cells(part, list(columns)), part, extra={"source_dataset": source}
            )
            if len(sources) > 1:
                row.label += f" ({dataset_name(source)})"
                row.latex_label += f" ({dataset_name(source, latex=True)})"
            rows.append(row)
    notes = recipe_notes(runs, rows)
    if sources == ["imagenet"]:
        rows += _published_transfer(protocol, published, targets)
        if any(r.published for r in rows):
            notes.append(
                f"Published target averages cover the {10 if protocol == 'cross_dataset' else 4} standard targets."
            )
    shots = sorted(runs["shots"].unique())
    what = "Cross-dataset transfer" if protocol == "cross_dataset" else "Domain generalisation"
    title = (
        f"{what}: trained on {', '.join(dataset_name(s) for s in sources)} ({'/'.join(map(str, shots))} shots), "
        f"accuracy (%) on the source and each target, mean ± std over seeds."
    )
    return Table(protocol, title, columns, _dedupe(rows), notes), warnings


def _published_transfer(protocol: str, published: Published, targets: list[str]) -> list[Row]:
    rows, done = [], set()
    if protocol == "cross_dataset":
        for _, pub in published.cross_per_dataset.iterrows():
            values = {
                "source": pub.get("imagenet", math.nan),
                "target_avg": pub["target_avg"],
                **{t: pub[t] for t in targets if t in pub},
            }
            rows.append(_published_row(pub["method"], pub["source"], values))
            done.add(pub["method"])
    other = published.other
    for _, pub in other[other["protocol"] == protocol].iterrows():
        if pub["method"] not in done:
            rows.append(
                _published_row(
                    pub["method"], pub["source"], {"source": pub["source_acc"], "target_avg": pub["target_avg"]}
                )
            )
    return rows


def few_shot(frame: pd.DataFrame) -> tuple[Table, list[str]]:
    """Accuracy on all classes averaged over datasets, one column per shot count."""
    shots = sorted(int(k) for k in frame["shots"].unique())
    rows, counts = [], set()
    for method, base_method, weight, runs in _methods(frame):
        cells = {}
        for k in shots:
            part = runs[runs["shots"] == k]
            if not part.empty:
                avg = dataset_average(part, ["all"])
                cells[str(k)] = avg.cell("all")
                counts.add(avg.n_datasets)
        rows.append(_our_row(method, base_method, weight, cells, runs))
    warnings = missing_seed_warnings(frame, "few_shot", ["method", "shots"])
    title = (
        f"Few-shot classification: accuracy (%) on all classes averaged over {'/'.join(map(str, sorted(counts)))} "
        f"datasets, by shots per class, mean ± std over seeds."
    )
    columns = {str(k): f"{k} shot{'s' if k != 1 else ''}" for k in shots}
    return Table("few_shot", title, columns, _dedupe(rows), recipe_notes(frame, rows)), warnings
