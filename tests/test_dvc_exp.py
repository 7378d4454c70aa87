"""`dvc exp` on the demo's pipeline, shrunken: a copy of the project laid out as it is (the paper grid's dvc.yaml and
params.yaml at the root, ``demo/dvc.yaml``, the project's .gitignore, so that run folders and reports are not in git),
with ``demo/params.yaml`` the session grid's (tests/support/grid.py) cut to Prompt-OT and one variant of it with its
own OT weight, one seed. The grid's outputs (data, pretrained backbone, splits, caches, Prompt-OT's run) are copied
in and recorded with `dvc commit`, as docs/running.md does with the demo's Snakemake outputs.

From ``demo/``, the commands of docs/running.md ("Exploring with dvc exp"): `dvc repro`, `dvc exp save -n baseline`,
then `dvc exp run -S variants.<variant>.regulariser.weight=3` reruns only the params check, the variant's training (its
old checkpoint replaced, not resumed from) and evaluation and the report: no pretraining, split, cache or other
method's stage. `dvc exp show --json` lists the experiment with its weight and metrics next to the baseline, `dvc
metrics diff` shows the variant's metrics changed and no other's, and `dvc plots diff` renders the demo's plots for
both revisions. Every stage a fork of the fork server."""

import json
import shutil
import subprocess

import pytest

from tests.support.forkserver import fork_server
from tests.support.grid import BASE2NOVEL_ONLY, SHOTS, grid_params
from tests.support.grid import run_dir as grid_run
from tests.support.workflow import DVC, ROOT, adopt_done_stages, env, make_workspace, write_params

pytestmark = pytest.mark.system

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
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def demo_workspace(folder, grid):
    """The project's layout in a fresh git + DVC repository with one commit: demo/ as in the project, holding the
    grid's outputs for Prompt-OT's first seed, recorded in demo/dvc.lock as done."""
    repo = make_workspace(folder)
    demo = repo / "demo"
    demo.mkdir()
    shutil.copy2(ROOT / "demo" / "dvc.yaml", demo / "dvc.yaml")
    variants = {VARIANT: {"method": "prompt_ot", "regulariser": {"weight": 1.0}}}
    write_params(demo, grid_params(methods=METHODS, seeds=[1], variants=variants, **BASE2NOVEL_ONLY))
    shutil.copy2(ROOT / ".gitignore", repo / ".gitignore")  # /demo/runs/, /demo/reports/, ... are not in git
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pipeline"], cwd=repo, check=True)
    for done in ("data", "cache", "runs/backbone", "runs/manifests", "runs/stamps", grid_run("prompt_ot", 1)):
        shutil.copytree(grid / done, demo / done, symlinks=True)
    adopt_done_stages(demo, redo=[*STAGES_OF_VARIANT, "report"])
    return demo


def test_the_demo_dvc_yaml_is_a_copy_of_the_root_one():
    """A copy, not a link: `dvc exp show`, `dvc metrics diff` and `dvc plots diff` read a commit's or an experiment's
    dvc.yaml from git, where a link is only the name of its target (DVC then fails to parse it in every revision)."""
    demo = ROOT / "demo" / "dvc.yaml"
    assert not demo.is_symlink() and demo.read_bytes() == (ROOT / "dvc.yaml").read_bytes()


def dvc(*args, cwd, **extra_env):
    cmd = [*DVC, *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env(**GIT_IDENTITY, **extra_env))
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


def test_dvc_exp_run_reruns_only_the_stages_of_the_changed_variant(shrunken_grid, tmp_path):
    demo = demo_workspace(tmp_path / "repo", shrunken_grid)
    run_dir = lambda method: demo / grid_run(method, 1)  # noqa: E731
    with fork_server(tmp_path) as (socket_path, children):
        fork = {"PROMPT_OT_FORKSERVER": str(socket_path)}
        dvc("repro", cwd=demo, **fork)
        dvc("exp", "save", "-n", "baseline", "-I", "dvc.lock", "dvc.yaml", cwd=demo)
        untouched = {
            path: (path.stat().st_mtime_ns, path.read_bytes())
            for path in (
                demo / "runs/backbone/demo-vit.safetensors",
                demo / f"runs/manifests/digits/base_{SHOTS}shot_seed1.json",
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
    assert set(diff) == {f"{grid_run(VARIANT, 1)}/metrics.json", "reports/metrics.json"}, diff
    assert diff[f"{grid_run(VARIANT, 1)}/metrics.json"]["regulariser_weight"]["new"] == 3
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
