"""Datasets declared in params.yaml instead of written as recipe modules: a folder of class folders, or a CSV file.

``custom_datasets`` in params.yaml (or a YAML file it names) maps a name to a declaration::

    custom_datasets:
      clipart_animals:
        format: folder            # folder: one sub-folder per class (torchvision's ImageFolder convention),
        path: my_images/animals   #   optionally inside train/ val/ test/ ; csv: a file of path,label[,split] rows
        classnames: {big_cat: tiger}       # optional: folder name (or CSV label) -> the name used in prompts
        templates: ["a clip art of a {}."]  # optional: one template or a list; zero-shot uses their ensemble
        split: {train: 0.5, val: 0.2, test: 0.3, seed: 1}  # optional, for data not already split

Paths are relative to the folder that holds params.yaml. Such a dataset is then a dataset like the built-in ones:
``python -m prompt_ot download NAME --params params.yaml`` "prepares" it instead of fetching it: every image is read
once (unreadable and truncated ones are all listed), hashed (the same content in two splits is refused as a leak),
split when it is not split already (CoOp's rule of ``read_and_split_data``: per class, after a seeded shuffle,
round(n * train) training and round(n * val) validation images, the rest for test) and the split written once, in
CoOp's ``split_*.json`` format, to ``<data root>/NAME/``, beside a record of every file (size, sha256) it was made
from. Every later stage that reads the split first compares the folder (or CSV) with that record and stops, naming
the files that appeared, disappeared or changed size, instead of silently giving another split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from prompt_ot.errors import UserError
from prompt_ot.templates import as_templates, check_templates

# the extensions torchvision's ImageFolder takes as images; every other file is skipped and counted
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# CoOp's read_and_split_data(p_trn=0.5, p_val=0.2): the rest (0.3) is the test split
DEFAULT_FRACTIONS = {"train": 0.5, "val": 0.2, "test": 0.3}
# CoOp's split_trainval(p_val=0.2): the validation share taken from train/ when a pre-split folder has no val/
PRESPLIT_VAL_FRACTION = 0.2
DEFAULT_SEED = 1
PARTS = ("train", "val", "test")
SOURCE_RECORD = "source.json"  # beside the split file: the declaration's files, their sizes and sha256
SHOWN = 10  # file names shown per list in a message (the count is always given)


def split_filename(name: str) -> str:
    return f"split_{name}.json"


@dataclass(frozen=True)
class Declaration:
    """One entry of ``custom_datasets``, its paths resolved against the folder of params.yaml."""

    name: str
    format: str  # "folder" or "csv"
    path: Path  # the folder of class folders, or the CSV file
    root: Path  # where the images' relative paths start: the folder itself, or the CSV's ``root``
    classnames: tuple[tuple[str, str], ...] = ()
    templates: tuple[str, ...] = ()
    fractions: tuple[float, float, float] | None = None  # train, val, test; None = the default when not split
    seed: int = DEFAULT_SEED
    source: str = "params.yaml"

    @property
    def where(self) -> str:
        return f"{self.source}: custom_datasets.{self.name}"

    def split_fractions(self) -> tuple[float, float, float]:
        return self.fractions or tuple(DEFAULT_FRACTIONS[p] for p in PARTS)

    def settings(self) -> dict:
        """What decides the split (written into the source record, compared when the split is reused)."""
        return {
            "format": self.format,
            "fractions": list(self.split_fractions()),
            "seed": self.seed,
        }


def _listing(items, shown: int = SHOWN) -> str:
    items = list(items)
    text = ", ".join(map(str, items[:shown]))
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


def parse_declarations(raw, base_dir: Path, source: str, check_block=None) -> dict[str, Declaration]:
    """The ``custom_datasets`` value of params.yaml (a mapping, or the name of a YAML file holding one, which
    ``check_block(mapping, file name)`` checks against the schema)."""
    if raw is None or raw == {}:
        return {}
    if isinstance(raw, str):
        import yaml

        path = base_dir / raw
        if not path.is_file():
            raise UserError(f"{source}: custom_datasets names {path}, which does not exist; give a YAML file there")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is not a valid YAML file: {' '.join(str(err).split())}") from err
        if isinstance(raw, dict) and set(raw) == {"custom_datasets"}:
            raw = raw["custom_datasets"]
        source, base_dir = str(path), path.parent
        if check_block is not None:
            check_block(raw, source)
    return {name: _declaration(name, entry, base_dir, source) for name, entry in raw.items()}


def _declaration(name: str, entry: dict, base_dir: Path, source: str) -> Declaration:
    where = f"{source}: custom_datasets.{name}"
    path = (base_dir / entry["path"]).resolve()
    fmt = entry["format"]
    if fmt == "folder" and "root" in entry:
        raise UserError(f"{where}.root is for the csv format; a folder dataset's images are under its path")
    root = (base_dir / entry["root"]).resolve() if "root" in entry else (path if fmt == "folder" else path.parent)
    split = entry.get("split") or {}
    fractions = None
    if any(p in split for p in PARTS):
        fractions = tuple(float(split.get(p, 0.0)) for p in PARTS)
        if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
            raise UserError(
                f"{where}.split: train, val and test must be positive fractions that add up to 1, got "
                f"{dict(zip(PARTS, fractions))}"
            )
    templates = as_templates(entry.get("templates"))
    check_templates(templates, f"{where}.templates")
    classnames = tuple((str(k), str(v)) for k, v in (entry.get("classnames") or {}).items())
    return Declaration(name, fmt, path, root, classnames, templates, fractions, int(split.get("seed", 1)), source)


# ---------------------------------------------------------------- what the folder or CSV holds


@dataclass
class Scan:
    """The labelled image files a declaration points at, before anything is read."""

    files: dict[str, tuple[str, str | None]]  # relpath (POSIX, under root) -> (label, part or None)
    labels: list[str]  # every class label, in label order
    skipped: list[str]  # non-image files (relpaths)
    presplit: bool


def _label_order(label: str) -> tuple:
    """Numbers in numeric order (2 before 10), then names in alphabetical order."""
    return (not label.isdigit(), int(label) if label.isdigit() else 0, label)


def display_name(label: str) -> str:
    """The name a class label stands for in prompts when the declaration maps it to none: underscores as spaces."""
    return " ".join(label.replace("_", " ").split())


def _image(relpath: str) -> bool:
    return relpath.lower().endswith(IMAGE_EXTENSIONS)


def _walk(folder: Path, root: Path) -> list[str]:
    """Every file under ``folder`` (POSIX paths relative to ``root``), hidden files and folders left out."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink())  # a dangling link is listed, and then named as unreadable
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(decl: Declaration) -> Scan:
    return _scan_csv(decl) if decl.format == "csv" else _scan_folder(decl)


