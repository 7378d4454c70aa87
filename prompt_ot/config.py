"""params.yaml: loading, validation with messages that name the key, and the experiment grid it defines.

The Snakefile, the DVC stages' commands and the stage commands all read the same file through this
module, so a bad value is caught once, before anything runs, with one message naming the key, the value
and what is allowed.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from prompt_ot.errors import UserError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "params.schema.json"
PROTOCOL_NAMES = ("base2novel", "cross_dataset", "domain_generalization", "few_shot")
# the protocol whose trained prompts each protocol evaluates, and the class subset it trains on
TRAINED_BY = {
    "base2novel": "base2novel",
    "cross_dataset": "cross_dataset",
    "domain_generalization": "cross_dataset",
    "few_shot": "few_shot",
}
SUBSET_OF = {"base2novel": "base", "cross_dataset": "all", "few_shot": "all"}
OPERATIONAL_KEYS = ("num_workers", "pack", "deterministic", "augment_on", "text_chunk")  # train keys: how to run


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _key(path) -> str:
    """``train.lr``, ``protocols.few_shot.shots[2]``: mapping keys joined by dots, list positions in brackets."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def _schema_message(error, source: str) -> str:
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"under {key}" if error.absolute_path else "at the top level"
        return f"{source}: unknown key {', '.join(map(repr, extra))} {where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{source}: {key}: {error.message}"
    if error.validator == "type":
        return f"{source}: {key} = {error.instance!r} has the wrong type; expected {error.validator_value}"
    if error.validator == "enum":
        return f"{source}: {key} = {error.instance!r} is not allowed; use one of {error.validator_value}"
    if error.validator == "pattern":
        return (
            f"{source}: {key} = {error.instance!r} is not a valid name; use lower-case letters, digits and "
            "underscores, starting with a letter"
        )
    return f"{source}: {key} = {error.instance!r} is invalid: {error.message}"


def _check_names(source: str, key: str, names, known, what: str) -> None:
    for i, name in enumerate(names):
        if name not in known:
            raise UserError(f"{source}: {key}[{i}] = {name!r} is not a known {what}; known: {', '.join(sorted(known))}")


