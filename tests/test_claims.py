"""The report's evidence: runs.csv, suspect runs, the paired differences and the claims table, through
`python -m prompt_ot report` on generated runs with saved predictions."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from prompt_ot.cli import main
from prompt_ot.evaluate import class_metrics
from prompt_ot.results import RunMetrics, write_metrics

LABELS = {"base": np.repeat(np.arange(4), 25), "novel": np.repeat(np.arange(4), 20)}


def scored_run(runs: Path, protocol, method, dataset, seed, right: dict, shots=16, history=None, base_method=None):
    """A run folder as the evaluate stage writes it: predictions.npz (right on the first right[key] share of each
    class, the next class otherwise) and metrics.json with the accuracies they give."""
    folder = runs / protocol / method / f"{dataset}_{shots}shot" / f"seed{seed}"
    folder.mkdir(parents=True)
    arrays, accuracy, n, per_class = {}, {}, {}, {}
    for key, share in right.items():
        labels = LABELS.get(key, np.repeat(np.arange(5), 20))
        predictions = labels.copy()
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            wrong = members[int(round(share * len(members))) :]
            predictions[wrong] = (c + 1) % len(np.unique(labels))
        arrays |= {f"{key}/predictions": predictions, f"{key}/labels": labels}
        accuracy[key], n[key] = 100.0 * float(np.mean(predictions == labels)), len(labels)
        names = [f"class{c}" for c in range(len(np.unique(labels)))]
        per_class[key] = class_metrics(torch.from_numpy(predictions), torch.from_numpy(labels), names)
    np.savez_compressed(folder / "predictions.npz", **arrays)
    metrics = RunMetrics(
        protocol,
        method,
        dataset,
        seed,
        shots,
        "demo-vit",
        accuracy,
        n,
        base_method=base_method or method,
        class_metrics=per_class,
    )
    write_metrics(folder / "metrics.json", metrics)
    if history is not None:
        (folder / "train.json").write_text(json.dumps({"history": history}))
    return folder


B2N_SHARES = {  # method -> (base, novel) share right (25 and 20 images per class), the same on every seed and dataset
    "zeroshot": (0.52, 0.7),
    "coop": (0.8, 0.5),
    "pointwise_l1": (0.92, 0.8),
    "prompt_ot": (0.84, 0.75),
    "prompt_ot_vision": (0.84, 0.75),
    "prompt_ot_text": (0.52, 0.5),
}


@pytest.fixture(scope="module")
def evidence_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evidence")
    runs = folder / "runs"
    for method, (base, novel) in B2N_SHARES.items():
        for dataset in ("dtd", "eurosat"):
            for seed in (1, 2, 3):
                scored_run(runs, "base2novel", method, dataset, seed, {"base": base, "novel": novel})
    out = folder / "out"
    argv = ["report", "--metrics-dir", str(runs), "--no-published", "--no-figures", "--out", str(out)]
    assert main(argv + ["--bootstrap-resamples", "400"]) == 0
    return runs, out


def test_runs_csv_holds_every_run_in_long_form(evidence_report):
    runs, out = evidence_report
    frame = pd.read_csv(out / "tables" / "runs.csv")
    assert len(frame) == len(B2N_SHARES) * 2 * 3 * 3  # runs x (base, novel, hm)
    expected_columns = ["protocol", "method", "base_method", "dataset", "shots", "seed", "evaluated_on", "metric"]
    assert list(frame.columns[: len(expected_columns)]) == expected_columns
    assert {"value", "n_images", "recipe", "tested_epoch"} <= set(frame.columns)
    row = frame[(frame.method == "coop") & (frame.dataset == "dtd") & (frame.seed == 2)].set_index("metric")
    assert row.at["base", "value"] == pytest.approx(80.0) and row.at["base", "n_images"] == 100
    assert row.at["novel", "value"] == pytest.approx(50.0) and row.at["novel", "n_images"] == 80
    assert row.at["hm", "value"] == pytest.approx(2 * 80 * 50 / 130)


def claims_of(out):
    return pd.read_csv(out / "tables" / "claims.csv").set_index("claim")


def test_the_claims_table_gives_each_claim_its_verdict(evidence_report):
    _, out = evidence_report
    claims = claims_of(out)
    assert list(claims.index) == [
        "best_base2novel_hm",
        "ot_beats_pointwise",
        "both_modalities",
        "best_cross_dataset",
        "best_domain_generalization",
        "optimal_plan",
    ]
    # prompt_ot's HM (84/75) beats zero-shot's (52/70) and CoOp's (80/50) on every image draw
    best = claims.loc["best_base2novel_hm"]
    assert best.verdict == "supported" and best.decided_by == "coop" and best.low > 0
    assert best.rivals_run == "zeroshot coop" and "promptsrc" in best.rivals_not_run
    # the point-wise constraint is right more often on both halves
    assert claims.loc["ot_beats_pointwise", "verdict"] == "contradicted"
    assert claims.loc["ot_beats_pointwise", "high"] < 0
    # vision-only has prompt_ot's very predictions: no difference can be shown, and it decides the claim
    both = claims.loc["both_modalities"]
    assert both.verdict == "inconclusive" and both.decided_by == "prompt_ot_vision"
    assert (both.difference, both.low, both.high, both.p_value) == (0.0, 0.0, 0.0, 1.0)
    for claim in ("best_cross_dataset", "best_domain_generalization", "optimal_plan"):
        assert claims.loc[claim, "verdict"] == "not run"
    md = (out / "tables" / "claims.md").read_text()
    assert "| Prompt-OT has the best base-to-novel HM |" in md and "| supported |" in md
    assert "\\begin{longtable}" in (out / "tables" / "claims.tex").read_text()


def test_paired_differences_compare_the_reference_with_every_other_method(evidence_report):
    _, out = evidence_report
    frame = pd.read_csv(out / "tables" / "paired_differences.csv")
    assert set(frame.method) == set(B2N_SHARES) - {"prompt_ot"} and set(frame.reference) == {"prompt_ot"}
    coop = frame[frame.method == "coop"].iloc[0]
    hm = lambda b, n: 2 * b * n / (b + n)  # noqa: E731
    assert coop.reference_value == pytest.approx(hm(84, 75)) and coop.method_value == pytest.approx(hm(80, 50))
    assert coop.difference == pytest.approx(hm(84, 75) - hm(80, 50))
    assert coop.seeds == "1 2 3" and coop.datasets == "dtd eurosat" and coop.resamples == 400


def test_the_same_runs_give_the_same_statistics_and_options_choose_the_reference(evidence_report, tmp_path):
    runs, out = evidence_report
    again = tmp_path / "again"
    argv = ["report", "--metrics-dir", str(runs), "--no-published", "--no-figures", "--bootstrap-resamples", "400"]
    assert main(argv + ["--out", str(again)]) == 0
    for name in ("paired_differences.csv", "claims.csv", "claims.md", "runs.csv"):
        assert (again / "tables" / name).read_bytes() == (out / "tables" / name).read_bytes()
    other = tmp_path / "other"
    assert main(argv + ["--out", str(other), "--reference", "coop", "zeroshot", "--bootstrap-seed", "5"]) == 0
    frame = pd.read_csv(other / "tables" / "paired_differences.csv")
    assert set(frame.reference) == {"coop", "zeroshot"} and set(frame.bootstrap_seed) == {5}
    assert len(frame) == 2 * (len(B2N_SHARES) - 1)


def test_a_missing_predictions_file_leaves_that_method_out_of_the_statistics_and_says_so(tmp_path, capsys):
    runs = tmp_path / "runs"
    for method in ("coop", "prompt_ot", "zeroshot"):
        for seed in (1, 2, 3):
            scored_run(runs, "base2novel", method, "dtd", seed, {"base": 0.6, "novel": 0.6})
    (runs / "base2novel" / "coop" / "dtd_16shot" / "seed2" / "predictions.npz").unlink()
    argv = ["report", "--metrics-dir", str(runs), "--no-published", "--no-figures", "--out", str(tmp_path / "out")]
    assert main(argv + ["--bootstrap-resamples", "50"]) == 0
    assert "not compared: Base-to-novel coop:" in capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "out" / "tables" / "paired_differences.csv")
    assert list(frame.method) == ["zeroshot"]
    assert "Not compared: Base-to-novel coop" in (tmp_path / "out" / "tables" / "paired_differences.md").read_text()


def test_a_corrupt_predictions_file_is_refused_naming_it(tmp_path, capsys):
    runs = tmp_path / "runs"
    for method in ("coop", "prompt_ot"):
        scored_run(runs, "base2novel", method, "dtd", 1, {"base": 0.6, "novel": 0.6})
    bad = runs / "base2novel" / "coop" / "dtd_16shot" / "seed1" / "predictions.npz"
    bad.write_bytes(bad.read_bytes()[:40])
    argv = ["report", "--metrics-dir", str(runs), "--no-published", "--no-figures", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "cannot be read" in err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ suspect runs


def epochs(*ce, loss=None):
    return [{"epoch": i + 1, "loss": (loss or c), "ce": c, "regulariser": 0.0} for i, c in enumerate(ce)]


def test_suspect_runs_are_listed_with_their_reasons(tmp_path, capsys):
    runs = tmp_path / "runs"
    good = epochs(2.0, 1.0, 0.5)
    # coop: seeds at 12%, 15% and 63% of the base images right (the DTD report from an anchor's tracker)
    for seed, share in ((1, 0.48), (2, 0.52), (3, 0.96)):
        scored_run(runs, "base2novel", "coop", "dtd", seed, {"base": share, "novel": 0.6}, history=good)
    scored_run(runs, "base2novel", "ivlp", "dtd", 1, {"base": 0.9, "novel": 0.9}, history=epochs(1.0, float("nan")))
    scored_run(runs, "base2novel", "ivlp", "dtd", 2, {"base": 0.9, "novel": 0.9}, history=epochs(1.0, 1.2, 1.5))
    scored_run(runs, "base2novel", "ivlp", "dtd", 3, {"base": 0.28, "novel": 0.9}, history=good)  # 4 classes: 25%
    out = tmp_path / "out"
    argv = ["report", "--metrics-dir", str(runs), "--no-published", "--no-figures", "--no-statistics"]
    assert main(argv + ["--out", str(out)]) == 0
    err = capsys.readouterr().err
    text = (out / "tables" / "suspect_runs.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| base2novel")]
    assert len(rows) == 5, text
    assert "| coop | dtd | 16 | 3 | headline 73.85 is 18.13 points from its seeds' median 55.71 (limit 10.59;" in text
    assert "| ivlp | dtd | 16 | 1 | non-finite training loss in epoch 2 |" in text
    assert "| ivlp | dtd | 16 | 2 | training cross-entropy rose from 1 (epoch 1) to 1.5 (epoch 3) |" in text
    assert "| ivlp | dtd | 16 | 3 | base accuracy 28.00% is at chance (25.00% for 4 classes) |" in text
    assert "| ivlp | dtd | 16 | 3 | headline 42.71 is 46.28 points from its seeds' median 88.99" in text
    assert err.count("warning: suspect run:") == 5


def test_no_suspect_run_is_said_in_so_many_words(evidence_report):
    _, out = evidence_report
    text = (out / "tables" / "suspect_runs.md").read_text()
    assert "No run is suspect." in text and "robust z-score above 3" in text


# ----------------------------------------------------------------------------------------------- per-class table


def test_the_per_class_table_averages_each_class_over_seeds(evidence_report, tmp_path, capsys):
    runs, _ = evidence_report
    out = tmp_path / "out"
    argv = ["report", "--metrics-dir", str(runs), "--no-published", "--no-figures", "--no-statistics"]
    assert main(argv + ["--out", str(out), "--per-class", "dtd"]) == 0
    frame = pd.read_csv(out / "tables" / "per_class_dtd.csv")
    coop = frame[(frame.method == "coop") & (frame.block == "Base-to-novel, base classes")]
    assert sorted(set(coop["class"])) == ["Balanced accuracy", "Macro-F1", "class0", "class1", "class2", "class3"]
    assert set(coop[coop["class"] == "class0"].seed) == {1, 2, 3}
    assert coop[coop["class"] == "class2"].value.tolist() == pytest.approx([80.0] * 3)  # 20 of each class's 25
    md = (out / "tables" / "per_class_dtd.md").read_text()
    assert "| Base-to-novel, novel classes | class3 |" in md and "| Balanced accuracy |" in md
    assert main(argv + ["--out", str(tmp_path / "none"), "--per-class", "eurosat_x"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "none"), "--per-class", "caltech101"]) == 2
    assert "no run holds per-class metrics of caltech101" in capsys.readouterr().err