def _scan_folder(decl: Declaration) -> Scan:
    folder = decl.path
    if not folder.is_dir():
        raise UserError(f"{decl.where}.path: {folder} is not a folder; give the folder that holds one folder per class")
    top = _class_folders(folder)
    presplit = {"train", "test"} <= set(top)
    parts = [p for p in PARTS if p in top] if presplit else [None]
    files: dict[str, tuple[str, str | None]] = {}
    # files beside the class folders belong to no class: skipped and counted like the other non-images
    skipped: list[str] = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    labels: set[str] = set()
    empty: list[str] = []
    per_part: dict[str | None, set[str]] = {}
    for part in parts:
        base = folder / part if part else folder
        classes = _class_folders(base)
        if not classes:
            raise UserError(
                f"{decl.where}: {base} holds no class folders; put each class's images in a folder named after it"
            )
        per_part[part] = set(classes)
        labels |= set(classes)
        for label in classes:
            names = _walk(base / label, folder)
            images = [n for n in names if _image(n)]
            skipped += [n for n in names if not _image(n)]
            if not images:
                empty.append(f"{part}/{label}" if part else label)
            files |= {n: (label, part) for n in images}
    if empty:
        raise UserError(
            f"{decl.where}: {len(empty)} class folder(s) hold no images: {_listing(empty)}; add images or remove "
            f"the folder (image files end in {', '.join(IMAGE_EXTENSIONS)})"
        )
    if presplit:
        for part in ("train", "test"):
            lacking = sorted(labels - per_part[part])
            if lacking:
                raise UserError(
                    f"{decl.where}: {len(lacking)} class(es) have no folder under {part}/: {_listing(lacking)}; every "
                    f"class needs training and test images"
                )
    return Scan(files, sorted(labels), skipped, presplit)


