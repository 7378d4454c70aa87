"""Base/novel class subsets, few-shot sampling, manifests and the `split` command."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from prompt_ot.cli import main
from prompt_ot.data import fewshot
from prompt_ot.data.fewshot import (
    build_manifest,
    ensure_manifest,
    manifest_text,
    read_manifest,
    sample_fewshot,
    write_manifest,
)
from prompt_ot.data.registry import DatasetSpec, Item, read_coop_split, write_coop_split
from prompt_ot.data.splits import subsample_classes
from prompt_ot.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def make_split(class_sizes: dict[str, int], n_val: int = 6, n_test: int = 3) -> dict[str, list[Item]]:
    """A split with the given number of training items per class (class i has label i)."""
    split = {"train": [], "val": [], "test": []}
    for label, (name, n_train) in enumerate(class_sizes.items()):
        for part, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            split[part] += [Item(f"{name}/{part}_{k:03d}.jpg", label, name) for k in range(n)]
    return split


def write_files(root: Path, split) -> None:
    """Give every item a file whose size is unique (so recorded sizes can be checked)."""
    for items in split.values():
        for it in items:
            path = root / it.relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * (len(it.relpath) * 3 + it.label))


# ----------------------------------------------------------------------------- base / novel


@pytest.mark.parametrize("n_classes, n_base", [(5, 3), (6, 3), (1, 1), (11, 6)])
def test_base_novel_partition_and_relabelling(n_classes, n_base):
    names = [f"class{c}" for c in range(n_classes)]
    split = make_split({name: 2 for name in names})
    # shuffle the items: the partition follows labels, not input order
    for items in split.values():
        random.Random(0).shuffle(items)
    base, novel = subsample_classes(split, "base"), subsample_classes(split, "novel")
    for part in ("train", "val", "test"):
        assert {it.classname for it in base[part]} == set(names[:n_base])
        assert {it.classname for it in novel[part]} == set(names[n_base:])
        assert len(base[part]) + len(novel[part]) == len(split[part])
        # relabelled from 0, and the class name follows its old label's order
        for it in base[part]:
            assert it.label == names.index(it.classname)
        for it in novel[part]:
            assert it.label == names.index(it.classname) - n_base


def test_subset_all_is_the_split_and_unknown_subset_lists_the_known():
    split = make_split({"a": 2, "b": 2, "c": 1})
    assert subsample_classes(split, "all") == split
    with pytest.raises(UserError, match="unknown subset 'basee'.*all, base, novel"):
        subsample_classes(split, "basee")


def test_subsets_with_gaps_in_labels_follow_sorted_labels():
    split = {"train": [Item("p", 7, "seven"), Item("q", 2, "two"), Item("r", 4, "four")], "val": [], "test": []}
    assert subsample_classes(split, "base")["train"] == [Item("q", 0, "two"), Item("r", 1, "four")]
    assert subsample_classes(split, "novel")["train"] == [Item("p", 0, "seven")]


# ----------------------------------------------------------------------------- few-shot sampling


def dassl_restated(split_file: Path, subset: str, shots: int, seed: int) -> dict[str, list[tuple[str, int, str]]]:
    """The released code's few-shot images, restated from its description (not from our module): Dassl seeds
    Python's global ``random`` with the run's seed, groups each list by label in a defaultdict (order of first
    appearance), takes random.sample(items, K) per label (all items when fewer), first for train with K, then
    for val with min(K, 4); CoOp's subsample_classes then keeps the first ceil(n/2) sorted labels (base) or the
    rest (novel) and relabels them from 0."""
    import math
    from collections import defaultdict

    raw = json.loads(split_file.read_text())
    random.seed(seed)
    picked = {}
    for part, k in (("train", shots), ("val", min(shots, 4))):
        tracker = defaultdict(list)
        for relpath, label, classname in raw[part]:
            tracker[label].append((relpath, label, classname))
        picked[part] = []
        for items in tracker.values():
            picked[part].extend(random.sample(items, k) if len(items) >= k else items)
    if subset == "all":
        return picked
    labels = sorted({label for _, label, _ in picked["train"]})
    kept = labels[: math.ceil(len(labels) / 2)] if subset == "base" else labels[math.ceil(len(labels) / 2) :]
    relabel = {old: new for new, old in enumerate(kept)}
    return {part: [(p, relabel[y], c) for p, y, c in items if y in relabel] for part, items in picked.items()}


def interleaved_split(sizes: dict[str, int], seed: int = 0) -> dict[str, list[Item]]:
    """A split whose classes have the given training sizes, with labels interleaved in an order that is not
    sorted (the first item's label is not 0) and a validation list of other sizes."""
    rng = random.Random(seed)
    split = {"train": [], "val": [], "test": []}
    for label, (name, n) in enumerate(sizes.items()):
        split["train"] += [Item(f"{name}/tr_{k:03d}.jpg", label, name) for k in range(n)]
        split["val"] += [Item(f"{name}/va_{k:03d}.jpg", label, name) for k in range(2 + label % 5)]
        split["test"] += [Item(f"{name}/te_{k:03d}.jpg", label, name) for k in range(2)]
    for part in ("train", "val"):
        rng.shuffle(split[part])
    return split


# unequal sizes, one class with fewer than most K (3 images), one with exactly 16
SIZES = {"ant": 23, "bee": 3, "cat": 40, "dog": 16, "eel": 9, "fox": 31, "gnu": 17}


def test_the_synthetic_split_interleaves_labels_out_of_order():
    labels = [it.label for it in interleaved_split(SIZES)["train"]]
    first_seen = list(dict.fromkeys(labels))
    assert first_seen != sorted(first_seen)
    assert sum(a != b for a, b in zip(labels, labels[1:])) > len(labels) / 2  # labels alternate, not in runs


@pytest.mark.parametrize("subset", ["all", "base", "novel"])
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_the_dassl_sampler_selects_the_released_codes_images(tmp_path, subset, shots):
    split = interleaved_split(SIZES)
    write_files(tmp_path / "img", split)
    write_coop_split(tmp_path / "split.json", split)
    for seed in (1, 2, 3):
        random.seed(12345)  # our sampler owns its stream: global state must not matter
        manifest = build_manifest(
            read_coop_split(tmp_path / "split.json"), tmp_path / "img", "toy", subset, shots, seed
        )
        want = dassl_restated(tmp_path / "split.json", subset, shots, seed)
        assert manifest.sampler == "dassl"
        for part in ("train", "val"):
            got = [(e.relpath, e.label, e.classname) for e in getattr(manifest, part)]
            assert got == want[part], (part, seed)  # the same files, labels and order
        counts = Counter(e.classname for e in manifest.train)
        assert counts == {c: min(shots, n) for c, n in SIZES.items() if c in set(manifest.classnames)}


def test_base_and_novel_images_are_those_of_the_all_classes_selection(tmp_path):
    """Sampling runs over all classes first: the base images of a seed are the all-classes images of the base
    classes (as CoOp's few-shot cache file, keyed by shots and seed only, makes them)."""
    split = interleaved_split(SIZES)
    write_files(tmp_path / "img", split)
    every = build_manifest(split, tmp_path / "img", "toy", "all", 4, 2)
    base = build_manifest(split, tmp_path / "img", "toy", "base", 4, 2)
    novel = build_manifest(split, tmp_path / "img", "toy", "novel", 4, 2)
    base_names, novel_names = set(base.classnames), set(novel.classnames)
    assert [e.relpath for e in every.train if e.classname in base_names] == [e.relpath for e in base.train]
    assert [e.relpath for e in every.train if e.classname in novel_names] == [e.relpath for e in novel.train]


def test_the_dassl_sampler_follows_the_split_files_order(tmp_path):
    """Dassl's selection depends on the file's item order (a shuffled file gives other images), so the split
    file is read in order; the per_class sampler does not depend on it."""
    split = interleaved_split(SIZES)
    write_files(tmp_path / "img", split)
    shuffled = {k: random.Random(3).sample(v, len(v)) for k, v in split.items()}
    a = build_manifest(split, tmp_path / "img", "toy", "all", 4, 1)
    b = build_manifest(shuffled, tmp_path / "img", "toy", "all", 4, 1)
    assert {e.relpath for e in a.train} != {e.relpath for e in b.train}
    c = build_manifest(split, tmp_path / "img", "toy", "all", 4, 1, sampler="per_class")
    d = build_manifest(shuffled, tmp_path / "img", "toy", "all", 4, 1, sampler="per_class")
    assert c.train == d.train and c.sampler == "per_class"


def test_the_split_command_on_the_demos_digits_selects_the_released_codes_images(tmp_path, capsys):
    """Through the CLI, on the demo's real digits split (labels interleaved as scikit-learn orders them)."""
    from prompt_ot.data.registry import dataset_spec

    spec = dataset_spec("digits")
    root = tmp_path / "data"
    spec.prepare_fn(spec.dataset_dir(root))
    split_file = spec.dataset_dir(root) / spec.split_file
    for subset, shots, seed in (("base", 16, 1), ("novel", 4, 2), ("all", 1, 3)):
        out = tmp_path / f"{subset}_{shots}_{seed}.json"
        argv = [
            "split",
            "digits",
            "--root",
            str(root),
            "--subset",
            subset,
            "--shots",
            str(shots),
            "--seed",
            str(seed),
            "--out",
            str(out),
        ]
        assert main(argv) == 0
        assert "sampler dassl" in capsys.readouterr().out
        manifest = read_manifest(out)
        want = dassl_restated(split_file, subset, shots, seed)
        for part in ("train", "val"):
            assert [(e.relpath, e.label, e.classname) for e in getattr(manifest, part)] == want[part]


def test_per_class_sampler_exactly_k_per_class_or_all_when_fewer():
    split = make_split({"many": 40, "exact": 16, "few": 3, "one": 1})
    chosen = sample_fewshot(split["train"], 16, seed=1)
    counts = Counter(it.classname for it in chosen)
    assert counts == {"many": 16, "exact": 16, "few": 3, "one": 1}
    assert set(chosen) <= set(split["train"])
    assert len(set(chosen)) == len(chosen)


def test_per_class_sampling_ignores_input_order_and_global_random_state():
    items = make_split({f"c{i}": 30 for i in range(5)})["train"]
    random.seed(0)
    first = sample_fewshot(items, 4, seed=3)
    shuffled = list(items)
    random.Random(7).shuffle(shuffled)
    random.seed(12345)
    assert sample_fewshot(shuffled, 4, seed=3) == first
    assert sample_fewshot(items, 4, seed=4) != first


def test_sampling_is_spread_over_the_class_not_its_first_items():
    items = make_split({"c": 200})
    for sampler in ("dassl", "per_class"):
        picked = {
            e.relpath for seed in range(20) for e in fewshot.select_fewshot(items, "all", 4, seed, sampler)["train"]
        }
        assert len(picked) > 40, sampler  # 20 seeds x 4 shots drawn from 200 items


@pytest.mark.parametrize("shots, seed", [(0, 1), (-2, 1), (4, -1)])
def test_bad_shots_or_seed(shots, seed):
    with pytest.raises(UserError, match="shots|seed"):
        sample_fewshot([Item("a", 0, "a")], shots, seed)
    with pytest.raises(UserError, match="shots|seed"):
        fewshot.select_fewshot({"train": [Item("a", 0, "a")], "val": [], "test": []}, "all", shots, seed)


def test_unknown_sampler_lists_the_known():
    with pytest.raises(UserError, match="unknown few-shot sampler 'random'.*dassl, per_class"):
        fewshot.select_fewshot(make_split({"a": 3}), "all", 1, 1, sampler="random")


# ----------------------------------------------------------------------------- manifests


def test_manifest_is_byte_identical_for_the_same_parameters(tmp_path):
    split = make_split({f"c{i}": 25 for i in range(5)})
    write_files(tmp_path / "img", split)
    write_manifest(tmp_path / "a.json", build_manifest(split, tmp_path / "img", "toy", "base", 8, 1))
    random.seed(99)
    write_manifest(tmp_path / "b.json", build_manifest(split, tmp_path / "img", "toy", "base", 8, 1))
    write_manifest(tmp_path / "c.json", build_manifest(split, tmp_path / "img", "toy", "base", 8, 2))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()


def test_manifest_does_not_depend_on_the_hash_seed(tmp_path):
    split = make_split({f"c{i}": 25 for i in range(4)})
    write_files(tmp_path / "img", split)
    write_coop_split(tmp_path / "split.json", split)
    script = (
        "import sys; from pathlib import Path\n"
        "from prompt_ot.data.fewshot import build_manifest, manifest_text\n"
        "from prompt_ot.data.registry import read_coop_split\n"
        "root = Path(sys.argv[1])\n"
        "split = read_coop_split(root / 'split.json')\n"
        "sys.stdout.write(manifest_text(build_manifest(split, root / 'img', 'toy', 'all', 5, 3)))\n"
        "# per_class: even a set-ordered copy of the input (its order depends on the hash seed) gives one manifest\n"
        "split = {k: list(set(v)) for k, v in split.items()}\n"
        "sys.stdout.write(manifest_text(build_manifest(split, root / 'img', 'toy', 'all', 5, 3, 'per_class')))\n"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] and outputs[0].startswith("{")


def test_manifest_contents(tmp_path):
    split = make_split({"a": 20, "b": 2, "c": 20, "d": 20, "e": 20}, n_val=9)
    write_files(tmp_path / "img", split)
    manifest = build_manifest(split, tmp_path / "img", "toy", "base", 8, 1)
    assert manifest.classnames == ["a", "b", "c"]
    assert Counter(e.classname for e in manifest.train) == {"a": 8, "b": 2, "c": 8}
    assert Counter(e.classname for e in manifest.val) == {"a": 4, "b": 4, "c": 4}  # min(shots, 4)
    for entry in manifest.train + manifest.val:
        assert entry.size == (tmp_path / "img" / entry.relpath).stat().st_size
        assert entry.classname == manifest.classnames[entry.label]
    two_shot = build_manifest(split, tmp_path / "img", "toy", "novel", 2, 1)
    assert Counter(e.label for e in two_shot.val) == {0: 2, 1: 2}

    write_manifest(tmp_path / "m.json", manifest)
    raw = json.loads((tmp_path / "m.json").read_text())
    assert {k: raw[k] for k in ("format_version", "dataset", "subset", "shots", "seed", "sampler")} == {
        "format_version": 2,
        "dataset": "toy",
        "subset": "base",
        "shots": 8,
        "seed": 1,
        "sampler": "dassl",
    }
    assert raw["train"][0] == manifest.train[0]._asdict()
    assert read_manifest(tmp_path / "m.json") == manifest


def test_missing_image_is_named(tmp_path):
    split = make_split({"a": 3, "b": 3})
    write_files(tmp_path / "img", split)
    (tmp_path / "img" / "b" / "train_001.jpg").unlink()
    with pytest.raises(UserError, match=r"b/train_001\.jpg.*does not exist"):
        build_manifest(split, tmp_path / "img", "toy", "all", 16, 1)


def test_existing_manifest_is_reused_and_checked(tmp_path, monkeypatch):
    split = make_split({"a": 30, "b": 30})
    write_files(tmp_path / "img", split)
    path = tmp_path / "m.json"
    manifest, created = ensure_manifest(path, split, tmp_path / "img", "toy", "all", 4, 1)
    assert created
    # the second call must not sample again
    monkeypatch.setattr(fewshot, "select_fewshot", lambda *a, **k: pytest.fail("resampled"))
    again, created = ensure_manifest(path, split, tmp_path / "img", "toy", "all", 4, 1)
    assert not created and again == manifest
    with pytest.raises(UserError, match="written for .*'toy', 'all', 4, 1, 'dassl'.*not.*'toy', 'all', 4, 2"):
        ensure_manifest(path, split, tmp_path / "img", "toy", "all", 4, 2)
    with pytest.raises(UserError, match="written for .*'dassl'.*not.*'per_class'"):
        ensure_manifest(path, split, tmp_path / "img", "toy", "all", 4, 1, sampler="per_class")
    changed = tmp_path / "img" / manifest.train[0].relpath
    changed.write_bytes(b"different length")
    with pytest.raises(UserError, match=f"{changed.name}.*changed"):
        ensure_manifest(path, split, tmp_path / "img", "toy", "all", 4, 1)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: text.replace('"format_version": 2', '"format_version": 99'), "format version 99"),
        (lambda text: text.replace('"format_version": 2', '"format_version": 1'), "format version 1"),
        (lambda text: text.replace('"sampler": "dassl"', '"sampler": "coin"'), "'sampler'"),
        (lambda text: text.replace('"shots": 4', '"shots": "4"'), "'shots'"),
        (lambda text: text.replace('"subset": "all"', '"subset": "every"'), "'subset'"),
        (lambda text: text.replace('"label": 1', '"label": 7'), "bad train entry"),
        (lambda text: text.replace('"size": ', '"bytes": '), "bad train entry"),
        (lambda text: "[]", "not a JSON object"),
    ],
)
def test_corrupt_manifest_names_the_file(tmp_path, corrupt, message):
    split = make_split({"a": 10, "b": 10})
    write_files(tmp_path / "img", split)
    path = tmp_path / "manifest.json"
    write_manifest(path, build_manifest(split, tmp_path / "img", "toy", "all", 4, 1))
    path.write_text(corrupt(path.read_text()))
    with pytest.raises(UserError, match=message) as err:
        read_manifest(path)
    assert str(path) in str(err.value)


