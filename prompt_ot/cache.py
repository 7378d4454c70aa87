"""The feature cache: frozen-backbone features computed once instead of once per step and per method.

Two kinds of cache folder, each built whole in a hidden temporary folder beside the target and renamed
into place when complete (``index.json`` is written last), so a killed build leaves nothing that looks
complete:

- test, once per (backbone, dataset): ``store/`` (the test images, "test" mode), ``image_features.npy``
  (N, D) float32 with row i = store item i, ``labels.npy`` and ``text_features_<k>.npy`` (C, D), the
  frozen class-name features of the k-th template. Read with :class:`TestFeatures`.
- train, once per (backbone, manifest, augmentation seed): ``store/`` (the manifest's training images,
  "train" mode: each whole image with its aspect ratio and original size, shorter side capped at
  ``train_short_side``) and ``view_features.npy`` (E, N, D) float32, the frozen features of the view
  ``store_view(store, i, seed, e)`` (crop box drawn on the original image size, as the reference does)
  that the trainer's ``TrainViews`` yields for item i in epoch e. Read (memory-mapped) with
  :class:`FrozenViewFeatures`, the trainer's ``frozen_image_features``.

Every feature is the normalised output of ``PromptedCLIP`` with prompts off, the same forward the
trainer and ``evaluate`` run. A build is skipped when the folder holds a cache of the same identity
(backbone, pretrained tag, dataset, manifest, seed) and inputs (weights, images, templates, precision,
image-store format and, for training views, the stored size cap); other inputs are rebuilt; another identity
is refused unless ``replace``, since it means a wrong ``--out``.
A backbone without pretrained weights gets ``load_backbone``'s seeded random initialisation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from prompt_ot.data.registry import Item
from prompt_ot.errors import UserError, unknown_name
from prompt_ot.precision import PRECISIONS, autocast
from prompt_ot.templates import check_templates
from prompt_ot.utils.io import building_folder, read_json, remove_stale_folders, replace_folder

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
KINDS = ("test", "train")
PAPER_TEMPLATE = "a photo of a {}."

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """What a build did: ``built`` is False when an up-to-date cache was reused; ``computed`` counts features."""

    path: Path
    built: bool
    reason: str
    computed: int = 0
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- inputs
def default_templates(dataset_templates: str | Sequence[str]) -> list[str]:
    """The dataset's zero-shot template(s) and the paper's "a photo of a {}." (each once)."""
    if isinstance(dataset_templates, str):
        dataset_templates = [dataset_templates]
    return list(dict.fromkeys([*dataset_templates, PAPER_TEMPLATE]))


def _check_templates(templates: Sequence[str]) -> list[str]:
    templates = list(dict.fromkeys(templates))
    if not templates:
        raise UserError("give at least one text template, e.g. 'a photo of a {}.'")
    check_templates(templates)
    return templates


def weights_source(pretrained: str | None) -> tuple[str, str]:
    """(source, id): where the weights come from (identity) and what exactly they are (input)."""
    from prompt_ot.models.backbone import CHECKPOINT_SUFFIXES, RANDOM_INIT_SEED
    from prompt_ot.utils.io import sha256_file

    if pretrained in (None, "", "none", "random"):
        return "random", f"torch-seed-{RANDOM_INIT_SEED}"
    path = Path(pretrained).expanduser()
    if path.is_file():
        return "file", sha256_file(path)
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained:
        raise UserError(f"checkpoint file {pretrained} does not exist; give an existing file or an open_clip tag")
    return f"tag:{pretrained}", f"tag:{pretrained}"


def _items_fingerprint(items: Sequence[Item], image_root: Path) -> str:
    """Relpaths, labels and file sizes of every image; a missing file is a UserError."""
    digest = hashlib.sha256()
    for it in items:
        try:
            size = (image_root / it.relpath).stat().st_size
        except FileNotFoundError:
            raise UserError(
                f"image {image_root / it.relpath} does not exist; download the dataset again or check --root"
            ) from None
        digest.update(f"{it.relpath}\0{it.label}\0{size}\n".encode())
    return digest.hexdigest()


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------- folders
def _plan(out_dir: Path, kind: str, identity: dict, inputs: dict, replace: bool, epochs: int | None) -> str | None:
    """None when the cache at ``out_dir`` can be reused, else the reason to build; refuses foreign folders."""
    if not out_dir.exists():
        return "no cache yet"
    index_path = out_dir / INDEX_NAME
    if not out_dir.is_dir() or (not index_path.is_file() and any(out_dir.iterdir())):
        raise UserError(f"{out_dir} exists and is not a feature cache; give a new or empty folder as --out")
    if not index_path.is_file():
        return "empty folder"
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        index = None
    if not isinstance(index, dict) or index.get("kind") not in KINDS:
        raise UserError(f"{out_dir} holds something other than a feature cache; give another folder as --out")
    if index.get("format_version") != FORMAT_VERSION:
        return f"the cache has format version {index.get('format_version')!r}, this code writes {FORMAT_VERSION}"
    old = {"kind": index["kind"], **index.get("identity", {})}
    new = {"kind": kind, **identity}
    if old != new:
        differs = [k for k in new if old.get(k) != new[k]]
        have = ", ".join(f"{k} {old.get(k)!r}" for k in differs)
        want = ", ".join(f"{k} {new[k]!r}" for k in differs)
        if not replace:
            raise UserError(
                f"{out_dir} holds the feature cache of {have}, this run asks for {want}; "
                "choose another --out, or overwrite it with --replace"
            )
        return f"replacing the cache of {have}"
    changed = [k for k in inputs if index.get("inputs", {}).get(k) != inputs[k]]
    if changed:
        return f"its inputs changed ({', '.join(changed)})"
    if epochs is not None and index["counts"]["epochs"] < epochs:
        return f"it holds views of {index['counts']['epochs']} epochs, {epochs} are needed"
    try:
        (TestFeatures if kind == "test" else FrozenViewFeatures)(out_dir)
    except UserError as err:
        return f"it is damaged ({err})"
    return None


def _reused(out_dir: Path) -> BuildResult:
    """The result of finding the cache up to date; a killed rebuild's leftovers beside it are removed."""
    remove_stale_folders(out_dir)
    return BuildResult(out_dir, built=False, reason="up to date")


