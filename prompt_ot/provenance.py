"""What produced a prompts or metrics file, recorded in the file, and the check that evaluation labels the right run.

A record names the method (and the registry method a variant derives from), the recipe in force, the backbone
and the identity of its weights (an open_clip tag, the sha256 of a checkpoint file, or the seeded random
initialisation), the dataset, class subset, shots and seed of the training run, the few-shot sampler and the
sha256 of the manifest that listed its images. The train stage writes it into ``prompts.safetensors`` and
``train.json``; the evaluate stage checks it against what it is asked to label and copies it into the
metrics file.
"""

from __future__ import annotations

from pathlib import Path

from prompt_ot.errors import UserError

# the fields evaluation compares with what it is asked to label
CHECKED = ("method", "recipe", "backbone", "weights", "dataset", "subset", "shots", "seed")


def weights_identity(pretrained: str | None) -> str:
    """``tag:<name>`` for an open_clip tag, ``sha256:<hex>`` for a checkpoint file, ``random:...`` for none."""
    from prompt_ot.cache import weights_source

    source, identity = weights_source(pretrained)
    return identity if source != "file" else f"sha256:{identity}"


def record(
    *,
    method: str,
    base_method: str,
    recipe: str,
    protocol: str,
    backbone: str,
    pretrained: str | None,
    dataset: str,
    subset: str,
    shots: int,
    seed: int,
    manifest: str | Path | None = None,
    sampler: str | None = None,
) -> dict:
    """The provenance record of one run; ``manifest`` is hashed when given. It also names the split the manifest was
    drawn from (its sha256) and the class names and templates the dataset's prompts use (:func:`dataset_options`)."""
    from prompt_ot.data.fewshot import read_manifest
    from prompt_ot.utils.io import sha256_file

    return {
        "method": method,
        "base_method": base_method,
        "recipe": recipe,
        "protocol": protocol,
        "backbone": backbone,
        "weights": weights_identity(pretrained),
        "dataset": dataset,
        "subset": subset,
        "shots": shots,
        "seed": seed,
        "sampler": sampler,
        "manifest_sha256": sha256_file(manifest) if manifest is not None else None,
        "split_sha256": read_manifest(manifest).split_sha256 if manifest is not None else None,
        **dataset_options(dataset),
    }


def dataset_options(dataset: str) -> dict:
    """The class names params.yaml gives a dataset (``classnames``: [name in the split, name in prompts] pairs, empty
    when the dataset's own are used; pairs, not a mapping, so that MLflow records them as one parameter whatever
    characters the names hold), its templates (zero-shot ensembles them) and which defaults were overridden."""
    from prompt_ot.data.registry import dataset_spec

    spec = dataset_spec(dataset)
    declared = spec.extra.get("declaration")
    names = dict(declared.classnames) if declared is not None else dict(spec.classname_map)
    return {
        "classnames": sorted([k, v] for k, v in names.items()),
        "templates": list(spec.zero_shot_templates),
        "overridden": list(spec.overridden),
    }


def check(found: dict | None, expected: dict, what: str) -> None:
    """Refuse ``what`` (a prompts file) when its record differs from ``expected`` in a checked field."""
    if not found:
        raise UserError(
            f"{what} holds no provenance record (it was written by an older version of prompt_ot); train the run again"
        )
    differs = [key for key in CHECKED if key in expected and found.get(key) != expected[key]]
    if differs:
        have = ", ".join(f"{key} {found.get(key)!r}" for key in differs)
        want = ", ".join(f"{key} {expected[key]!r}" for key in differs)
        raise UserError(
            f"{what} was produced by a run with {have}, but this evaluation is asked to label {want}; "
            "evaluate the matching run's prompts, or train this run"
        )