def _check_finite(value, path: tuple, source: str) -> None:
    """Refuse NaN and infinity anywhere in the params (YAML spells them .nan, .inf, -.inf), naming the key.

    One rule for every number, in mappings and lists at any depth, so that a key added to the schema later (or a
    number inside a variant's free-form regulariser block) is covered without a check of its own. The schema's
    ``minimum``/``maximum`` cannot do this: every comparison with NaN is false, and infinity passes a minimum.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{source}: {_key(path)}: must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, (*path, key), source)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, (*path, i), source)


def validate_params(raw: dict, source: str = "params.yaml") -> dict:
    """Check types and ranges against the JSON schema, then names and cross-references; return ``raw``."""
    if not isinstance(raw, dict):
        raise UserError(f"{source} must be a mapping of keys to values, got {type(raw).__name__}")
    _check_finite(raw, (), source)
    _check_schema(raw, _schema(), source)
    declare_datasets(raw, source)

    from prompt_ot.data.registry import dataset_names, dataset_spec
    from prompt_ot.methods import METHODS

    known_datasets = dataset_names()
    _check_names(source, "datasets", raw["datasets"], known_datasets, "dataset")
    variants = raw.get("variants") or {}
    for name, spec in variants.items():
        if name in METHODS:
            raise UserError(f"{source}: variants.{name} shadows the built-in method {name!r}; pick another name")
        if spec["method"] not in METHODS:
            raise UserError(
                f"{source}: variants.{name}.method = {spec['method']!r} is not a known method; "
                f"known: {', '.join(METHODS)}"
            )
        resolve_method(raw, name, source)  # checks the overrides and the regulariser spec
    _check_names(source, "methods", raw["methods"], list(METHODS) + list(variants), "method or variant")
    for i, name in enumerate((raw.get("statistics") or {}).get("references", [])):
        if name not in METHODS and name not in variants:  # one the grid does not run is skipped by the report, said
            raise UserError(
                f"{source}: statistics.references[{i}] = {name!r} is not a known method or variant; known: "
                f"{', '.join(list(METHODS) + list(variants))}"
            )
    protocols = raw["protocols"]
    in_grid = set(raw["datasets"])
    for protocol, block in protocols.items():
        lists = {key: block.get(key, []) for key in ("datasets", "sources")}
        lists["evaluate.targets"] = block.get("evaluate", {}).get("targets", [])
        for key, names in lists.items():
            for i, name in enumerate(names):
                where = f"protocols.{protocol}.{key}[{i}]"
                if name not in known_datasets:
                    raise UserError(
                        f"{source}: {where} = {name!r} is not a known dataset; known: {', '.join(known_datasets)}"
                    )
                if name not in in_grid:
                    raise UserError(
                        f"{source}: {where} = {name!r} is not listed under 'datasets'; add it there "
                        "so that it is downloaded and cached"
                    )
                if key != "evaluate.targets" and dataset_spec(name).kind == "target_only":
                    raise UserError(f"{source}: {where} = {name!r} has a test split only and cannot be trained on")
    for protocol in ("cross_dataset", "domain_generalization"):
        block = protocols[protocol]
        if block["sources"] and not block["evaluate"]["targets"]:
            raise UserError(
                f"{source}: protocols.{protocol}.evaluate.targets is empty; name at least one target "
                "dataset, or set sources to [] to switch the protocol off"
            )
    for i, name in enumerate((raw.get("pretrain") or {}).get("datasets", [])):
        if name not in in_grid:
            raise UserError(
                f"{source}: pretrain.datasets[{i}] = {name!r} is not listed under 'datasets'; add it "
                "there so that it is downloaded first"
            )
    dg = protocols.get("domain_generalization", {})
    cross_sources = protocols.get("cross_dataset", {}).get("sources", [])
    for i, name in enumerate(dg.get("sources", [])):
        if name not in cross_sources:
            raise UserError(
                f"{source}: protocols.domain_generalization.sources[{i}] = {name!r} must also be a "
                "cross_dataset source (its model is reused)"
            )
    few_shot_runs = bool(protocols["few_shot"]["datasets"] and protocols["few_shot"]["shots"])
    for i, name in enumerate(protocols["few_shot"]["methods"]):
        if few_shot_runs and name not in raw["methods"]:
            raise UserError(
                f"{source}: protocols.few_shot.methods[{i}] = {name!r} is not listed under 'methods'; add it there "
                "or remove it here (few-shot runs a subset of the grid's methods)"
            )
    xd_shots = protocols["cross_dataset"]["shots"]
    for name in set(cross_sources) & set(protocols["few_shot"]["datasets"]):
        if xd_shots in protocols["few_shot"]["shots"]:
            # both protocols train on all classes: the same few-shot manifest and cache, which dvc.yaml's two split
            # stages cannot both declare as their output (DVC refuses overlapping outputs)
            raise UserError(
                f"{source}: {name} is a cross_dataset source with {xd_shots} shots and a few_shot dataset with "
                f"{xd_shots} shots among protocols.few_shot.shots: both would write the same manifest "
                f"(all classes, {xd_shots} shots), which dvc.yaml cannot declare twice; drop {xd_shots} from "
                "few_shot.shots or the dataset from one of the two lists (the cross_dataset runs are then the "
                "few-shot ones of that K)"
            )
    for protocol, dataset, shots in trained_runs(raw):
        for name in protocol_methods(raw, protocol):
            _check_run(raw, name, protocol, dataset, shots, source)
    from prompt_ot.models.matrix import check_backbone

    # a backbone, or a backbone-method pair, that cannot run (docs/backbones.md); each backbone of a list
    resolved = {name: resolve_method(raw, name, source) for name in raw["methods"]}
    keys = [key for key, _ in backbone_entries(raw)]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise UserError(
            f"{source}: backbone: two entries have the key {repeated[0]!r}; give each entry of the list its own `key`"
        )
    for key, entry in backbone_entries(raw):
        where = source if key is None else f"{source}: backbone entry {key!r}"
        check_backbone({**raw, "backbone": entry}, resolved, where)
    return raw


def _check_schema(raw, schema: dict, source: str, prefix: tuple = ()) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(raw))
    if errors:
        # the deepest, most specific error first: it names the key the user must change
        error = max(errors, key=lambda e: len(e.absolute_path))
        error.path.extendleft(reversed(prefix))
        raise UserError(_schema_message(error, source))


def validate_custom_block(block, source: str) -> None:
    """The ``custom_datasets`` mapping (of params.yaml, or of the YAML file it names) against its schema."""
    schema = _schema()
    _check_schema(block, {"$defs": schema["$defs"], "$ref": "#/$defs/custom_datasets"}, source, ("custom_datasets",))


def _params_folder(source: str) -> Path:
    """Where params.yaml's relative paths start: the folder of the file (the working folder when it is not a file)."""
    path = Path(source)
    return path.parent if path.is_file() else Path.cwd()


