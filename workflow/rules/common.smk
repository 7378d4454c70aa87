# Shared configuration: validation, the experiment grid, path patterns and wildcard constraints.
import os

from prompt_ot.config import (
    SUBSET_OF,
    TRAINED_BY,
    backbone_entries,
    evaluated_runs,
    multi_backbone,
    test_cache_precision,
    validate_params,
    view_cache_settings,
)

validate_params(config, "params.yaml")

PARAMS = "params.yaml"
DATA = config["paths"]["data"]
# a list of backbones is a grid axis: each backbone's runs, caches and reports in a folder named by its key
MULTI = multi_backbone(config)
BACKBONES = dict(backbone_entries(config))  # key (None for a single backbone) -> entry
BASE_RUNS = config["paths"]["runs"]
CACHE = os.path.join(config["paths"]["cache"], "{backbone}") if MULTI else config["paths"]["cache"]
RUNS = os.path.join(BASE_RUNS, "{backbone}") if MULTI else BASE_RUNS
REPORTS = os.path.join(config["paths"]["reports"], "{backbone}") if MULTI else config["paths"]["reports"]
PUBLISHED = config["paths"]["published"]
BACKBONE_DIR = f"{RUNS}/backbone"
PRETRAIN_DATASETS = (config.get("pretrain") or {}).get("datasets", [])
PRETRAIN_THREADS = (config.get("pretrain") or {}).get("threads", 0) or 1
BK_ARG = " --backbone-key {wildcards.backbone}" if MULTI else ""  # the stage commands' choice of backbone


def bk(w, path):
    """``path`` of a job (a string with ``{backbone}`` when the grid has a backbone axis) for its wildcards."""
    return path.replace("{backbone}", w.backbone) if MULTI else path


def every_backbone(path):
    """``path`` for each backbone of the grid (itself for a single backbone)."""
    return [path.replace("{backbone}", key) for key in BACKBONES] if MULTI else [path]


def backbone_of(w):
    """The job's backbone entry, as text: Snakemake reruns the jobs whose backbone changed."""
    return str(BACKBONES[w.backbone if MULTI else None])
SAMPLER = config["split"]["sampler"]
METHODS = config["methods"]
DATASETS = config["datasets"]
SEEDS = config["seeds"]
PROTOCOLS = config["protocols"]
B2N = PROTOCOLS.get("base2novel", {"datasets": [], "shots": 16})
XD = PROTOCOLS.get("cross_dataset", {"sources": [], "evaluate": {"targets": []}, "shots": 16})
DG = PROTOCOLS.get("domain_generalization", {"sources": [], "evaluate": {"targets": []}})
FS = PROTOCOLS.get("few_shot", {"datasets": [], "shots": [], "methods": []})
ENV = "../envs/prompt_ot.yaml"
MLFLOW_EXPERIMENT = config.get("mlflow", {}).get("experiment", "prompt-ot")
MLFLOW_PARENT = f"{BASE_RUNS}/mlflow_parent.json"
MLFLOW_DEFER = config.get("mlflow", {}).get("defer", False)


def _alternatives(names):
    return "|".join(sorted(names, key=len, reverse=True)) or "(?!)"


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    method=_alternatives(METHODS),
    subset="base|novel|all",
    shots=r"\d+",
    seed=r"\d+",
    trained="base2novel|cross_dataset|few_shot",
    backbone=_alternatives(k for k in BACKBONES if k is not None),


def declared(dataset):
    """The dataset's entry under custom_datasets (the file it names: that file's text) and dataset_overrides."""
    import json

    block = config.get("custom_datasets") or {}
    if isinstance(block, str):
        block = {dataset: open(os.path.join(os.path.dirname(PARAMS) or ".", block), encoding="utf-8").read()}
    entries = {"custom": block.get(dataset), "overrides": (config.get("dataset_overrides") or {}).get(dataset)}
    return json.dumps(entries, sort_keys=True)


