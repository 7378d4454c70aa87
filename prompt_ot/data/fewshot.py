"""Few-shot sampling and the versioned manifests that freeze it.

A manifest for (dataset, subset, shots, seed) lists the training images (``shots`` per class) and a
small validation set (min(shots, 4) per class), each with its size in bytes, so every later stage
reads the same images. It names the sampler that chose them:

- ``dassl`` (the default): exactly the images that the released code's few-shot sampling selects
  (Dassl.pytorch's ``DatasetBase.generate_fewshot_dataset``, as CoOp's datasets call it). One Python
  ``random.Random(seed)`` stream, as the run's ``random.seed(seed)`` at start-up leaves it; the split's
  train list is grouped by label in order of first appearance, each group keeping file order, and each
  group gets ``rng.sample(group, shots)`` (the whole group when it has fewer items); then the val list
  the same way with min(shots, 4), from the same stream. Sampling runs over all classes; the base or
  novel classes are taken afterwards, so seed s gives the same base images under every subset.
- ``per_class``: one numpy generator per (seed, label) over the subset's items sorted by (label,
  relpath). Kept for a split whose item order means nothing (a class's images then depend only on its
  own items and the seed, not on the file's order or on the other classes); it is what this suite
  sampled before the ``dassl`` sampler existed, so it reproduces those selections.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from prompt_ot.data.registry import Item, Split, classnames_of
from prompt_ot.data.splits import SUBSETS, subsample_classes
from prompt_ot.errors import UserError, unknown_name
from prompt_ot.utils.io import atomic_write_text, read_json

FORMAT_VERSION = 2
MAX_VAL_SHOTS = 4
SAMPLERS = ("dassl", "per_class")
DEFAULT_SAMPLER = "dassl"


class ManifestEntry(NamedTuple):
    """One image of a manifest: path relative to the image root, label, class name, size in bytes."""

    relpath: str
    label: int
    classname: str
    size: int


@dataclass(frozen=True)
class Manifest:
    dataset: str
    subset: str
    shots: int
    seed: int
    classnames: list[str]
    train: list[ManifestEntry]
    val: list[ManifestEntry]
    sampler: str = DEFAULT_SAMPLER
    format_version: int = FORMAT_VERSION
    split_sha256: str | None = None  # the split the images were drawn from (None: written before it was recorded)

    def items(self, part: str = "train") -> list[Item]:
        """The entries of ``part`` ("train" or "val") as split items."""
        return [Item(e.relpath, e.label, e.classname) for e in getattr(self, part)]


def _check_shots_seed(shots: int, seed: int) -> None:
    if not isinstance(shots, int) or shots < 1:
        raise UserError(f"shots must be a positive integer, got {shots!r}")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")


def _check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise unknown_name("few-shot sampler", str(sampler), SAMPLERS)


def sample_dassl(items: list[Item], shots: int, rng: random.Random) -> list[Item]:
    """Dassl's rule on one list: per label (in order of first appearance) ``rng.sample`` of ``shots`` items,
    or all of them when the label has fewer; the result keeps that label order and the sampled order."""
    by_label: dict[int, list[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    chosen: list[Item] = []
    for members in by_label.values():
        chosen.extend(rng.sample(members, shots) if len(members) >= shots else members)
    return chosen


def sample_fewshot(items: list[Item], shots: int, seed: int) -> list[Item]:
    """The ``per_class`` sampler: exactly ``shots`` items per class (all of a class's items when it has fewer),
    each class from its own generator keyed by (seed, label); sorted by (label, relpath)."""
    _check_shots_seed(shots, seed)
    by_class: dict[int, list[Item]] = {}
    for item in sorted(items, key=lambda it: (it.label, it.relpath)):
        by_class.setdefault(item.label, []).append(item)
    chosen: list[Item] = []
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) <= shots:
            chosen.extend(members)
            continue
        rng = np.random.default_rng([seed, label])
        picks = np.sort(rng.choice(len(members), size=shots, replace=False))
        chosen.extend(members[i] for i in picks)
    return chosen


def select_fewshot(split: Split, subset: str, shots: int, seed: int, sampler: str = DEFAULT_SAMPLER) -> Split:
    """The few-shot training and validation items of ``subset`` (relabelled from 0), plus its test items."""
    _check_shots_seed(shots, seed)
    _check_sampler(sampler)
    val_shots = min(shots, MAX_VAL_SHOTS)
    if sampler == "per_class":
        sub = subsample_classes(split, subset)
        return {
            "train": sample_fewshot(sub["train"], shots, seed),
            "val": sample_fewshot(sub["val"], val_shots, seed),
            "test": sub["test"],
        }
    rng = random.Random(seed)  # the stream random.seed(seed) starts; train is drawn before val
    train = sample_dassl(split["train"], shots, rng)
    val = sample_dassl(split["val"], val_shots, rng)
    # the labels of the subset come from the whole split (the test list holds every class)
    return subsample_classes({"train": train, "val": val, "test": split["test"]}, subset)


def _entries(items: list[Item], image_root: Path) -> list[ManifestEntry]:
    entries = []
    for it in items:
        path = image_root / it.relpath
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise UserError(
                f"image {path} listed in the split does not exist; download the dataset again or check --root"
            ) from None
        entries.append(ManifestEntry(it.relpath, it.label, it.classname, size))
    return entries


def build_manifest(
    split: Split,
    image_root: str | Path,
    dataset: str,
    subset: str,
    shots: int,
    seed: int,
    sampler: str = DEFAULT_SAMPLER,
    split_sha256: str | None = None,
) -> Manifest:
    """Sample the few-shot training and validation images of one (dataset, subset, shots, seed)."""
    sub = select_fewshot(split, subset, shots, seed, sampler)
    image_root = Path(image_root)
    return Manifest(
        dataset=dataset,
        subset=subset,
        shots=shots,
        seed=seed,
        classnames=classnames_of(sub),
        train=_entries(sub["train"], image_root),
        val=_entries(sub["val"], image_root),
        sampler=sampler,
        split_sha256=split_sha256,
    )


def manifest_text(manifest: Manifest) -> str:
    """The manifest as JSON: header fields first, then one entry per line (diff-friendly, deterministic)."""
    header = {
        "format_version": manifest.format_version,
        "dataset": manifest.dataset,
        "subset": manifest.subset,
        "shots": manifest.shots,
        "seed": manifest.seed,
        "sampler": manifest.sampler,
        "split_sha256": manifest.split_sha256,
        "classnames": manifest.classnames,
    }
    fields = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in header.items()]
    for part in ("train", "val"):
        rows = [f"  {json.dumps(e._asdict())}" for e in getattr(manifest, part)]
        fields.append(f' "{part}": [\n' + ",\n".join(rows) + "\n ]" if rows else f' "{part}": []')
    return "{\n" + ",\n".join(fields) + "\n}\n"


def write_manifest(path: str | Path, manifest: Manifest) -> None:
    atomic_write_text(path, manifest_text(manifest))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(path: Path, part: str, raw, classnames: list[str]) -> ManifestEntry:
    ok = (
        isinstance(raw, dict)
        and set(raw) == set(ManifestEntry._fields)
        and isinstance(raw["relpath"], str)
        and _is_int(raw["label"])
        and 0 <= raw["label"] < len(classnames)
        and raw["classname"] == classnames[raw["label"]]
        and _is_int(raw["size"])
        and raw["size"] >= 0
    )
    if not ok:
        raise UserError(f"manifest {path} is corrupt: bad {part} entry {raw!r}; delete it and run 'split' again")
    return ManifestEntry(**raw)


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; anything malformed is a UserError naming the file."""
    path = Path(path)
    fix = "delete it and run 'split' again"
    raw = read_json(
        path,
        what="manifest",
        fix=fix,
        missing=f"manifest {path} does not exist; write it with 'python -m prompt_ot split'",
    )
    if not isinstance(raw, dict):
        raise UserError(f"manifest {path} is corrupt: not a JSON object; {fix}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"manifest {path} has format version {raw.get('format_version')!r}, this code reads {FORMAT_VERSION}; {fix}"
        )
    checks = {
        "dataset": lambda v: isinstance(v, str) and v != "",
        "subset": lambda v: v in SUBSETS,
        "shots": lambda v: _is_int(v) and v >= 1,
        "seed": lambda v: _is_int(v) and v >= 0,
        "sampler": lambda v: v in SAMPLERS,
        "classnames": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
        "train": lambda v: isinstance(v, list),
        "val": lambda v: isinstance(v, list),
    }
    if raw.get("split_sha256") is not None and not isinstance(raw["split_sha256"], str):
        raise UserError(f"manifest {path} is corrupt: field 'split_sha256' is not a string; {fix}")
    for key, check in checks.items():
        if key not in raw or not check(raw[key]):
            raise UserError(f"manifest {path} is corrupt: field {key!r} is missing or invalid; {fix}")
    classnames = raw["classnames"]
    return Manifest(
        dataset=raw["dataset"],
        subset=raw["subset"],
        shots=raw["shots"],
        seed=raw["seed"],
        classnames=classnames,
        train=[_entry(path, "train", e, classnames) for e in raw["train"]],
        val=[_entry(path, "val", e, classnames) for e in raw["val"]],
        sampler=raw["sampler"],
        split_sha256=raw.get("split_sha256"),
    )


def verify_files(manifest: Manifest, image_root: str | Path) -> None:
    """Every listed image exists under ``image_root`` with the size recorded in the manifest."""
    image_root = Path(image_root)
    for entry in manifest.train + manifest.val:
        path = image_root / entry.relpath
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"image {path} listed in the manifest does not exist; download the dataset again") from None
        if size != entry.size:
            raise UserError(
                f"image {path} has {size} bytes but the manifest recorded {entry.size}; the file changed since the "
                "manifest was written: restore it, or delete the manifest and run 'split' again"
            )


