"""The dataset registry: one small module per dataset under ``prompt_ot/data/datasets/``.

Each module defines ``DATASET = DatasetSpec(...)``, which says where a dataset's files come from, the on-disk
layout under ``<root>/<folder>``, where its train/val/test split comes from, its class names and its zero-shot
template. Every name that a user types is checked here, and an unknown one lists the known ones.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from prompt_ot.errors import UserError, unknown_name


class Item(NamedTuple):
    """One labelled image of a split: path relative to the dataset folder, label, class name."""

    relpath: str
    label: int
    classname: str


Split = dict[str, list[Item]]  # keys: "train", "val", "test"

# the 11 datasets of the CoOp benchmark's base-to-novel, cross-dataset and few-shot tables, in the papers' order
BENCHMARK_DATASETS: tuple[str, ...] = tuple(
    "imagenet caltech101 oxford_pets stanford_cars flowers102 food101 fgvc_aircraft sun397 dtd eurosat ucf101".split()
)
# the 15 datasets of the paper's tables: those 11 and ImageNet's four shifted test sets (domain generalisation)
PAPER_DATASETS: tuple[str, ...] = BENCHMARK_DATASETS + ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


@dataclass(frozen=True)
class Source:
    """One downloadable file: URL (plus mirrors tried in order), file name, sha256 when known."""

    url: str
    filename: str
    sha256: str | None = None
    mirrors: tuple[str, ...] = ()
    extract: bool = True  # unpack after download (zip / tar.* archives)


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # registry key, e.g. "oxford_pets"
    folder: str  # folder under the data root, e.g. "oxford_pets" (CoOp's layout names)
    template: str  # zero-shot template with one "{}" for the class name
    sources: tuple[Source, ...] = ()
    image_dir: str = ""  # where image paths in the split are relative to, inside the folder
    split_file: str | None = None  # CoOp split file name inside the folder, e.g. "split_zhou_OxfordPets.json"
    manual_steps: str | None = None  # printed when no automatic source works
    load_split_fn: Callable[[Path], Split] | None = None  # for datasets without a CoOp split file
    classnames_fn: Callable[[], list[str]] | None = None  # fixed class list (ImageNet family)
    prepare_fn: Callable[[Path], None] | None = (
        None  # builds the folder locally instead of fetching sources (demo data)
    )
    kind: str = "benchmark"  # "benchmark", "target_only" (ImageNet variants), "demo", "custom" (params.yaml)
    notes: str = ""
    extra: dict = field(default_factory=dict)
    templates: tuple[str, ...] = ()  # zero-shot's ensemble when set (``template`` is then the first)
    classname_map: tuple[tuple[str, str], ...] = ()  # class name in the split -> name used in prompts
    overridden: tuple[str, ...] = ()  # which defaults params.yaml's dataset_overrides replaced: classnames, templates

    @property
    def zero_shot_templates(self) -> tuple[str, ...]:
        """The templates zero-shot CLIP ensembles: the declared list, or the one template."""
        return self.templates or (self.template,)

    def dataset_dir(self, root: str | Path) -> Path:
        return Path(root) / self.folder

    def load_split(self, root: str | Path) -> Split:
        """The train/val/test items of this dataset under ``root``; paths relative to ``image_root``."""
        return self._named(self._raw_split(root))

    def load_split_and_sha256(self, root: str | Path) -> tuple[Split, str]:
        """:meth:`load_split` and :meth:`split_sha256`, the split read once."""
        raw = self._raw_split(root)
        return self._named(raw), self.split_sha256(root, raw)

    def _raw_split(self, root: str | Path) -> Split:
        """The split as the dataset's folder has it (class names before params.yaml renames any)."""
        folder = self.dataset_dir(root)
        if not folder.is_dir():
            raise UserError(
                f"dataset folder {folder} does not exist; run 'python -m prompt_ot download {self.name} "
                f"--root {root}' or point --root at the folder that holds '{self.folder}/'"
            )
        if self.load_split_fn is not None:
            split = self.load_split_fn(folder)
        else:
            assert self.split_file is not None, f"dataset {self.name} has neither split_file nor load_split_fn"
            split = read_coop_split(folder / self.split_file)
        return split

    def _named(self, split: Split) -> Split:
        """``split`` with the class names params.yaml's dataset_overrides gives (unchanged without)."""
        if not self.classname_map:
            return split
        where = f"dataset_overrides.{self.name}.classnames"
        return rename_classes(split, dict(self.classname_map), where, self.name)

    def split_sha256(self, root: str | Path, raw: Split | None = None) -> str:
        """The sha256 of the split file, or of the split in CoOp's JSON format for a dataset whose split is built in
        code (``raw``, when already read: the split before params.yaml renames any class)."""
        import hashlib

        from prompt_ot.utils.io import sha256_file

        folder = self.dataset_dir(root)
        if self.split_file and (folder / self.split_file).is_file():
            return sha256_file(folder / self.split_file)
        raw = raw if raw is not None else self._raw_split(root)
        return hashlib.sha256(coop_split_json(raw).encode()).hexdigest()

    def image_root(self, root: str | Path) -> Path:
        return self.dataset_dir(root) / self.image_dir


