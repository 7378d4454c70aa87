"""The values of params.yaml that decide each DVC stage's result, resolved: what `dvc.yaml`'s stages declare as params.

DVC decides whether a stage must rerun from the params it declares, key by key, and a key it declares must exist.
Some results depend on params.yaml only through a derived value: a training run on its method's entry under
``variants`` if it is a variant (nothing there if it is a built-in method), a feature cache on the epochs and
precision that the grid's runs need. DVC cannot declare "``variants.<name>`` when that exists", nor a derived value,
so the ``validate`` stage writes them into one file (``--resolved``) that the other stages declare params from::

    {"methods": {"coop": {"method": "coop"},
                 "prompt_ot_w1": {"method": "prompt_ot", "regulariser": {"weight": 1.0}}},  # the variant's entry
     "cache_test": {"digits": {"precision": "fp32"}},
     "cache_train": {"digits": {"base_16shot": {"epochs": 10, "precision": "fp32"}}}}

Changing one variant's weight then changes ``methods.<that variant>`` only: `dvc exp run -S ...` reruns that
variant's training and evaluation stages and the report, and no cache, split or other method's stage.
"""

from __future__ import annotations

import copy
import json


def resolved_params(params: dict) -> dict:
    """``methods.<name>``, ``cache_test.<dataset>`` and ``cache_train.<dataset>.<subset>_<shots>shot`` of a
    validated params mapping (see the module docstring)."""
    from prompt_ot.config import SUBSET_OF, test_cache_precision, trained_runs, view_cache_settings

    variants = params.get("variants") or {}
    methods = {
        name: copy.deepcopy(variants[name]) if name in variants else {"method": name} for name in params["methods"]
    }
    cache_test = {dataset: {"precision": test_cache_precision(params, dataset)} for dataset in params["datasets"]}
    cache_train: dict = {}
    for protocol, dataset, shots in trained_runs(params):
        subset = SUBSET_OF[protocol]
        cache_train.setdefault(dataset, {})[f"{subset}_{shots}shot"] = view_cache_settings(
            params, dataset, subset, shots
        )
    return {"methods": methods, "cache_test": cache_test, "cache_train": cache_train}


def resolved_params_json(params: dict) -> str:
    """The file's text: sorted keys, so that equal values give equal bytes."""
    return json.dumps(resolved_params(params), indent=1, sort_keys=True) + "\n"