def ensure_manifest(
    path: str | Path,
    split: Split,
    image_root: str | Path,
    dataset: str,
    subset: str,
    shots: int,
    seed: int,
    sampler: str = DEFAULT_SAMPLER,
    split_sha256: str | None = None,
) -> tuple[Manifest, bool]:
    """Reuse the manifest at ``path`` if it exists (checked against the parameters, the split and the files), else
    write it.

    Returns the manifest and whether it was newly written.
    """
    path = Path(path)
    if path.exists():
        manifest = read_manifest(path)
        have = (manifest.dataset, manifest.subset, manifest.shots, manifest.seed, manifest.sampler)
        want = (dataset, subset, shots, seed, sampler)
        if have != want:
            names = "(dataset, subset, shots, seed, sampler)"
            raise UserError(
                f"manifest {path} was written for {names} = {have}, not {want}; choose another output path or delete it"
            )
        if None not in (manifest.split_sha256, split_sha256) and manifest.split_sha256 != split_sha256:
            raise UserError(
                f"manifest {path} was drawn from a split with sha256 {manifest.split_sha256}, but {dataset}'s split "
                f"now has sha256 {split_sha256}: the split changed; delete the manifest to draw it from the split as "
                "it is"
            )
        verify_files(manifest, image_root)
        return manifest, False
    manifest = build_manifest(split, image_root, dataset, subset, shots, seed, sampler, split_sha256)
    write_manifest(path, manifest)
    return manifest, True