def declare_datasets(raw: dict, source: str) -> None:
    """Make the datasets that params.yaml declares (custom_datasets) and overrides (dataset_overrides) known to the
    registry, refusing a name that clashes with a built-in dataset or an override of an unknown one."""
    from prompt_ot.data import custom, registry
    from prompt_ot.templates import as_templates, check_templates

    block = raw.get("custom_datasets") or {}
    if isinstance(block, dict):
        validate_custom_block(block, source)
    declarations = custom.parse_declarations(block, _params_folder(source), source, validate_custom_block)
    builtin = registry.builtin_names()
    for name, decl in declarations.items():
        if name in builtin:
            raise UserError(f"{decl.where}: {name!r} is the name of a built-in dataset; give your dataset another name")
    overrides = raw.get("dataset_overrides") or {}
    for name, entry in overrides.items():
        if name in declarations:
            raise UserError(
                f"{source}: dataset_overrides.{name}: {name} is declared under custom_datasets; give its class names "
                "and templates there"
            )
        if name not in builtin:
            raise UserError(
                f"{source}: dataset_overrides.{name}: {name!r} is not a known dataset; known: {', '.join(builtin)}"
            )
        check_templates(as_templates(entry.get("templates")), f"{source}: dataset_overrides.{name}.templates")
    registry.declare({name: custom.spec_of(d) for name, d in declarations.items()}, overrides)


def backbone_key(entry: dict) -> str:
    """The name of a backbone of a list in paths and tables: its ``key``, else its name and pretrained tag (a file:
    its stem) in lower case, every other character an underscore."""
    import re

    if entry.get("key"):
        return entry["key"]
    tag = Path(entry["pretrained"]).stem if "/" in entry["pretrained"] else entry["pretrained"]
    return re.sub(r"[^a-z0-9]+", "_", f"{entry['name']}_{tag}".lower()).strip("_")


def backbone_entries(params: dict) -> list[tuple[str | None, dict]]:
    """(key, entry) of each backbone: one (None, the mapping) for a single backbone, one per entry of a list."""
    backbone = params["backbone"]
    if isinstance(backbone, dict):
        return [(None, backbone)]
    return [(backbone_key(entry), entry) for entry in backbone]


def multi_backbone(params: dict) -> bool:
    return isinstance(params["backbone"], list)


def select_backbone(params: dict, key: str | None, source: str = "params.yaml") -> dict:
    """``params`` for one backbone of the grid: ``backbone`` becomes the entry ``key`` names (a list needs one; a
    single backbone takes none)."""
    entries = dict(backbone_entries(params))
    if not multi_backbone(params):
        if key is not None:
            raise UserError(
                f"--backbone-key {key}: {source} has a single backbone, not a list; leave --backbone-key out"
            )
        return params
    if key not in entries:
        raise UserError(
            f"{source} lists several backbones; name one with --backbone-key"
            + (f" ({key!r} is none of them)" if key is not None else "")
            + f": {', '.join(k for k in entries if k is not None)}"
        )
    return {**params, "backbone": entries[key]}


def protocol_methods(params: dict, protocol: str) -> list[str]:
    """The methods a protocol runs: ``protocols.few_shot.methods`` for few-shot, else every method of the grid."""
    if protocol == "few_shot":
        return [m for m in params["protocols"]["few_shot"]["methods"] if m in params["methods"]]
    return list(params["methods"])


def trained_runs(params: dict) -> list[tuple[str, str, int]]:
    """Every (training protocol, dataset, shots) that the grid trains each method on."""
    protocols = params["protocols"]
    runs = [("base2novel", d, protocols["base2novel"]["shots"]) for d in protocols["base2novel"]["datasets"]]
    runs += [("cross_dataset", d, protocols["cross_dataset"]["shots"]) for d in protocols["cross_dataset"]["sources"]]
    runs += [("few_shot", d, k) for d in protocols["few_shot"]["datasets"] for k in protocols["few_shot"]["shots"]]
    return runs


