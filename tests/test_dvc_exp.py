"""`dvc exp` on the demo's pipeline, shrunken: a copy of the project laid out as it is (the paper grid's dvc.yaml and
params.yaml at the root, ``demo/dvc.yaml``, the project's .gitignore, so that run folders and reports are not in git),
with ``demo/params.yaml`` shrunken to the digits, a tiny pretraining, Prompt-OT and one variant of it
with its own OT weight, one seed and two epochs.

From ``demo/``, the commands of the README ("Exploring with dvc exp"): `dvc repro`, `dvc exp save -n baseline`, then
`dvc exp run -S variants.<variant>.regulariser.weight=3` reruns only the params check, the variant's training (its old
checkpoint replaced, not resumed from) and evaluation and the report: no pretraining, split, cache or other method's
stage. `dvc exp show --json` lists the experiment with its weight and metrics next to the baseline, `dvc metrics diff`
shows the variant's metrics changed and no other's, and `dvc plots diff` renders the demo's plots for both revisions.
About 2 minutes on 2 cores (every stage a fork of the fork server, as in test_e2e.py)."""

import json
import os
import shutil
import subprocess
import sys

import yaml

from tests.test_e2e import fork_server
from tests.test_report import full_report  # noqa: F401 - a fixture
from tests.workflow_helpers import ROOT, make_workspace, quiet_env

VARIANT = "prompt_ot_w1"
KEY = f"variants.{VARIANT}.regulariser.weight"
METHODS = ["prompt_ot", VARIANT]
# the demo's plots (dvc.yaml's top-level plots)
PLOTS = [
    "dvc.yaml::base2novel_hm",
    "dvc.yaml::base2novel_base_vs_novel",
    "dvc.yaml::reports/figures/base2novel_tradeoff.png",
]
STAGES_OF_VARIANT = {f"train_base2novel@{VARIANT}-digits-1", f"evaluate_base2novel@{VARIANT}-digits-1"}


def shrunken_demo_params() -> str:
    """demo/params.yaml, shrunken: pretraining two short epochs on the digits, Prompt-OT (OT weight 10) and a variant
    of it with weight 1, one seed, two epochs of 4-shot training."""
    params = yaml.safe_load((ROOT / "demo" / "params.yaml").read_text())
    params["pretrain"].update(datasets=["digits"], epochs=2, batch_size=64, repeat={"digits": 1})
    params["pretrain"].pop("images_per_class", None)
    params.update(
        datasets=["digits"],
        methods=METHODS,
        seeds=[1],
        variants={VARIANT: {"method": "prompt_ot", "regulariser": {"weight": 1.0}}},
    )
    params["protocols"]["base2novel"].update(datasets=["digits"], shots=4)
    params["train"].update(epochs=2)
    return yaml.safe_dump(params, sort_keys=False)


def demo_workspace(folder):
    """The project's layout in a fresh git + DVC repository with one commit: demo/ as in the project."""
    repo = make_workspace(folder)
    demo = repo / "demo"
    demo.mkdir()
    shutil.copy2(ROOT / "demo" / "dvc.yaml", demo / "dvc.yaml")
    (demo / "params.yaml").write_text(shrunken_demo_params())
    shutil.copy2(ROOT / ".gitignore", repo / ".gitignore")  # /demo/runs/, /demo/reports/, ... are not in git
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pipeline"], cwd=repo, check=True)
    return demo


def test_the_demo_dvc_yaml_is_a_copy_of_the_root_one():
    """A copy, not a link: `dvc exp show`, `dvc metrics diff` and `dvc plots diff` read a commit's or an experiment's
    dvc.yaml from git, where a link is only the name of its target (DVC then fails to parse it in every revision)."""
    demo = ROOT / "demo" / "dvc.yaml"
    assert not demo.is_symlink() and demo.read_bytes() == (ROOT / "dvc.yaml").read_bytes()