def _scan_csv(decl: Declaration) -> Scan:
    path = decl.path
    if not path.is_file():
        raise UserError(f"{decl.where}.path: {path} does not exist; give a CSV file of path,label[,split] rows")
    try:
        # utf-8-sig drops a byte-order mark; newline="" lets the csv module take \r\n (Windows) and \n alike
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = [(c or "").strip() for c in reader.fieldnames or []]
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a UTF-8 text file ({err}); save the CSV as UTF-8") from err
    except csv.Error as err:
        raise UserError(f"{path} is not a readable CSV file: {err}") from err
    if not rows:
        raise UserError(f"{path} has no rows; its first line names the columns path,label[,split], then one per image")
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    missing = [c for c in ("path", "label") if c not in rows[0]]
    if missing:
        raise UserError(
            f"{path}: the column(s) {', '.join(missing)} are missing; its header has {', '.join(columns)}, and a "
            "dataset CSV needs path and label (and may have split: train, val or test)"
        )
    presplit = "split" in rows[0]
    files: dict[str, tuple[str, str | None]] = {}
    bad_part, blank, absolute, repeated = [], [], [], []
    for line, row in enumerate(rows, start=2):
        relpath, label = row["path"].replace("\\", "/"), row["label"]
        part = row.get("split") or None if presplit else None
        if not relpath or not label:
            blank.append(line)
            continue
        if presplit and part not in PARTS:
            bad_part.append(f"line {line}: {part!r}")
        if Path(relpath).is_absolute() or ".." in Path(relpath).parts:
            absolute.append(f"line {line}: {relpath}")
        if relpath in files:
            repeated.append(f"line {line}: {relpath}")
        files[relpath] = (label, part)
    for problem, what in (
        (blank, "have an empty path or label"),
        (bad_part, "have a split that is not train, val or test"),
        (absolute, f"have a path that is absolute or leaves {decl.root} (paths are relative to the root)"),
        (repeated, "repeat a path listed before"),
    ):
        if problem:
            raise UserError(f"{path}: {len(problem)} row(s) {what}: {_listing(problem)}")
    labels = sorted({label for label, _ in files.values()}, key=_label_order)
    names = dict(decl.classnames)
    if names:
        unmapped = [label for label in labels if label not in names]
        if unmapped:
            raise UserError(
                f"{path}: {len(unmapped)} label(s) are not in {decl.where}.classnames: {_listing(unmapped)}; add them "
                "there, or correct the CSV"
            )
    elif all(label.isdigit() for label in labels):
        raise UserError(
            f"{path}: the labels are numbers, which cannot go into a prompt; give {decl.where}.classnames, a map from "
            f"each label to its class name (e.g. {{{labels[0]}: cat}})"
        )
    absent = [p for p in files if not (decl.root / p).is_file()]  # each listed file, not a walk of the whole root
    if absent:
        raise UserError(
            f"{path}: {len(absent)} listed file(s) do not exist under {decl.root}: {_listing(absent)}; correct the "
            f"paths or {decl.where}.root"
        )
    skipped = [p for p in files if not _image(p)]
    files = {p: v for p, v in files.items() if _image(p)}
    if presplit:
        for part in ("train", "test"):
            have = {label for label, p in files.values() if p == part}
            lacking = [label for label in labels if label not in have]
            if lacking:
                raise UserError(
                    f"{path}: {len(lacking)} class(es) have no {part} rows: {_listing(lacking)}; every class needs "
                    "training and test images"
                )
    return Scan(files, labels, skipped, presplit)


# ---------------------------------------------------------------- reading every image once


def _read_image(path: Path) -> tuple[str, int, str | None]:
    """(sha256, size, None) of a readable image, or (sha256, size, why) of one that cannot be decoded."""
    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as err:  # no permission, a dangling link, an unreadable disk block
        return "", 0, f"{type(err).__name__}: {err.strerror or err}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: a truncated file fails here, not only at its header
    except Image.UnidentifiedImageError:
        return digest, len(data), "not an image file Pillow can read"
    except Exception as err:  # PIL raises many types for bad files
        return digest, len(data), f"{type(err).__name__}: {err}"
    return digest, len(data), None