def stamp(dataset):
    # the data and the few-shot manifests do not depend on the backbone: one of each for every backbone of a list
    return f"{BASE_RUNS}/stamps/{dataset}.json"


def manifest(dataset, subset, shots, seed):
    return f"{BASE_RUNS}/manifests/{dataset}/{subset}_{shots}shot_seed{seed}.json"


def test_cache(dataset):
    return f"{CACHE}/test/{dataset}"


def train_cache(dataset, subset, shots, seed):
    return f"{CACHE}/train/{dataset}/{subset}_{shots}shot_seed{seed}"


def run_dir(protocol, method, dataset, shots, seed):
    return f"{RUNS}/{protocol}/{method}/{dataset}_{shots}shot/seed{seed}"


SUBSET = SUBSET_OF  # the class subset each training protocol trains on


def cache_settings(w):
    """What a training-view cache holds for this grid (epochs, precision; see prompt_ot.config); the command derives
    the same from --params, so this only makes Snakemake rebuild a cache when it changes."""
    return view_cache_settings(config, w.dataset, w.subset, int(w.shots)) | config["cache"]

# `train: {pack: true}`: one train job per (protocol, method, dataset, shots) trains all seeds packed
PACK = bool(config["train"].get("pack", False))
EVAL_PACK = bool((config.get("evaluate") or {}).get("pack", False))


def _train_shell(seeds, manifests, caches, outs):
    return (
        "python -m prompt_ot train --params {input.params} --protocol {wildcards.trained} --method {wildcards.method}"
        f" --seed {seeds} --manifest {manifests} --train-cache {caches} --out {outs}{BK_ARG} > {{log}} 2>&1"
    )


def metrics_files(w=None):
    """Every metrics file the grid defines, in a stable order (prompt_ot.config.evaluated_runs): of the job's
    backbone (``w``), or of every backbone."""
    files = [f"{run_dir(*run)}/metrics.json" for run in evaluated_runs(config)]
    if w is not None:
        return [bk(w, f) for f in files]
    return [path for f in files for path in every_backbone(f)]


REPORT_INDEX = every_backbone(f"{REPORTS}/tables")
# with several backbones, also the table that sets them side by side (prompt_ot/report/backbones.py)
PER_BACKBONE = os.path.join(config["paths"]["reports"], "per_backbone")
if MULTI:
    REPORT_INDEX.append(PER_BACKBONE)

# evaluation: which protocol's model each protocol evaluates (TRAINED_BY, from prompt_ot.config), and its
# target datasets
TARGETS = {"cross_dataset": XD["evaluate"]["targets"], "domain_generalization": DG["evaluate"]["targets"]}


# domain generalisation's source test set is scored once, by the cross-dataset job of the same prompts (the shell
# string of a rule defined in a loop is formatted when the job runs, so the option comes from the job's own inputs)
REUSES = ("domain_generalization",)


def reuse_arg(w, input):
    return f" --reuse {input.reuse}" if "reuse" in input.keys() else ""


def targets_arg(protocol):
    targets = TARGETS.get(protocol, [])
    return (" --targets " + " ".join(targets)) if targets else ""


def eval_inputs(protocol, seeds=None):
    """The inputs of one evaluation job: of the run's own seed, or (a pack) of each of ``seeds`` in turn."""

    def inputs(w):
        # the prompts' runs
        trained = [bk(w, run_dir(TRAINED_BY[protocol], w.method, w.dataset, w.shots, s)) for s in seeds or [w.seed]]
        prompts = [f"{run}/prompts.safetensors" for run in trained]
        reuse = [f"{run}/predictions.npz" for run in trained]
        return {
            "params": PARAMS,
            "prompts": prompts if seeds else prompts[0],
            "caches": [bk(w, test_cache(d)) for d in [w.dataset] + TARGETS.get(protocol, [])],
        } | ({"reuse": reuse if seeds else reuse[0]} if protocol in REUSES else {})

    return inputs
