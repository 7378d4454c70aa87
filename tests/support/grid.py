"""The session's shrunken grid: the offline demo's configuration cut to the digits (the pipeline pretrains its small
CLIP on them) and their sketches, every protocol (base-to-novel; cross-dataset and domain generalisation to the
sketches; few-shot with one K), five methods (zero-shot CLIP, CoCoOp, MaPLe, PromptSRC, Prompt-OT: nothing trained,
per-image prompts, coupled prompts, self-regularisation and GPA, OT), two seeds, 8 shots, 12 epochs (a training run
takes about 2 s, so that a test can kill it between its first and last epoch), run once by Snakemake with two jobs at
a time, every job forked from the fork server, MLflow logging live from every job.

Built once per test session, also under pytest-xdist (a file lock; the first worker that needs it builds it and the
others wait), in a folder that no test changes: a test that needs to change it works on a copy
(``tests.support.workflow.copy_workspace``), removing the results it wants the tools to redo.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.forkserver import FORKED
from tests.support.params import merge, shrunk_params
from tests.support.workflow import SNAKEMAKE, make_workspace, run

METHODS = ["zeroshot", "cocoop", "maple", "promptsrc", "prompt_ot"]
TRAINED = [m for m in METHODS if m != "zeroshot"]
SEEDS = [1, 2]
SHOTS = 8
EPOCHS = 12
DATASET = "digits"
# every protocol's path, cheaply: cross-dataset from the digits (all classes, 2 shots) to their sketches, the same
# model tested on that shifted domain (domain generalisation), and few-shot with K = 1 for two methods
SHIFTED = "digits_sketch"
OTHER_SHOTS = 2
FEW_SHOT_K = 1
FEW_SHOT_METHODS = ["zeroshot", "prompt_ot"]
EXPERIMENT = "prompt-ot-demo"  # demo/params.yaml's
HISTORY_KEYS = ("lr", "loss", "ce", "regulariser", "train_accuracy")
_DONE = ".grid-complete"
# the jobs of each seed: every method trained for base-to-novel and cross-dataset, the few-shot methods once more; the
# cross-dataset model also evaluated on the shifted domain
TRAININGS_PER_SEED = 2 * len(METHODS) + len(FEW_SHOT_METHODS)
EVALUATIONS_PER_SEED = 3 * len(METHODS) + len(FEW_SHOT_METHODS)
# overrides that cut the grid back to base-to-novel on the digits, for tests about something else than the protocols
BASE2NOVEL_ONLY = {
    "datasets": [DATASET],
    "protocols": {
        "cross_dataset": {"sources": [], "evaluate": {"targets": []}},
        "domain_generalization": {"sources": [], "evaluate": {"targets": []}},
        "few_shot": {"datasets": [], "shots": [], "methods": []},
    },
}


def run_dir(method: str, seed: int | str, protocol: str = "base2novel", dataset: str = DATASET) -> str:
    shots = {"base2novel": SHOTS, "few_shot": FEW_SHOT_K}.get(protocol, OTHER_SHOTS)
    return f"runs/{protocol}/{method}/{dataset}_{shots}shot/seed{seed}"


KILLED = run_dir("prompt_ot", 1)  # the run the crash tests kill mid-training


def grid_params(**overrides) -> dict:
    """The grid's params.yaml (``overrides`` merged in, see ``shrunk_params``)."""
    params = shrunk_params(
        methods=METHODS,
        seeds=SEEDS,
        datasets=[DATASET, SHIFTED],
        protocols={
            "base2novel": {"shots": SHOTS},
            "cross_dataset": {"sources": [DATASET], "shots": OTHER_SHOTS, "evaluate": {"targets": [SHIFTED]}},
            "domain_generalization": {"sources": [DATASET], "evaluate": {"targets": [SHIFTED]}},
            "few_shot": {"datasets": [DATASET], "shots": [FEW_SHOT_K], "methods": FEW_SHOT_METHODS},
        },
        train={"epochs": EPOCHS, "pack": False},  # one training job per run
        # one evaluation job per run too, so that deleting one run remakes exactly it (tests/test_missing_runs.py,
        # tests/test_mlflow_server.py); the demo's packed evaluation writes the same bytes as these jobs
        # (tests/test_packing.py) and makes exactly their outputs (tests/test_workflow.py)
        evaluate={"pack": False},
        mlflow={"defer": False},  # live logging from every job
    )
    return merge(params, overrides)


def build(folder: Path) -> Path:
    """Run the grid from scratch in ``folder`` (a new workspace)."""
    make_workspace(folder, grid_params())
    run([*FORKED, *SNAKEMAKE, "--cores", "2", "--resources", "gpu=2"], folder)
    (folder / _DONE).touch()
    return folder


def shared_grid(root: Path) -> Path:
    """The grid under ``root`` (the session's shared temporary folder), built by the first caller."""
    import shutil

    from filelock import FileLock

    folder = root / "shrunken-grid"
    with FileLock(str(root / "shrunken-grid.lock")):
        if not (folder / _DONE).exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            build(folder)
    return folder
