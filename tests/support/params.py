"""``shrunk_params``: a real ``params.yaml`` shrunk to what a test needs, so that tests run the shipped configuration
and not an invented one.

- ``base="demo"`` (default): ``demo/params.yaml`` with the pretraining and the grid cut to the digits: a short
  pretraining of the demo's CLIP on the digits alone, base-to-novel with 4 shots, two methods, two seeds, two epochs.
- ``base="paper"``: the project's ``params.yaml`` (the paper grid, released recipes) cut to a generated DTD fixture,
  the tiny random CLIP, one seed, two epochs tested at the last, fp32, deferred MLflow: for the stage commands.

Overrides are merged into that: a non-empty dict merges into the dict at its key, any other value (an empty dict
included) replaces it, and ``None`` deletes the key. So ``shrunk_params(seeds=[1], train={"epochs": 8})`` changes
the epochs and keeps the rest of ``train``.
"""

from __future__ import annotations

import copy

import yaml

from tests.support.workflow import ROOT

_NO_OTHER_PROTOCOLS = {
    "cross_dataset": {"sources": [], "shots": 2, "evaluate": {"targets": []}},
    "domain_generalization": {"sources": [], "evaluate": {"targets": []}},
    "few_shot": {"datasets": [], "shots": [], "methods": []},
}


def _demo() -> dict:
    params = yaml.safe_load((ROOT / "demo" / "params.yaml").read_text())
    params["pretrain"] = {**params["pretrain"], "datasets": ["digits"], "epochs": 2, "batch_size": 128}
    params["pretrain"]["repeat"] = {"digits": 4}
    params["pretrain"].pop("images_per_class", None)
    # whole images: two short epochs on crops leave the digits too little known (45% zero-shot) for the tests that
    # need a backbone far above chance; crops are tested on their own (tests/test_pretrain.py)
    params["pretrain"]["crops"] = False
    params.update(datasets=["digits"], methods=["zeroshot", "prompt_ot"], seeds=[1, 2])
    params["protocols"] = {"base2novel": {"datasets": ["digits"], "shots": 4}, **copy.deepcopy(_NO_OTHER_PROTOCOLS)}
    params["train"].update(epochs=2)
    return params


def _paper() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"] = {"name": "tiny-vit", "pretrained": "none"}
    params.update(datasets=["dtd"], seeds=[1])
    params["protocols"] = {"base2novel": {"datasets": ["dtd"], "shots": 2}, **copy.deepcopy(_NO_OTHER_PROTOCOLS)}
    params["train"].update(epochs=2, eval_epoch=0, precision="fp32", num_workers=0)
    params["mlflow"] = {"experiment": "cli-errors", "defer": True}
    return params


def merge(params: dict, overrides: dict) -> dict:
    """``params`` with ``overrides`` merged in (non-empty dicts recursively; ``None`` deletes a key); a copy."""
    merged = copy.deepcopy(params)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def shrunk_params(base: str = "demo", **overrides) -> dict:
    """A shipped params file shrunk for a test (see the module's docstring), with ``overrides`` merged in."""
    bases = {"demo": _demo, "paper": _paper}
    return merge(bases[base](), overrides)


def as_yaml(params: dict) -> str:
    return yaml.safe_dump(params, sort_keys=False)


def few_shot_variant_grid() -> dict:
    """The paper's params.yaml shrunk to three datasets, six methods (a variant among them), two seeds, base-to-novel,
    cross-dataset and few-shot (two shots, two methods): a small grid with every kind of job."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = ["caltech101", "dtd", "eurosat"]
    params["methods"] = ["coop", "cocoop", "maple", "promptsrc", "prompt_ot", "prompt_ot_l1"]
    params["variants"] = {"prompt_ot_l1": {"method": "prompt_ot", "regulariser": {"weight": 1.0}}}
    params["seeds"] = [1, 2]
    params["protocols"] = {
        "base2novel": {"datasets": ["dtd"], "shots": 4},
        "cross_dataset": {"sources": ["caltech101"], "shots": 2, "evaluate": {"targets": ["dtd", "eurosat"]}},
        "domain_generalization": {"sources": [], "evaluate": {"targets": []}},
        "few_shot": {"datasets": ["eurosat"], "shots": [1, 2], "methods": ["coop", "prompt_ot_l1"]},
    }
    return params