def read_images(decl: Declaration, relpaths: list[str]) -> dict[str, dict]:
    """{relpath: {"bytes", "sha256"}}; every unreadable or truncated image listed in one message."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # decoders let go of the GIL
        results = dict(zip(relpaths, pool.map(lambda rel: _read_image(decl.root / rel), relpaths)))
    bad = [f"{rel} ({why})" for rel, (_, _, why) in results.items() if why]
    if bad:
        raise UserError(
            f"{decl.where}: {len(bad)} image(s) cannot be read: {_listing(bad)}; replace or remove them (nothing "
            "was written)"
        )
    return {rel: {"bytes": size, "sha256": digest} for rel, (digest, size, _) in results.items()}


# ---------------------------------------------------------------- the split, written once


def _split_part(relpaths: list[str], fractions: tuple[float, float, float], rng: random.Random) -> dict[str, list]:
    """CoOp's per-class rule: shuffle, round(n * train) for training, round(n * val) for validation, the rest test."""
    shuffled = list(relpaths)
    rng.shuffle(shuffled)
    n = len(shuffled)
    n_train, n_val = round(n * fractions[0]), round(n * fractions[1])
    return {
        "train": shuffled[:n_train],
        "val": shuffled[n_train : n_train + n_val],
        "test": shuffled[n_train + n_val :],
    }


def make_split(decl: Declaration, found: Scan) -> dict[str, list[list]]:
    """{"train"|"val"|"test": [[relpath, label index, label], ...]} in CoOp's format (labels as declared)."""
    index = {label: i for i, label in enumerate(found.labels)}
    by_class: dict[str, dict[str | None, list[str]]] = defaultdict(lambda: defaultdict(list))
    for relpath, (label, part) in sorted(found.files.items()):
        by_class[label][part].append(relpath)
    rng = random.Random(decl.seed)
    split: dict[str, list[list]] = {p: [] for p in PARTS}
    too_few = []
    for label in found.labels:
        parts = by_class[label]
        if found.presplit:
            chosen = {p: sorted(parts.get(p, [])) for p in PARTS}
            if not chosen["val"]:  # no val/ folder or rows: CoOp's split_trainval takes it from train
                train = sorted(parts.get("train", []))
                n_val = round(len(train) * PRESPLIT_VAL_FRACTION)
                rng.shuffle(train)
                chosen["train"], chosen["val"] = sorted(train[n_val:]), sorted(train[:n_val])
        else:
            chosen = _split_part(parts[None], decl.split_fractions(), rng)
        if not chosen["train"] or not chosen["test"]:
            too_few.append(f"{label} ({sum(len(v) for v in parts.values())} images)")
        for p in PARTS:
            split[p] += [[rel, index[label], label] for rel in chosen[p]]
    if too_few:
        raise UserError(
            f"{decl.where}: {len(too_few)} class(es) have too few images to give each split at least one: "
            f"{_listing(too_few)}; add images, or change {decl.where}.split"
        )
    return split


def _leaks(split: dict[str, list[list]], record: dict[str, dict]) -> list[str]:
    where: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for part, entries in split.items():
        for rel, _, _ in entries:
            where[record[rel]["sha256"]].append((part, rel))
    leaks = []
    for places in where.values():
        if len({part for part, _ in places}) > 1:
            leaks.append(" = ".join(f"{rel} ({part})" for part, rel in sorted(places)))
    return sorted(leaks)