def test_manifest_text_round_trips_an_empty_part(tmp_path):
    split = make_split({"a": 3}, n_val=0)
    write_files(tmp_path / "img", split)
    manifest = build_manifest(split, tmp_path / "img", "toy", "all", 2, 1)
    assert manifest.val == []
    write_manifest(tmp_path / "m.json", manifest)
    assert json.loads(manifest_text(manifest))["val"] == []
    assert read_manifest(tmp_path / "m.json") == manifest


# ----------------------------------------------------------------------------- the split command


@pytest.fixture
def toy_dataset(tmp_path, monkeypatch):
    """A registered dataset 'toy' with a CoOp split file under <tmp>/data/toy."""
    from prompt_ot.data import registry

    spec = DatasetSpec(
        name="toy", folder="toy", template="a photo of a {}.", image_dir="images", split_file="split_zhou_Toy.json"
    )
    split = make_split({"cat": 20, "dog": 20, "owl": 20, "eel": 20, "ant": 20})
    folder = tmp_path / "data" / "toy"
    write_files(folder / "images", split)
    write_coop_split(folder / "split_zhou_Toy.json", split)
    monkeypatch.setattr(registry, "_REGISTRY", {"toy": spec})
    return tmp_path / "data", split


def test_split_command_writes_and_reuses(toy_dataset, tmp_path, capsys):
    root, split = toy_dataset
    out = tmp_path / "manifests" / "toy_base_16_1.json"
    argv = ["split", "toy", "--root", str(root), "--subset", "base", "--shots", "16", "--seed", "1", "--out", str(out)]
    assert main(argv) == 0
    manifest = read_manifest(out)
    assert manifest.classnames == ["cat", "dog", "owl"]
    assert Counter(e.label for e in manifest.train) == {0: 16, 1: 16, 2: 16}
    assert "wrote" in capsys.readouterr().out
    before = out.stat().st_mtime_ns
    assert main(argv) == 0
    assert "reused" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == before


def test_split_command_user_errors(toy_dataset, tmp_path, capsys):
    root, split = toy_dataset
    out = str(tmp_path / "m.json")
    assert main(["split", "toy", "--root", str(root), "--subset", "half", "--out", out]) == 2
    assert "unknown subset 'half'" in capsys.readouterr().err
    assert main(["split", "nope", "--root", str(root), "--out", out]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    missing = root / "toy" / "images" / split["train"][0].relpath
    missing.unlink()
    assert main(["split", "toy", "--root", str(root), "--out", out]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not Path(out).exists()
