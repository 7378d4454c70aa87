"""params.yaml: loading, validation with messages that name the key, and the experiment grid it defines.

The Snakefile, the DVC stages' commands and the stage commands all read the same file through this
module, so a bad value is caught once, before anything runs, with one message naming the key, the value
and what is allowed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from prompt_ot.errors import UserError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "params.schema.json"
PROTOCOL_NAMES = ("base2novel", "cross_dataset", "domain_generalization", "few_shot")


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


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
        return (f"{source}: {key} = {error.instance!r} is not a valid name; use lower-case letters, digits and "
                "underscores, starting with a letter")
    return f"{source}: {key} = {error.instance!r} is invalid: {error.message}"


def _check_names(source: str, key: str, names, known, what: str) -> None:
    for i, name in enumerate(names):
        if name not in known:
            raise UserError(f"{source}: {key}[{i}] = {name!r} is not a known {what}; known: {', '.join(sorted(known))}")


def validate_params(raw: dict, source: str = "params.yaml") -> dict:
    """Check types and ranges against the JSON schema, then names and cross-references; return ``raw``."""
    import jsonschema

    if not isinstance(raw, dict):
        raise UserError(f"{source} must be a mapping of keys to values, got {type(raw).__name__}")
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        # the deepest, most specific error first: it names the key the user must change
        error = max(errors, key=lambda e: len(e.absolute_path))
        raise UserError(_schema_message(error, source))

    from prompt_ot.data.registry import dataset_names, get_recipe
    from prompt_ot.methods import METHODS

    known_datasets = dataset_names()
    _check_names(source, "datasets", raw["datasets"], known_datasets, "dataset")
    variants = raw.get("variants") or {}
    for name, spec in variants.items():
        if name in METHODS:
            raise UserError(f"{source}: variants.{name} shadows the built-in method {name!r}; pick another name")
        if spec["method"] not in METHODS:
            raise UserError(f"{source}: variants.{name}.method = {spec['method']!r} is not a known method; "
                            f"known: {', '.join(METHODS)}")
        resolve_method(raw, name, source)  # checks the overrides and the regulariser spec
    _check_names(source, "methods", raw["methods"], list(METHODS) + list(variants), "method or variant")
    protocols = raw["protocols"]
    in_grid = set(raw["datasets"])
    for protocol, block in protocols.items():
        lists = {key: block.get(key, []) for key in ("datasets", "sources")}
        lists["evaluate.targets"] = block.get("evaluate", {}).get("targets", [])
        for key, names in lists.items():
            for i, name in enumerate(names):
                where = f"protocols.{protocol}.{key}[{i}]"
                if name not in known_datasets:
                    raise UserError(f"{source}: {where} = {name!r} is not a known dataset; known: {', '.join(known_datasets)}")
                if name not in in_grid:
                    raise UserError(f"{source}: {where} = {name!r} is not listed under 'datasets'; add it there "
                                    "so that it is downloaded and cached")
                if key != "evaluate.targets" and get_recipe(name).kind == "target_only":
                    raise UserError(f"{source}: {where} = {name!r} has a test split only and cannot be trained on")
    for protocol in ("cross_dataset", "domain_generalization"):
        block = protocols[protocol]
        if block["sources"] and not block["evaluate"]["targets"]:
            raise UserError(f"{source}: protocols.{protocol}.evaluate.targets is empty; name at least one target "
                            "dataset, or set sources to [] to switch the protocol off")
    for i, name in enumerate((raw.get("pretrain") or {}).get("datasets", [])):
        if name not in in_grid:
            raise UserError(f"{source}: pretrain.datasets[{i}] = {name!r} is not listed under 'datasets'; add it "
                            "there so that it is downloaded first")
    dg = protocols.get("domain_generalization", {})
    cross_sources = protocols.get("cross_dataset", {}).get("sources", [])
    for i, name in enumerate(dg.get("sources", [])):
        if name not in cross_sources:
            raise UserError(f"{source}: protocols.domain_generalization.sources[{i}] = {name!r} must also be a "
                            "cross_dataset source (its model is reused)")
    train = raw["train"]
    if train.get("warmup_epochs", 1) >= train["epochs"]:
        raise UserError(f"{source}: train.warmup_epochs = {train.get('warmup_epochs')} must be smaller than "
                        f"train.epochs = {train['epochs']}")
    if train.get("eval_epoch", 0) > train["epochs"]:
        raise UserError(f"{source}: train.eval_epoch = {train['eval_epoch']} is beyond train.epochs = {train['epochs']}")
    return raw


def load_params(path: str | Path = "params.yaml") -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"parameter file {path} does not exist; run from the project folder or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from err
    return validate_params(raw, str(path))


def resolve_method(params: dict, name: str, source: str = "params.yaml"):
    """The MethodConfig for a built-in method or a named variant of one."""
    from dataclasses import replace

    from prompt_ot.losses import build_regulariser
    from prompt_ot.methods import get_method

    variants = params.get("variants") or {}
    if name in variants:
        spec = dict(variants[name])
        base = spec.pop("method")
        try:
            method = replace(get_method(base, spec), name=name, description=f"{base} variant {name}: {spec}")
            build_regulariser(method.regulariser)
        except UserError as err:
            raise UserError(f"{source}: variants.{name}: {err}") from err
        return method
    return get_method(name)


def base_method(params: dict, name: str) -> str:
    return (params.get("variants") or {}).get(name, {}).get("method", name)


def train_config(params: dict, seed: int, device: str = "auto"):
    from prompt_ot.train import TrainConfig

    t = params["train"]
    keys = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "precision",
            "num_workers", "deterministic", "augment_on")
    return TrainConfig(**{k: t[k] for k in keys if k in t}, seed=seed, device=device)
