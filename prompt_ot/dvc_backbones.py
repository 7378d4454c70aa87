"""DVC's pipeline for a params.yaml that lists several backbones: one stage set per backbone.

DVC cannot give its stages a backbone axis from the same ``dvc.yaml`` (a ``matrix`` iterates a list, and a single
backbone is a mapping; the runs of one backbone keep the paths they have always had). So, as ``snakemake`` does for
such a grid, this writes a ``dvc.yaml`` in which every stage that reads the backbone appears once per backbone key:
its runs, caches and reports under ``<runs>/<key>/``, ``<cache>/<key>/`` and ``<reports>/<key>/``, its command told
``--backbone-key <key>``; the data, the stamps and the few-shot manifests stay shared; a last stage writes the
per-backbone table. The stages are those of the project's ``dvc.yaml`` (the template), so the two cannot drift, and
the jobs equal the Snakefile's for the same params (``tests/test_backbones.py``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

# paths under <runs> that every backbone shares (the Snakefile's BASE_RUNS paths)
SHARED_RUNS = ("manifests", "stamps", "params_valid.json", "params_resolved.json", "mlflow_parent.json")
_RUNS = re.compile(r"\$\{paths\.runs\}(?!/(?:" + "|".join(re.escape(s) for s in SHARED_RUNS) + r")(?![\w.]))")
_TOLD = (
    "python -m prompt_ot backbone ",
    "python -m prompt_ot cache ",
    "python -m prompt_ot train ",
    "python -m prompt_ot evaluate ",
)  # the commands that take --backbone-key (the Snakefile's BK_ARG)
HEADER = (
    "# Written by `python -m prompt_ot dvc-yaml` from the project's dvc.yaml for the backbones {keys} of {params}:\n"
    '# every stage that reads the backbone once per backbone (docs/running.md, "Backbone"). Do not edit;\n'
    "# write it again when the backbone list changes (the validate stage refuses a list that differs).\n"
)


def _moved(value, key: str):
    """``value`` (a stage, or any part of one) with the backbone's paths under its key."""
    if isinstance(value, str):
        value = _RUNS.sub(f"${{paths.runs}}/{key}", value)
        return value.replace("${paths.cache}", f"${{paths.cache}}/{key}").replace(
            "${paths.reports}", f"${{paths.reports}}/{key}"
        )
    if isinstance(value, dict):
        return {_moved(k, key): _moved(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, key) for v in value]
    return value


def per_backbone(template: dict, keys: list[str], params_name: str = "params.yaml") -> dict:
    """The pipeline of ``template`` (a parsed dvc.yaml) with one stage set per backbone key."""
    if len(keys) < 2:
        raise ValueError("one stage set per backbone needs at least two backbones")
    stages = {}

    def add(name: str, stage: dict) -> None:  # a key that gives a stage the name of another is refused
        if name in stages:
            raise ValueError(f"the backbone keys {keys} make two stages of one name ({name}); give them other keys")
        stages[name] = stage

    for name, stage in template["stages"].items():
        if name == "validate":  # checks that params.yaml still lists exactly these backbones
            stage = copy.deepcopy(stage)
            stage["cmd"] = f"{stage['cmd'].rstrip()} --backbone-axis {' '.join(keys)}"
            add(name, stage)
            continue
        if _moved(stage, keys[0]) == stage:  # the data, the stamps, the splits: one stage for every backbone
            add(name, copy.deepcopy(stage))
            continue
        for key in keys:
            moved = _moved(stage, key)
            if moved["cmd"].startswith(_TOLD):
                moved["cmd"] = f"{moved['cmd'].rstrip()} --backbone-key {key}"
            add(f"{name}_{key}", moved)
    add(
        "report_backbones",
        {
            "cmd": f"python -m prompt_ot report-backbones --params {params_name} --out ${{paths.reports}}/per_backbone",
            "deps": [f"${{paths.runs}}/{key}" for key in keys],  # every backbone's metrics files
            "params": ["methods", "seeds", "protocols"],
            "outs": ["${paths.reports}/per_backbone"],
        },
    )
    pipeline = {k: copy.deepcopy(v) for k, v in template.items() if k not in ("stages", "plots")}
    pipeline["stages"] = stages
    if template.get("plots"):  # each backbone's plots: a named one with its key in the name, a file under its key
        pipeline["plots"] = [
            _moved(entry, key)
            if isinstance(entry, str)
            else {f"{plot_id}_{key}": _moved(spec, key) for plot_id, spec in entry.items()}
            for key in keys
            for entry in template["plots"]
        ]
    return pipeline


def write(params_path: str | Path, template_path: str | Path, out: str | Path) -> list[str]:
    """Write ``out`` for the backbones of ``params_path`` from ``template_path``; returns the keys."""
    import yaml

    from prompt_ot.config import backbone_entries, load_params, multi_backbone
    from prompt_ot.errors import UserError
    from prompt_ot.utils.io import atomic_write_text

    params = load_params(params_path)
    if not multi_backbone(params):
        raise UserError(
            f"{params_path} names one backbone: the project's dvc.yaml runs it as it is (copy it beside "
            "params.yaml); this command is for a list of backbones"
        )
    try:
        template = yaml.safe_load(Path(template_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"cannot read the template {template_path} ({err}); give the project's dvc.yaml") from err
    if not isinstance(template, dict) or "validate" not in (template.get("stages") or {}):
        raise UserError(f"{template_path} is not the project's dvc.yaml (no validate stage); give that file")
    keys = [key for key, _ in backbone_entries(params)]
    try:
        pipeline = per_backbone(template, keys, Path(params_path).name)
    except ValueError as err:
        raise UserError(f"{params_path}: {err} (a backbone entry's `key`)") from err
    text = HEADER.format(keys=", ".join(keys), params=Path(params_path).name) + yaml.safe_dump(
        pipeline, sort_keys=False, width=1000, allow_unicode=True
    )
    atomic_write_text(out, text)
    return keys
