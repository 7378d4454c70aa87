"""End to end: the offline demo's configuration, shrunken (the pipeline pretrains its small CLIP on the real
digits only, then five methods, two seeds, two epochs), through `snakemake` with every job its own process and
through `dvc repro` with every stage a fork of the fork server (`prompt_ot.forkserver`), each in a temporary copy
of the pipeline. Both produce byte-identical metrics files, prompts and tables (so the tools agree and a forked
job equals its own process); the MLflow runs are complete; the pretrained backbone is far above chance; a second
`dvc repro` has nothing to do."""

import contextlib
import json
import subprocess
import sys

import pytest
import yaml

from tests.workflow_helpers import ROOT, make_workspace, quiet_env

METHODS = ["zeroshot", "cocoop", "maple", "promptsrc", "prompt_ot"]
SEEDS = [1, 2]
CHANCE = 100 / 10  # digits: 10 classes


def tiny_params() -> str:
    """The offline demo's configuration, shrunken: pretraining on digits only, two methods, two seeds."""
    params = yaml.safe_load((ROOT / "demo" / "params.yaml").read_text())
    params["pretrain"].update(datasets=["digits"], epochs=3, batch_size=128, repeat={"digits": 4})
    params["pretrain"].pop("images_per_class", None)
    params.update(datasets=["digits"], methods=METHODS, seeds=SEEDS)
    params["protocols"]["base2novel"].update(datasets=["digits"], shots=4)
    params["train"].update(epochs=2)
    return yaml.safe_dump(params, sort_keys=False)


def run(cmd, cwd, **extra_env):
    env = quiet_env() | {"HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": ""} | extra_env
    env.pop("MLFLOW_TRACKING_URI")
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def metrics_of(folder):
    files = sorted(folder.glob("runs/base2novel/*/digits_4shot/seed*/metrics.json"))
    return {str(f.relative_to(folder)): f.read_bytes() for f in files}


def mlflow_runs(folder):
    code = (
        "import mlflow, json; mlflow.set_tracking_uri('sqlite:///' + __import__('os').path.abspath('mlflow.db'));"
        "runs = mlflow.search_runs(experiment_names=['prompt-ot-demo'], output_format='list');"
        "c = mlflow.MlflowClient();"
        "print(json.dumps([{'tags': r.data.tags, 'metrics': r.data.metrics, 'status': r.info.status,"
        " 'artifacts': sorted(a.path for a in c.list_artifacts(r.info.run_id))} for r in runs]))"
    )
    return json.loads(run([sys.executable, "-c", code], folder).stdout)


def check_outputs(folder):
    metrics = metrics_of(folder)
    assert len(metrics) == len(METHODS) * len(SEEDS)
    for raw in metrics.values():
        m = json.loads(raw)
        assert set(m["accuracy"]) == {"base", "novel"} and m["n"]["base"] > 0 and m["n"]["novel"] > 0
        assert m["hm"] == pytest.approx(
            2 * m["accuracy"]["base"] * m["accuracy"]["novel"] / (m["accuracy"]["base"] + m["accuracy"]["novel"])
        )
    table = (folder / "reports/tables/base2novel_average.tex").read_text()
    assert "Prompt-OT" in table and "CLIP (zero-shot)" in table and "\\toprule" in table
    assert "Published" not in table  # the demo's configuration leaves the (incomparable) published rows out
    csv = (folder / "reports/tables/base2novel_average.csv").read_text()
    assert "prompt_ot" in csv
    assert (folder / "reports/figures").is_dir()
    return metrics


def test_shrunken_grid_through_snakemake_and_dvc(tmp_path):
    smk = make_workspace(tmp_path / "snakemake", tiny_params())
    run([sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2"], smk)
    smk_metrics = check_outputs(smk)
    # the backbone was pretrained by the pipeline itself and knows the digits far above chance
    backbone = json.loads((smk / "runs/backbone/backbone.json").read_text())
    assert backbone["pretrained_here"] and backbone["zero_shot_accuracy"]["digits"] > CHANCE + 40
    zeroshot = json.loads(smk_metrics["runs/base2novel/zeroshot/digits_4shot/seed1/metrics.json"])
    assert min(zeroshot["accuracy"].values()) > 20 + 40  # 5 classes on each side: chance is 20%
    runs = mlflow_runs(smk)
    kinds = sorted(r["tags"].get("kind") for r in runs)
    assert kinds.count("train") == len(METHODS) * len(SEEDS)
    assert kinds.count("evaluate") == len(METHODS) * len(SEEDS)
    children = [r for r in runs if r["tags"].get("kind") in ("train", "evaluate")]
    assert all("mlflow.parentRunId" in r["tags"] for r in children), "child runs must hang under the pipeline's parent"
    parents = [r for r in runs if r["tags"].get("kind") == "pipeline"]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED"
    trained = [r for r in runs if r["tags"].get("kind") == "train"]
    assert all(r["artifacts"] == ["prompts.safetensors", "train.json", "train.log"] for r in trained)
    assert all(r["status"] == "FINISHED" for r in trained)
    assert all(len(r["metrics"]) >= 4 for r in trained if r["tags"]["method"] == "prompt_ot")  # per-epoch metrics
    assert {(r["tags"]["method"], r["tags"]["seed"]) for r in trained} == {(m, str(s)) for m in METHODS for s in SEEDS}

    dvc = make_workspace(tmp_path / "dvc", tiny_params())
    with fork_server(tmp_path) as (socket_path, children):
        run([sys.executable, "-m", "dvc", "repro"], dvc, PROMPT_OT_FORKSERVER=str(socket_path))
        assert children() == 0  # every stage's child has ended
    dvc_metrics = check_outputs(dvc)
    # deferred MLflow logging: without Snakemake's closing sync the runs wait on disk for `mlflow sync`
    assert len(list((dvc / "runs").rglob("mlflow_pending_*.json"))) == 2 * len(METHODS) * len(SEEDS)
    assert dvc_metrics == smk_metrics, "the same grid gave different metrics under Snakemake and DVC"
    tables = sorted(p.relative_to(smk) for p in (smk / "reports" / "tables").glob("*.csv"))
    assert tables and tables == sorted(p.relative_to(dvc) for p in (dvc / "reports" / "tables").glob("*.csv"))
    for table in tables:
        assert (smk / table).read_bytes() == (dvc / table).read_bytes(), f"{table} differs between the tools"
    weights = sorted((smk / "runs").rglob("prompts.safetensors"))
    assert len(weights) == len(METHODS) * len(SEEDS)
    for prompts in weights:  # canonical safetensors headers: identical runs write identical bytes
        assert prompts.read_bytes() == (dvc / prompts.relative_to(smk)).read_bytes(), prompts
    again = run([sys.executable, "-m", "dvc", "repro"], dvc)
    assert "Running stage" not in again.stdout
    status = run([sys.executable, "-m", "dvc", "status"], dvc)
    assert "up to date" in status.stdout


@contextlib.contextmanager
def fork_server(folder):
    """A running `python -m prompt_ot forkserver` (stopped by pid), its socket and a count of its live children."""
    import os
    import signal
    import time

    socket_path, pidfile = folder / "fork.sock", folder / "fork.pid"
    server = subprocess.Popen(
        [sys.executable, "-m", "prompt_ot", "forkserver", "--socket", str(socket_path), "--pidfile", str(pidfile)],
        env=quiet_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists():
            assert server.poll() is None, f"the fork server did not start:\n{server.stdout.read()}"
            assert time.monotonic() < deadline, "the fork server did not listen within 120 s"
            time.sleep(0.2)

        def children():
            return len(subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split())

        yield socket_path, children
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