def evaluated_runs(params: dict) -> list[tuple[str, str, str, int, int]]:
    """Every run the grid evaluates, as (protocol, method, dataset, shots, seed), in the workflows' order: one
    metrics file each (``<runs>/<protocol>/<method>/<dataset>_<shots>shot/seed<seed>/metrics.json``)."""
    protocols = params.get("protocols") or {}
    b2n = protocols.get("base2novel") or {"datasets": [], "shots": 16}
    xd = protocols.get("cross_dataset") or {"sources": [], "shots": 16}
    dg = protocols.get("domain_generalization") or {"sources": []}
    fs = protocols.get("few_shot") or {"datasets": [], "shots": [], "methods": []}
    runs = []
    for method in params["methods"]:
        for seed in params["seeds"]:
            runs += [("base2novel", method, d, b2n["shots"], seed) for d in b2n["datasets"]]
            runs += [("cross_dataset", method, d, xd["shots"], seed) for d in xd["sources"]]
            runs += [("domain_generalization", method, d, xd["shots"], seed) for d in dg["sources"]]
    for method in fs.get("methods", []):  # few-shot runs the methods it names, a subset of `methods`
        for seed in params["seeds"]:
            runs += [("few_shot", method, d, k, seed) for d in fs["datasets"] for k in fs["shots"]]
    return runs


def _override_source(params: dict, name: str, key: str) -> str:
    """Where a resolved recipe value was set: the variant's train block, params' train block, or the recipe."""
    if key in ((params.get("variants") or {}).get(name, {}).get("train") or {}):
        return f"variants.{name}.train.{key}"
    if key in (params.get("train") or {}):
        return f"train.{key}"
    return f"the {params['recipe']} recipe"


def _check_run(params: dict, name: str, protocol: str, dataset: str, shots: int, source: str) -> None:
    """Refuse, before any stage runs, a resolved recipe that cannot run (named with where its values came from)."""
    method, recipe = resolve_run(params, name, protocol, dataset, shots, source)
    if not (method.trains and recipe.trains):
        return
    where = f"{source}: {name} on {protocol} ({dataset}, {shots} shots) under recipe {params['recipe']!r}"
    if recipe.warmup_epochs >= recipe.epochs:
        raise UserError(
            f"{where}: warmup_epochs = {recipe.warmup_epochs} ({_override_source(params, name, 'warmup_epochs')}) "
            f"must be smaller than epochs = {recipe.epochs} ({_override_source(params, name, 'epochs')})"
        )
    if recipe.eval_epoch > recipe.epochs:
        raise UserError(
            f"{where}: tests the checkpoint after epoch {recipe.eval_epoch} "
            f"({_override_source(params, name, 'eval_epoch')}), but trains only {recipe.epochs} epochs "
            f"({_override_source(params, name, 'epochs')}); set train.eval_epoch (0 = the final epoch) "
            "or more epochs"
        )
    if method.aggregate is not None and recipe.eval_epoch not in (0, recipe.epochs):
        raise UserError(
            f"{where}: aggregates its prompts over all {recipe.epochs} epochs, so it can only be tested "
            f"after the last one, not after epoch {recipe.eval_epoch} "
            f"({_override_source(params, name, 'eval_epoch')}); set train.eval_epoch to 0"
        )
    try:
        method.gpa_weights(recipe.epochs)  # an aggregation that weighs no epoch is refused here
    except UserError as err:
        raise UserError(f"{where}: {err}") from err
    prompts = method.prompts
    if prompts.text_depth > 0 and prompts.ctx_init and len(prompts.ctx_init.split()) != prompts.text_ctx:
        raise UserError(
            f"{where}: ctx_init {prompts.ctx_init!r} has {len(prompts.ctx_init.split())} words but "
            f"text_ctx is {prompts.text_ctx}; make them agree or set ctx_init to null"
        )


def load_params(path: str | Path = "params.yaml") -> dict:
    import yaml

    from prompt_ot.utils.io import safe_load_yaml

    path = Path(path)
    if path.is_dir():
        raise UserError(f"parameter file {path} is a folder; pass the params.yaml file itself with --params")
    if not path.is_file():
        raise UserError(f"parameter file {path} does not exist; run from the project folder or pass --params")
    try:
        raw = safe_load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a YAML text file ({err}); pass a params.yaml with --params") from err
    return validate_params(raw, str(path))


def resolve_method(params: dict, name: str, source: str = "params.yaml"):
    """The MethodConfig of a built-in method or a named variant of one, in its ``shared`` layout (no recipe);
    :func:`resolve_run` gives a run's method under the recipe in force."""
    return _with_variant(params, name, None, source)