def prepare(decl: Declaration, folder: Path, log=print) -> None:
    """Write the split (once) and the source record into ``folder`` (``<data root>/<name>``)."""
    from prompt_ot.utils.io import atomic_write_text

    split_path = folder / split_filename(decl.name)
    if split_path.is_file() and (folder / SOURCE_RECORD).is_file():
        check_unchanged(decl, folder)  # the split is written once: a changed folder is named, not re-split
        log(f"{decl.name}: the split {split_path} is up to date with {decl.path}")
        return
    found = scan(decl)
    if found.skipped:
        log(f"{decl.name}: skipped {len(found.skipped)} non-image file(s): {_listing(found.skipped)}")
    record = read_images(decl, sorted(found.files))
    split = make_split(decl, found)
    leaks = _leaks(split, record)
    if leaks:
        raise UserError(
            f"{decl.where}: the same image content is in two splits ({len(leaks)} case(s)), which leaks test images "
            f"into training: {_listing(leaks)}; remove one copy of each (nothing was written)"
        )
    counts = Counter(label for label, _ in found.files.values())
    log(
        f"{decl.name}: {len(found.files)} images of {len(found.labels)} classes "
        f"({min(counts.values())} to {max(counts.values())} per class); "
        + ", ".join(f"{p} {len(split[p])}" for p in PARTS)
        + ("" if found.presplit else f" (fractions {decl.split_fractions()}, seed {decl.seed})")
    )
    payload = json.dumps(split)
    source = {
        "dataset": decl.name,
        "settings": decl.settings(),
        "presplit": found.presplit,
        "labels": found.labels,
        "split_sha256": hashlib.sha256(payload.encode()).hexdigest(),
        "skipped": found.skipped,
        "files": {rel: {**record[rel], "label": found.files[rel][0]} for rel in sorted(record)},
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / SOURCE_RECORD, json.dumps(source, indent=0, sort_keys=True))
    atomic_write_text(split_path, payload)


def _read_source(folder: Path) -> dict:
    from prompt_ot.utils.io import read_json

    return read_json(
        folder / SOURCE_RECORD,
        what="dataset source record",
        fix="delete the folder and run the download stage again",
    )


def _size(path: Path) -> int | None:
    """The file's size; None when it cannot be read any more (a link whose target is gone)."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def check_unchanged(decl: Declaration, folder: Path) -> None:
    """Refuse when the declaration's files are not those the split was made from, naming what changed."""
    source = _read_source(folder)
    if source.get("settings") != decl.settings():
        raise UserError(
            f"{decl.where}: the split in {folder} was made with {source.get('settings')}, the declaration now says "
            f"{decl.settings()}; to make a new split, delete {folder} (runs made from the old split stay as they are) "
            "and run the download stage again, or restore the declaration"
        )
    found = scan(decl)
    recorded = source["files"]
    appeared = sorted(set(found.files) - set(recorded))
    gone = sorted(set(recorded) - set(found.files))
    resized = sorted(
        rel for rel in set(found.files) & set(recorded) if _size(decl.root / rel) != recorded[rel]["bytes"]
    )
    relabelled = sorted(
        rel for rel in set(found.files) & set(recorded) if found.files[rel][0] != recorded[rel]["label"]
    )
    changes = [
        f"{len(names)} {what}: {_listing(names)}"
        for names, what in (
            (appeared, "appeared"),
            (gone, "disappeared"),
            (resized, "changed size"),
            (relabelled, "changed class"),
        )
        if names
    ]
    if changes:
        raise UserError(
            f"{decl.name}: {decl.path} has changed since its split {folder / split_filename(decl.name)} was written "
            f"(sha256 {source['split_sha256'][:12]}): " + "; ".join(changes) + ". The split is kept as it was; to "
            f"make a new split from the folder as it is now, delete {folder} and run the download stage again (runs "
            "made from the old split stay as they are), or restore the files"
        )


def spec_of(decl: Declaration):
    """The DatasetSpec of a declaration (kind "custom"): prepared, not fetched; its split read after a check."""
    from prompt_ot.data.registry import DatasetSpec, read_coop_split, rename_classes

    def load_split(folder: Path):
        check_unchanged(decl, folder)
        split = read_coop_split(folder / split_filename(decl.name))
        labels = {it.classname for items in split.values() for it in items}
        names = {label: display_name(label) for label in labels} | dict(decl.classnames)
        return rename_classes(split, names, f"{decl.where}.classnames", decl.name)

    return DatasetSpec(
        name=decl.name,
        folder=decl.name,
        template=(decl.templates or ("a photo of a {}.",))[0],
        templates=decl.templates,
        image_dir=str(decl.root),  # absolute: the images stay where the user keeps them
        split_file=split_filename(decl.name),
        load_split_fn=load_split,
        prepare_fn=lambda folder: prepare(decl, folder),
        kind="custom",
        notes=f"declared in {decl.source} ({decl.format}: {decl.path})",
        extra={"declaration": decl},
    )