class _Building:
    """A hidden temporary folder beside ``out_dir``: installed on success, deleted on any failure; one left by a
    killed build (its owner process gone) is removed by the next build of the same target."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def __enter__(self) -> Path:
        self.tmp = building_folder(self.out_dir)  # first removes what killed builds of this target left
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                replace_folder(self.tmp, self.out_dir)
                return
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- encoding
def load_frozen_encoder(backbone: str, pretrained: str | None, device: str = "auto", precision: str = "fp32"):
    """The backbone as a ``PromptedCLIP`` with prompts off (the trainer's frozen forward), and its ``Preprocess``;
    its weights in half for ``fp16`` (:mod:`prompt_ot.precision`), as the runs that read the features."""
    from prompt_ot.models.backbone import load_backbone
    from prompt_ot.models.prompted import PromptConfig, PromptedCLIP
    from prompt_ot.train import resolve_device

    target = resolve_device(device)
    clip, tokenizer, preprocess = load_backbone(backbone, pretrained, precision=precision)
    model = PromptedCLIP(clip, tokenizer, PromptConfig(0, 0, 0, 0, ctx_init=None)).to(target).eval()
    return model, preprocess, target


@torch.no_grad()
def _encode_into(
    model, dataset, out: np.ndarray, batch_size: int, workers: int, device, precision: str, desc: str, progress: bool
) -> None:
    """Write the normalised frozen image features of every item of ``dataset`` into rows of ``out``."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    row = 0
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, mininterval=2.0) as bar:
        for images, _ in loader:
            with autocast(device, precision):
                features = model.frozen_image_features(images.to(device, non_blocking=True))
            out[row : row + len(features)] = features.float().cpu().numpy()
            row += len(features)
            bar.update(len(features))
    assert row == len(out), f"encoded {row} rows for {len(out)} items"


class _AllViews(torch.utils.data.Dataset):
    """Every training view of every epoch, epoch-major: item k is view (k // N, k % N)."""

    def __init__(self, store, seed: int, epochs: int, preprocess):
        self.store, self.seed, self.epochs, self.preprocess = store, seed, epochs, preprocess

    def __len__(self) -> int:
        return self.epochs * len(self.store)

    def __getitem__(self, k: int):
        from prompt_ot.data.augment import store_view

        epoch, i = divmod(k, len(self.store))
        pre = self.preprocess
        return store_view(self.store, i, self.seed, epoch, pre.image_size, pre.mean, pre.std), 0