def _with_variant(params: dict, name: str, recipe, source: str):
    """The method ``name`` (a variant: its base method) with the recipe's layout, then the variant's overrides."""
    from dataclasses import replace

    from prompt_ot.losses import build_regulariser
    from prompt_ot.methods import apply_overrides, get_method

    variants = params.get("variants") or {}
    spec = {k: v for k, v in (variants.get(name) or {}).items() if k not in ("method", "train")}
    method = get_method(base_method(params, name))
    if recipe is not None:
        layered = {"prompts": recipe.prompts}
        if recipe.regulariser and method.regulariser is not None:
            layered["regulariser"] = recipe.regulariser
        if recipe.frozen_template is not None:
            layered["frozen_template"] = recipe.frozen_template
        if recipe.aggregate is not None and method.aggregate is not None:
            layered["aggregate"] = recipe.aggregate
        method = apply_overrides(method, layered)
    if name in variants:
        try:
            method = replace(
                apply_overrides(method, spec), name=name, description=f"{method.name} variant {name}: {spec}"
            )
            build_regulariser(method.regulariser)
        except UserError as err:
            raise UserError(f"{source}: variants.{name}: {err}") from err
    return method


def resolve_run(params: dict, name: str, protocol: str, dataset: str, shots: int, source: str = "params.yaml"):
    """(MethodConfig, Recipe) of one run: method or variant ``name`` trained for ``protocol`` (or evaluated by
    it: domain generalisation uses the cross-dataset model) on ``dataset`` with ``shots`` shots.

    Layers, each on top of the last: the method's layout, the recipe's values for this (method, protocol,
    dataset, shots), the variant's own overrides, then params' ``train`` keys and the variant's ``train`` keys.
    """
    from prompt_ot.recipes import RECIPE_KEYS, resolve_recipe

    variant = (params.get("variants") or {}).get(name) or {}
    overrides = {k: v for k, v in (params.get("train") or {}).items() if k in RECIPE_KEYS}
    overrides |= variant.get("train") or {}
    recipe = resolve_recipe(
        params["recipe"], base_method(params, name), TRAINED_BY[protocol], dataset, shots, overrides
    )
    return _with_variant(params, name, recipe, source), recipe


def base_method(params: dict, name: str) -> str:
    return (params.get("variants") or {}).get(name, {}).get("method", name)


def train_config(params: dict, recipe, seed: int, device: str = "auto"):
    """The trainer's configuration: the resolved recipe's values plus params' operational train keys."""
    from prompt_ot.train import TrainConfig

    values = recipe.train_values()
    values.pop("eval_epoch")
    operational = {k: v for k, v in (params.get("train") or {}).items() if k in OPERATIONAL_KEYS and k != "pack"}
    return TrainConfig(**values, **operational, seed=seed, device=device)


def _needs_frozen_image(method) -> bool:
    from prompt_ot.losses import build_regulariser

    regulariser = build_regulariser(method.regulariser)
    return regulariser is not None and regulariser.needs_frozen_image


def _common_precision(precisions: set[str]) -> str:
    return next(iter(precisions)) if len(precisions) == 1 else "fp32"


def view_cache_settings(params: dict, dataset: str, subset: str, shots: int) -> dict:
    """What the training-view cache of a manifest must hold for the grid: frozen features of as many epochs as the
    longest run that reads them (0 when no method of the grid needs frozen image features), at the precision those
    runs train in (float32 when they differ: the others then compute their frozen features while training)."""
    runs = [
        resolve_run(params, name, protocol, dataset, shots)
        for protocol, d, k in trained_runs(params)
        if (d, k, SUBSET_OF[protocol]) == (dataset, shots, subset)
        for name in protocol_methods(params, protocol)
    ]
    needing = [recipe for method, recipe in runs if method.trains and _needs_frozen_image(method)]
    return {
        "epochs": max((r.epochs for r in needing), default=0),
        "precision": _common_precision({r.precision for r in needing}),
    }


def test_cache_precision(params: dict, dataset: str) -> str:
    """The precision of a dataset's test cache: that of every run evaluated on it when they agree, else float32
    (runs of another precision then compute their test features when evaluated)."""
    protocols = params["protocols"]
    precisions = set()
    for protocol, source, shots in trained_runs(params):
        targets = {source}
        if protocol == "cross_dataset":
            targets |= set(protocols["cross_dataset"]["evaluate"]["targets"])
            if source in protocols["domain_generalization"]["sources"]:
                targets |= set(protocols["domain_generalization"]["evaluate"]["targets"])
        if dataset in targets:
            precisions |= {
                resolve_run(params, name, protocol, source, shots)[1].precision
                for name in protocol_methods(params, protocol)
            }
    return _common_precision(precisions)