def read_coop_split(path: Path) -> Split:
    """Read a CoOp ``split_zhou_<Name>.json``: {"train"|"val"|"test": [[relpath, label, classname], ...]}."""
    from prompt_ot.utils.io import read_json

    raw = read_json(
        path,
        what="split file",
        fix="delete it and download it again",
        missing=f"split file {path} is missing; download it again or place the CoOp split file there",
    )
    split: Split = {}
    for key in ("train", "val", "test"):
        entries = raw.get(key) if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise UserError(f"split file {path} has no list under {key!r}; expected CoOp's format")
        try:
            split[key] = [Item(str(p), int(y), str(c)) for p, y, c in entries]
        except (TypeError, ValueError) as err:
            raise UserError(f"split file {path}: an entry under {key!r} is not [relpath, label, classname]") from err
    return split


def rename_classes(split: Split, names: dict[str, str], where: str, dataset: str) -> Split:
    """The split with each class named as ``names`` says (classes it leaves out keep their names); a key that is not
    a class of the split is refused, naming it (a misspelt class would otherwise be ignored without a word)."""
    classes = {it.classname for items in split.values() for it in items}
    unknown = sorted(set(names) - classes)
    if unknown:
        shown = ", ".join(map(repr, sorted(classes)[:20])) + (" ..." if len(classes) > 20 else "")
        raise UserError(
            f"{where}: {', '.join(map(repr, unknown))} {'is not a class' if len(unknown) == 1 else 'are not classes'} "
            f"of {dataset}; its classes: {shown}"
        )
    renamed = [names.get(c, c) for c in sorted(classes)]
    clashes = sorted({n for n in renamed if renamed.count(n) > 1})
    if clashes:
        raise UserError(
            f"{where}: two classes of {dataset} would both be named {clashes[0]!r}; give them distinct names"
        )
    return {
        key: [Item(it.relpath, it.label, names.get(it.classname, it.classname)) for it in items]
        for key, items in split.items()
    }


def write_coop_split(path: Path, split: Split) -> None:
    """Write a split in CoOp's format, atomically."""
    from prompt_ot.utils.io import atomic_write_text

    atomic_write_text(path, coop_split_json(split))


def coop_split_json(split: Split) -> str:
    """A split in CoOp's JSON format."""
    payload = {key: [[it.relpath, it.label, it.classname] for it in split[key]] for key in ("train", "val", "test")}
    return json.dumps(payload)


def classnames_of(split: Split) -> list[str]:
    """Class names indexed by label, read from the split's items."""
    names: dict[int, str] = {}
    for items in split.values():
        for it in items:
            names.setdefault(it.label, it.classname)
    if sorted(names) != list(range(len(names))):
        raise UserError(f"labels in the split are not 0..{len(names) - 1}: {sorted(names)[:10]}...")
    return [names[i] for i in range(len(names))]


_REGISTRY: dict[str, DatasetSpec] | None = None


def recipe_modules() -> list[str]:
    """The names of the dataset recipe modules (prompt_ot.data.datasets.*), which the registry imports: the fork
    server imports the same ones before it forks."""
    from prompt_ot.data import datasets

    return [f"{datasets.__name__}.{info.name}" for info in pkgutil.iter_modules(datasets.__path__)]


def _load_registry() -> dict[str, DatasetSpec]:
    global _REGISTRY
    if _REGISTRY is None:
        registry: dict[str, DatasetSpec] = {}
        for name in recipe_modules():
            module = importlib.import_module(name)
            spec = getattr(module, "DATASET", None)
            if isinstance(spec, DatasetSpec):
                registry[spec.name] = spec
        _REGISTRY = registry
    return _REGISTRY


# what params.yaml adds: datasets declared under custom_datasets, class names and templates of dataset_overrides
_DECLARED: dict[str, DatasetSpec] = {}
_OVERRIDES: dict[str, DatasetSpec] = {}


def declare(declared: dict[str, DatasetSpec], overrides: dict[str, dict]) -> None:
    """Make the datasets of a validated params.yaml known (replacing those of any params loaded before)."""
    from dataclasses import replace

    from prompt_ot.templates import as_templates

    _DECLARED.clear()
    _DECLARED.update(declared)
    _OVERRIDES.clear()
    for name, block in overrides.items():
        spec = _load_registry().get(name) or _DECLARED[name]
        templates = as_templates(block.get("templates"))
        changes: dict = {"overridden": tuple(k for k in ("classnames", "templates") if block.get(k))}
        if templates:
            changes |= {"templates": templates, "template": templates[0]}
        if block.get("classnames"):
            changes["classname_map"] = tuple((str(k), str(v)) for k, v in block["classnames"].items())
        _OVERRIDES[name] = replace(spec, **changes)


def builtin_names() -> list[str]:
    """The datasets with a recipe module (without those params.yaml declares)."""
    return sorted(_load_registry())


def known_specs() -> dict[str, DatasetSpec]:
    return _load_registry() | _DECLARED | _OVERRIDES


def dataset_names(kind: str | None = None) -> list[str]:
    return sorted(n for n, spec in known_specs().items() if kind is None or spec.kind == kind)


def dataset_spec(name: str) -> DatasetSpec:
    registry = known_specs()
    if name not in registry:
        raise unknown_name("dataset", name, registry)
    return registry[name]