def _feature_dim(model) -> int:
    from prompt_ot.models.prompted import _image_feature_width

    return _image_feature_width(model.clip.visual)


def _preprocess_record(preprocess) -> dict:
    return {"image_size": preprocess.image_size, "mean": list(preprocess.mean), "std": list(preprocess.std)}


def _write_index(folder: Path, index: dict) -> None:
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=1))


# ---------------------------------------------------------------------------------------------- test side
def build_test_cache(
    dataset: str,
    data_root: str | Path,
    backbone: str,
    pretrained: str | None,
    out_dir: str | Path,
    templates: Sequence[str] | None = None,
    **options,
) -> BuildResult:
    """Test-image and class-text features of a registered dataset (all test items of its split).

    ``templates`` default to the dataset's template and "a photo of a {}.". ``options`` are those of
    :func:`cache_test_items` (batch_size, device, workers, precision, replace, skip_bad, progress).
    """
    from prompt_ot.data.registry import classnames_of, dataset_spec

    spec = dataset_spec(dataset)
    split = spec.load_split(data_root)
    options |= {"backbone": backbone, "pretrained": pretrained, "out_dir": out_dir}
    templates = templates or default_templates(spec.zero_shot_templates)
    items = split["test"], spec.image_root(data_root), classnames_of(split)
    return cache_test_items(*items, dataset=spec.name, templates=templates, **options)