def dvc(*args, cwd, **extra_env):
    env = (
        quiet_env()
        | {
            "HF_HUB_OFFLINE": "1",
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
        }
        | extra_env
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"  # the stages' `python`
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def stages(output: str, prefix: str) -> set[str]:
    """Stage names of the lines "Running stage 'X':" or "Stage 'X' didn't change, skipping"."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith(prefix)}


def experiment(shown: list, name: str) -> dict:
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            if exp["name"] == name:
                return exp["revs"][0]["data"]
    raise AssertionError(f"no experiment {name!r} in `dvc exp show --json`: {json.dumps(shown)[:2000]}")


def files(data: dict, suffix: str) -> dict:
    """The entry of `dvc exp show --json` for the file ending in ``suffix`` (paths there are the repository's)."""
    (key,) = [k for k in data if k.endswith(suffix)]
    return data[key]["data"]


def test_dvc_exp_run_reruns_only_the_stages_of_the_changed_variant(tmp_path):
    demo = demo_workspace(tmp_path / "repo")
    run_dir = lambda method: demo / "runs" / "base2novel" / method / "digits_4shot" / "seed1"  # noqa: E731
    with fork_server(tmp_path) as (socket_path, children):
        fork = {"PROMPT_OT_FORKSERVER": str(socket_path)}
        dvc("repro", cwd=demo, **fork)
        dvc("exp", "save", "-n", "baseline", "-I", "dvc.lock", "dvc.yaml", cwd=demo)
        untouched = {
            path: (path.stat().st_mtime_ns, path.read_bytes())
            for path in (
                demo / "runs/backbone/demo-vit.safetensors",
                demo / "runs/manifests/digits/base_4shot_seed1.json",
                run_dir("prompt_ot") / "prompts.safetensors",
                run_dir("prompt_ot") / "metrics.json",
            )
        }
        before = json.loads((run_dir(VARIANT) / "metrics.json").read_text())
        # the target dvc.yaml (demo's): without it DVC applies the result to the paper grid's outputs too, with a
        # warning for each of its outputs that has never been made
        result = dvc("exp", "run", "-n", "weight3", "-S", f"{KEY}=3", "dvc.yaml", cwd=demo, **fork)
        assert children() == 0
    out = result.stdout
    assert "No file hash info found" not in result.stdout + result.stderr

    # only what the weight affects ran: the params check (it reads the whole file), the variant and the report
    assert stages(out, "Running stage") == {"validate", *STAGES_OF_VARIANT, "report"}, out
    assert {
        "backbone",
        "download@digits",
        "split_base2novel@digits-1",
        "cache_test@digits",
        "cache_train_base2novel@digits-1",
        "train_base2novel@prompt_ot-digits-1",
        "evaluate_base2novel@prompt_ot-digits-1",
    } <= stages(out, "Stage '"), out
    for path, (mtime, data) in untouched.items():
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, data), f"{path} was rewritten"
    # the variant's old checkpoint (another run now) was replaced, not resumed from
    assert "removed the checkpoint of an earlier run" in (run_dir(VARIANT) / "train.log").read_text()
    after = json.loads((run_dir(VARIANT) / "metrics.json").read_text())
    assert (before["regulariser_weight"], after["regulariser_weight"]) == (1.0, 3)

    # dvc exp show: the experiment with its weight and the report's metrics, next to the baseline's
    shown = json.loads(dvc("exp", "show", "--json", cwd=demo).stdout)
    changed, baseline = experiment(shown, "weight3"), experiment(shown, "baseline")
    for data, weight in ((baseline, 1.0), (changed, 3)):
        params = files(data["params"], "demo/params.yaml")
        assert params["variants"][VARIANT]["regulariser"]["weight"] == weight
        summary = files(data["metrics"], "demo/reports/metrics.json")["base2novel"]
        assert set(summary) == set(METHODS) and all(0 < summary[m]["hm"] <= 100 for m in METHODS)
    assert (
        files(changed["metrics"], "demo/reports/metrics.json")["base2novel"]["prompt_ot"]
        == files(baseline["metrics"], "demo/reports/metrics.json")["base2novel"]["prompt_ot"]
    )

    # dvc metrics diff: the variant's numbers changed, nobody else's
    raw = json.loads(dvc("metrics", "diff", "baseline", "weight3", "--json", cwd=demo).stdout)
    diff = {path.removeprefix("demo/"): changes for path, changes in raw.items()}
    assert set(diff) == {f"runs/base2novel/{VARIANT}/digits_4shot/seed1/metrics.json", "reports/metrics.json"}, diff
    assert diff[f"runs/base2novel/{VARIANT}/digits_4shot/seed1/metrics.json"]["regulariser_weight"]["new"] == 3
    summary_diff = diff["reports/metrics.json"]
    assert summary_diff and all(key.startswith(f"base2novel.{VARIANT}.") for key in summary_diff), summary_diff
    assert f"base2novel.{VARIANT}.hm" in summary_diff, summary_diff  # the weight moved the accuracy

    # dvc plots diff: the demo's plots render for both revisions, without an error. From demo/, DVC also collects the
    # paper grid's plots (the root dvc.yaml, the same file), which have no data here: name the demo's own as targets.
    plain = json.loads(dvc("plots", "diff", "baseline", "weight3", "--json", cwd=demo).stdout)
    assert plain["errors"] and all(e["name"].startswith("../") for e in plain["errors"]), plain["errors"]
    plots = json.loads(dvc("plots", "diff", "baseline", "weight3", "--json", "--targets", *PLOTS, cwd=demo).stdout)
    assert not plots.get("errors"), plots["errors"]
    rendered = {
        name: sorted(rev for item in items for rev in item.get("revisions", []))
        for name, items in plots["data"].items()
    }
    assert rendered == {
        "base2novel_hm": ["baseline", "weight3"],
        "base2novel_base_vs_novel": ["baseline", "weight3"],
        "reports/figures/base2novel_tradeoff.png": ["baseline", "weight3"],
    }, rendered
    values = plots["data"]["base2novel_hm"][0]["content"]["data"]["values"]  # the CSV rows, one set per revision
    hm = {(row["rev"], row["method"]): float(row["hm_of_avg_mean"]) for row in values}
    assert hm[("baseline", "prompt_ot")] == hm[("weight3", "prompt_ot")]
    assert hm[("baseline", VARIANT)] != hm[("weight3", VARIANT)]


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