def cache_test_items(
    items: Sequence[Item],
    image_root: str | Path,
    classnames: Sequence[str],
    *,
    dataset: str,
    backbone: str,
    pretrained: str | None,
    out_dir: str | Path,
    templates: Sequence[str],
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 0,
    precision: str = "fp32",
    replace: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> BuildResult:
    """The test cache of any labelled items (``build_test_cache`` for a registered dataset)."""
    from prompt_ot.data.augment import TestImages
    from prompt_ot.data.store import build_store

    _check_positive(batch_size=batch_size)
    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    templates = _check_templates(templates)
    if not items:
        raise UserError(f"dataset {dataset} has no test images in its split; check the split file")
    out_dir, image_root = Path(out_dir), Path(image_root)
    source, weights_id = weights_source(pretrained)
    identity = {"backbone": backbone, "pretrained": source, "dataset": dataset}
    extra = {"templates": templates, "classnames": list(classnames)}
    inputs = _inputs(weights_id, items, image_root, precision, skip_bad, **extra)
    start = _start_build(out_dir, "test", identity, inputs, replace, None, (backbone, pretrained, device, precision))
    if start is None:
        return _reused(out_dir)
    reason, started, timings, (model, preprocess, target) = start
    with _Building(out_dir) as tmp:
        store = build_store(
            items, image_root, tmp / "store", "test", preprocess.image_size, skip_bad=skip_bad, classnames=classnames
        )
        timings["store_s"] = time.perf_counter() - started - timings["load_s"]
        mark = time.perf_counter()
        features = np.lib.format.open_memmap(
            tmp / "image_features.npy", mode="w+", dtype=np.float32, shape=(len(store), _feature_dim(model))
        )
        _encode_into(
            model,
            TestImages(store, preprocess.mean, preprocess.std),
            features,
            batch_size,
            workers,
            target,
            precision,
            f"test images {dataset}",
            progress,
        )
        features.flush()
        del features
        np.save(tmp / "labels.npy", store.labels)
        timings["image_features_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        entries = []
        for k, template in enumerate(templates):
            model.set_classnames(list(classnames), template)
            with torch.no_grad(), autocast(target, precision):
                text = model.frozen_class_text_features().float().cpu().numpy()
            np.save(tmp / f"text_features_{k}.npy", text)
            entries.append({"template": template, "file": f"text_features_{k}.npy"})
        timings["text_features_s"] = time.perf_counter() - mark
        counts = {"images": len(store), "classes": len(classnames), "dim": _feature_dim(model)}
        counts |= {"templates": len(entries), "skipped": len(store.skipped)}
        record = _index_record("test", identity, inputs, pretrained, classnames, counts, preprocess, target, batch_size)
        _write_index(tmp, {**record, "templates": entries, "build": {**record["build"], **_elapsed(started)}})
    return BuildResult(out_dir, built=True, reason=reason, computed=len(store), timings=timings)


# ---------------------------------------------------------------------------------------------- train side
def build_train_cache(
    manifest_path: str | Path,
    data_root: str | Path,
    backbone: str,
    pretrained: str | None,
    out_dir: str | Path,
    epochs: int,
    seed: int,
    **options,
) -> BuildResult:
    """Frozen features of every training view of a few-shot manifest for ``epochs`` epochs under ``seed``.

    ``options`` are those of :func:`cache_train_items` (batch_size, device, workers, precision, replace, skip_bad,
    progress).
    """
    from prompt_ot.data.fewshot import read_manifest, verify_files
    from prompt_ot.data.registry import dataset_spec

    manifest = read_manifest(manifest_path)
    image_root = dataset_spec(manifest.dataset).image_root(data_root)
    verify_files(manifest, image_root)
    source = {"dataset": manifest.dataset, "subset": manifest.subset, "shots": manifest.shots}
    source["manifest_seed"] = manifest.seed
    options |= {"backbone": backbone, "pretrained": pretrained, "out_dir": out_dir, "epochs": epochs, "seed": seed}
    return cache_train_items(manifest.items("train"), image_root, manifest.classnames, source=source, **options)


def cache_train_items(
    items: Sequence[Item],
    image_root: str | Path,
    classnames: Sequence[str],
    *,
    source: dict,
    backbone: str,
    pretrained: str | None,
    out_dir: str | Path,
    epochs: int,
    seed: int,
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 0,
    precision: str = "fp32",
    train_short_side: int | None = None,
    replace: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> BuildResult:
    """The training-view cache of any labelled items; ``source`` names them (dataset, manifest fields).

    ``train_short_side`` caps the stored shorter side of the training images (None: automatic, the
    smallest cap at which every crop is still a downscale; 0: keep them as decoded), see ``build_store``.
    """
    from prompt_ot.data.store import build_store, check_train_short_side

    _check_positive(batch_size=batch_size)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise UserError(f"epochs must be a non-negative integer (0: the store only, no view features), got {epochs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    check_train_short_side(train_short_side)
    if not items:
        raise UserError(f"no training images to cache ({source}); check the manifest")
    out_dir, image_root = Path(out_dir), Path(image_root)
    weights_from, weights_id = weights_source(pretrained)
    identity = {"backbone": backbone, "pretrained": weights_from, **source, "seed": seed}
    inputs = _inputs(weights_id, items, image_root, precision, skip_bad, train_short_side=train_short_side)
    start = _start_build(out_dir, "train", identity, inputs, replace, epochs, (backbone, pretrained, device, precision))
    if start is None:
        return _reused(out_dir)
    reason, started, timings, (model, preprocess, target) = start
    with _Building(out_dir) as tmp:
        store = build_store(
            items,
            image_root,
            tmp / "store",
            "train",
            preprocess.image_size,
            train_short_side=train_short_side,
            skip_bad=skip_bad,
            classnames=classnames,
        )
        timings["store_s"] = time.perf_counter() - started - timings["load_s"]
        mark = time.perf_counter()
        dim = _feature_dim(model)
        if epochs == 0 or len(store) == 0:  # nothing to encode (no run of the grid reads frozen view features)
            np.save(tmp / "view_features.npy", np.zeros((epochs, len(store), dim), dtype=np.float32))
        else:
            views = np.lib.format.open_memmap(
                tmp / "view_features.npy", mode="w+", dtype=np.float32, shape=(epochs, len(store), dim)
            )
            _encode_into(
                model,
                _AllViews(store, seed, epochs, preprocess),
                views.reshape(epochs * len(store), dim),
                batch_size,
                workers,
                target,
                precision,
                f"training views ({epochs} epochs)",
                progress,
            )
            views.flush()
            del views
        np.save(tmp / "labels.npy", store.labels)
        timings["view_features_s"] = time.perf_counter() - mark
        counts = {"images": len(store), "epochs": epochs, "views": epochs * len(store), "dim": dim}
        counts |= {"skipped": len(store.skipped)}
        record = _index_record(
            "train", identity, inputs, pretrained, classnames, counts, preprocess, target, batch_size
        )
        _write_index(tmp, {**record, "build": {**record["build"], **_elapsed(started)}})
    return BuildResult(out_dir, built=True, reason=reason, computed=epochs * len(store), timings=timings)


_WHAT = {"test": "test", "train": "training-view"}


def _inputs(weights_id, items, image_root: Path, precision: str, skip_bad: bool, **specific) -> dict:
    """What a cache's content depends on beyond its identity: a change to any of them rebuilds it."""
    from prompt_ot.data.store import FORMAT_VERSION as STORE_FORMAT

    common = {"weights": weights_id, "items": _items_fingerprint(items, image_root), "precision": precision}
    return common | specific | {"skip_bad": skip_bad, "store_format": STORE_FORMAT}


def _start_build(out_dir: Path, kind: str, identity: dict, inputs: dict, replace: bool, epochs, encoder: tuple):
    """None when the cache at ``out_dir`` is up to date; else (why it is built, the start time, the timings so far,
    the frozen encoder loaded from ``encoder`` = (backbone, pretrained, device, precision))."""
    reason = _plan(out_dir, kind, identity, inputs, replace, epochs)
    if reason is None:
        return None
    log.info("building %s feature cache %s: %s", _WHAT[kind], out_dir, reason)
    started = time.perf_counter()
    loaded = load_frozen_encoder(*encoder)
    return reason, started, {"load_s": time.perf_counter() - started}, loaded


def _index_record(kind, identity, inputs, pretrained, classnames, counts, preprocess, target, batch_size) -> dict:
    """What every cache index holds (a kind adds its own entries; ``build`` gets its time at the end)."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "identity": identity,
        "inputs": inputs,
        "pretrained_given": pretrained,
        "classnames": list(classnames),
        "counts": counts,
        "preprocess": _preprocess_record(preprocess),
        "build": {"device": str(target), "batch_size": batch_size},
    }


def _elapsed(started: float) -> dict:
    return {"seconds": time.perf_counter() - started, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ---------------------------------------------------------------------------------------------- readers
def _read_index(path: Path, kind: str) -> dict:
    fix = f"build it with 'python -m prompt_ot cache {kind} ...'"
    index_path = path / INDEX_NAME
    index = read_json(
        index_path,
        what="feature cache index",
        fix=fix,
        missing=f"no complete {kind} feature cache at {path} (no {INDEX_NAME}); {fix}",
    )
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        raise UserError(f"feature cache {path} has another format version than {FORMAT_VERSION}; {fix}")
    if index.get("kind") != kind:
        raise UserError(f"{path} is a {index.get('kind')!r} feature cache, a {kind!r} one is needed; {fix}")
    return index


def _load_array(path: Path, shape: tuple, dtype, mmap: bool = False) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as err:
        raise UserError(f"feature cache file {path} is missing or corrupt ({err}); build the cache again") from None
    if array.shape != shape or array.dtype != dtype:
        raise UserError(f"feature cache file {path} has shape {array.shape}, expected {shape}; build the cache again")
    return array


def _expect(path: Path, index: dict, **expected) -> None:
    """A UserError when the cache was built for something else than the caller needs."""
    have = {**index["identity"], "epochs": index["counts"].get("epochs")}
    for key, want in expected.items():
        if want is None:
            continue
        ok = have.get(key) >= want if key == "epochs" else have.get(key) == want
        if not ok:
            raise UserError(
                f"feature cache {path} was built for {key} {have.get(key)!r}, this run needs {want!r}; "
                "build a cache for this run (python -m prompt_ot cache ...)"
            )


class FrozenViewFeatures:
    """``(epoch, indices) -> (B, D)`` frozen features of training views, read from a train cache (memmap).

    Pass it as ``train(..., frozen_image_features=...)`` with ``train_views()`` as the dataset; the
    keyword checks refuse a cache of another seed, backbone or with too few epochs.
    """

    def __init__(
        self, path: str | Path, *, seed: int | None = None, epochs: int | None = None, backbone: str | None = None
    ):
        self.path = Path(path)
        self.index = _read_index(self.path, "train")
        _expect(self.path, self.index, seed=seed, epochs=epochs, backbone=backbone)
        counts = self.index["counts"]
        self.epochs, self.num_items, self.dim = counts["epochs"], counts["images"], counts["dim"]
        self.seed: int = self.index["identity"]["seed"]
        self.precision: str = self.index["inputs"]["precision"]
        self.views = _load_array(
            self.path / "view_features.npy",
            (self.epochs, self.num_items, self.dim),
            np.float32,
            mmap=self.epochs * self.num_items > 0,
        )

    def covers(self, epochs: int, precision: str) -> bool:
        """Whether the cached views are those a run of ``epochs`` epochs at ``precision`` would compute itself."""
        return self.epochs >= epochs and self.precision == precision

    def __call__(self, epoch: int, indices) -> torch.Tensor:
        if not 0 <= epoch < self.epochs:
            raise UserError(
                f"feature cache {self.path} holds views of {self.epochs} epochs, training asked for "
                f"epoch {epoch + 1}; build the cache with --epochs at least the training epochs"
            )
        rows = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_items):
            raise IndexError(f"item indices {rows.tolist()} out of range for {self.num_items} cached items")
        return torch.from_numpy(np.ascontiguousarray(self.views[epoch, rows]))

    @property
    def store(self):
        from prompt_ot.data.store import ImageStore

        return ImageStore(self.path / "store")

    def train_views(self):
        """The trainer's dataset: ``TrainViews`` over this cache's store with the cached seed and preprocessing."""
        from prompt_ot.data.augment import TrainViews

        pre = self.index["preprocess"]
        return TrainViews(self.store, self.seed, pre["image_size"], tuple(pre["mean"]), tuple(pre["std"]))


class TestFeatures:
    """A test cache: ``image_features`` (N, D), ``labels`` (N,), ``classnames`` and ``text_features(template)``."""

    __test__ = False  # not a pytest test class

    def __init__(self, path: str | Path, *, backbone: str | None = None):
        self.path = Path(path)
        self.index = _read_index(self.path, "test")
        _expect(self.path, self.index, backbone=backbone)
        counts = self.index["counts"]
        n, dim, n_classes = counts["images"], counts["dim"], counts["classes"]
        self.classnames: list[str] = self.index["classnames"]
        self.templates: list[str] = [e["template"] for e in self.index["templates"]]
        self.precision: str = self.index["inputs"]["precision"]
        self.image_features = torch.from_numpy(_load_array(self.path / "image_features.npy", (n, dim), np.float32))
        self.labels = torch.from_numpy(_load_array(self.path / "labels.npy", (n,), np.int64))
        self.rows = torch.arange(n)  # store item of each row
        self._text = {
            e["template"]: torch.from_numpy(_load_array(self.path / e["file"], (n_classes, dim), np.float32))
            for e in self.index["templates"]
        }

    def __len__(self) -> int:
        return len(self.labels)

    def text_features(self, template: str) -> torch.Tensor:
        """Normalised frozen features (C, D) of ``template`` filled with each class name."""
        if template not in self._text:
            raise UserError(
                f"feature cache {self.path} has no text features for template {template!r}; cached: "
                f"{self.templates}. Build it with --templates including this one"
            )
        return self._text[template]

    def subset(self, subset: str) -> TestFeatures:
        """The base or novel classes only (base-to-novel protocol), relabelled from 0 like the splits."""
        from prompt_ot.data.splits import SUBSETS, base_novel_labels

        if subset not in SUBSETS:
            raise unknown_name("subset", subset, SUBSETS)
        if subset == "all":
            return self
        base, novel = base_novel_labels(range(len(self.classnames)))
        kept = torch.as_tensor(base if subset == "base" else novel, dtype=torch.long)
        relabel = torch.full((len(self.classnames),), -1, dtype=torch.long)
        relabel[kept] = torch.arange(len(kept))
        mask = relabel[self.labels] >= 0
        part = copy.copy(self)
        part.image_features, part.rows = self.image_features[mask], self.rows[mask]
        part.labels = relabel[self.labels[mask]]
        part.classnames = [self.classnames[i] for i in kept.tolist()]
        part._text = {t: v[kept] for t, v in self._text.items()}
        return part

    @property
    def store(self):
        from prompt_ot.data.store import ImageStore

        return ImageStore(self.path / "store")


def uses_frozen_image_encoder(method) -> bool:
    """Whether a method's image features are the frozen ones, so cached test features can stand in for them."""
    return method.prompts.vision_depth == 0


def evaluate_cached(test: TestFeatures, class_text: torch.Tensor):
    """``evaluate()``'s result for a model whose image encoder is frozen: a matrix product over cached features."""
    from prompt_ot.evaluate import classify_features, evaluated

    return evaluated(classify_features(test.image_features, class_text.detach().float().cpu()), test.labels)
