"""Downloads that survive dead links: mirrors, the manual route when every URL fails, and ``download --from PATH``.

Everything runs against a local HTTP server and a tiny generated dataset in SUN397's layout
(``sun397/SUN397/<letter>/<category>/sun_*.jpg`` + ``split_zhou_SUN397.json``), under the real SUN397 recipe
with its URLs pointed at 127.0.0.1 and its class count shrunk to the fixture's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from prompt_ot.cli import main as cli_main
from prompt_ot.data import registry
from prompt_ot.data.download import (
    FROM_KEY,
    DownloadFailed,
    FetchSettings,
    best_image_folder,
    dataset_is_complete,
    download_dataset,
    provide_dataset,
)
from prompt_ot.data.registry import dataset_spec
from prompt_ot.errors import UserError
from tests.support.data import archive_folder, make_fixture
from tests.support.http_files import LocalServer, serving

FAST = FetchSettings(timeout=5, retries=1, backoff=0)
ARCHIVE = "/princeton/SUN397.tar.gz"  # answers 404, as the real one does since 2025
MIRROR = "/mirror/SUN397.tar.gz"
SPLIT = "/drive/split_zhou_SUN397.json"
SPLIT_FILE = "split_zhou_SUN397.json"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _quiet(_line: str) -> None:
    pass


@pytest.fixture
def server():
    with serving() as srv:
        yield srv


@pytest.fixture
def copy(tmp_path) -> dict:
    """A SUN397-like dataset: its folder (images + split file), the split, the original-style archive's bytes."""
    staging = tmp_path / "elsewhere"
    split = make_fixture("sun397", staging, num_classes=3)
    images = staging / "sun397" / "SUN397"
    (images / "z" / "zoo").mkdir(parents=True)
    (images / "z" / "zoo" / "sun_not_listed.jpg").write_bytes(b"an image the split does not list")
    (tmp_path / "made").mkdir()
    archive = archive_folder(images, tmp_path / "made" / "SUN397.tar.gz", prefix="SUN397/")
    listed = sorted({it.relpath for items in split.values() for it in items})
    return {
        "folder": staging / "sun397",
        "images": images,
        "split": split,
        "listed": listed,
        "split_bytes": (staging / "sun397" / SPLIT_FILE).read_bytes(),
        "archive": archive.read_bytes(),
    }


def _recipe(server: LocalServer, *, sha256: str | None, mirrors: tuple[str, ...] = (MIRROR,)) -> registry.DatasetSpec:
    """The real SUN397 recipe with its URLs on the local server and the fixture's class count."""
    real = dataset_spec("sun397")
    return dataclasses.replace(
        real,
        sources=(
            dataclasses.replace(
                real.sources[0], url=server.url(ARCHIVE), mirrors=tuple(map(server.url, mirrors)), sha256=sha256
            ),
            dataclasses.replace(real.sources[1], url=server.url(SPLIT), mirrors=()),
        ),
        extra={**real.extra, "num_classes": 3},
    )


def _register(monkeypatch, spec: registry.DatasetSpec) -> None:
    monkeypatch.setitem(registry._load_registry(), "sun397", spec)


def _cli(capsys, *words) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli_main([str(w) for w in words])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error(rc: int, err: str, *words: str) -> None:
    """A non-zero exit, no traceback, one ``error:`` message, which contains every word."""
    assert rc != 0, err
    assert "Traceback" not in err, err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1, err
    for word in words:
        assert word in err, f"{word!r} missing from: {err}"


def _snapshot(top: Path) -> dict[str, bytes | None]:
    """Every path below ``top``: a file's bytes, None for a folder."""
    if not top.exists():
        return {}
    return {p.relative_to(top).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(top.rglob("*"))}


def _assert_laid_out(copy: dict, root: Path) -> None:
    """Complete, every listed image in place with its bytes, the split file there, files recorded, no leftovers."""
    spec = dataset_spec("sun397")
    assert dataset_is_complete(spec, root)
    images = root / "sun397" / "SUN397"
    for relpath in copy["listed"]:
        assert (images / relpath).read_bytes() == (copy["images"] / relpath).read_bytes()
    assert (images / "z" / "zoo" / "sun_not_listed.jpg").is_file()  # the whole folder, not only what is listed
    assert (root / "sun397" / SPLIT_FILE).read_bytes() == copy["split_bytes"]
    record = json.loads((root / "sun397/.prompt_ot/files.json").read_text())
    first = f"SUN397/{copy['listed'][0]}"
    assert record[first]["sha256"] == _sha((images / copy["listed"][0]).read_bytes())
    assert record[SPLIT_FILE]["sha256"] == _sha(copy["split_bytes"])
    assert [p.name for p in root.iterdir()] == ["sun397"], "a building folder was left behind"


# ------------------------------------------------------------------ mirrors and the manual route


def test_a_dead_primary_url_falls_back_to_the_mirror(server, copy, tmp_path):
    server.files[MIRROR] = copy["archive"]
    server.files[SPLIT] = copy["split_bytes"]
    spec = _recipe(server, sha256=_sha(copy["archive"]))
    root = tmp_path / "data"
    report = download_dataset(spec, root, settings=FAST, log=_quiet)
    assert report is not None and report.ok and dataset_is_complete(spec, root)
    assert server.paths[:2] == [ARCHIVE, MIRROR]  # the 404 first, then the mirror
    state = json.loads((root / "sun397/.prompt_ot/checksums.json").read_text())
    assert state["SUN397.tar.gz"]["url"] == server.url(MIRROR)
    assert state["SUN397.tar.gz"]["sha256"] == _sha(copy["archive"]) and state["SUN397.tar.gz"]["pinned"]
    _assert_laid_out(copy, root)


def test_a_file_without_a_known_checksum_gets_its_sha256_recorded_at_first_download(server, copy, tmp_path):
    """Nothing pinned (archive nor split file): both digests are recorded when fetched, kept after the archive is
    unpacked and deleted, and copied into the completion marker."""
    server.files[ARCHIVE] = copy["archive"]
    server.files[SPLIT] = copy["split_bytes"]
    spec = _recipe(server, sha256=None, mirrors=())
    root = tmp_path / "data"
    download_dataset(spec, root, settings=FAST, log=_quiet)
    state = json.loads((root / "sun397/.prompt_ot/checksums.json").read_text())
    assert state["SUN397.tar.gz"] | {"done": True} == {
        "sha256": _sha(copy["archive"]),
        "bytes": len(copy["archive"]),
        "url": server.url(ARCHIVE),
        "pinned": False,
        "done": True,
    }
    assert state[SPLIT_FILE]["sha256"] == _sha(copy["split_bytes"]) and state[SPLIT_FILE]["pinned"] is False
    assert not list((root / "sun397").rglob("SUN397.tar.gz"))  # unpacked and deleted; its digest stays
    marker = json.loads((root / "sun397/.prompt_ot/complete.json").read_text())
    assert marker["checksums"]["SUN397.tar.gz"]["sha256"] == _sha(copy["archive"])


def test_when_every_url_fails_the_error_gives_the_manual_steps_and_nothing_is_left(
    server, copy, tmp_path, monkeypatch, capsys
):
    spec = _recipe(server, sha256=_sha(copy["archive"]))
    _register(monkeypatch, spec)
    root = tmp_path / "data"
    with pytest.raises(DownloadFailed) as info:
        download_dataset(spec, root, settings=FAST, log=_quiet)
    message = str(info.value)
    rc, _, err = _cli(capsys, "download", "sun397", "--root", root, "--retries", "1")
    expected_command = f"python -m prompt_ot download sun397 --from PATH --root {root}"
    for text in (message, err):
        _one_error(
            rc,
            "error: " + text if text is message else text,
            "could not download SUN397.tar.gz",
            f"{server.url(ARCHIVE)}: HTTP 404",
            f"{server.url(MIRROR)}: HTTP 404",
            "sun397 needs manual steps",
            "opendatalab.com",
            "Kaggle",
            _sha(copy["archive"]),  # the pinned sha256 of the original archive, to compare a copy with
            expected_command,
        )
    assert rc == 2
    assert not dataset_is_complete(spec, root)
    assert not (root / "sun397").exists(), "the failed download left its folder behind"
    assert not [p for p in root.rglob("*") if p.is_file()]


def test_the_real_recipe_names_the_original_archive_and_its_checksum(tmp_path):
    from prompt_ot.data.download import manual_instructions

    spec = dataset_spec("sun397")
    text = manual_instructions(spec, tmp_path)
    assert spec.sources[0].sha256 in text and "SUN397.tar.gz" in text
    assert f"python -m prompt_ot download sun397 --from PATH --root {tmp_path}" in text
    assert "{" not in text  # every placeholder filled


# ------------------------------------------------------------------ --from


def _nested_zip(copy: dict, tmp_path: Path) -> Path:
    """A repacked archive (Kaggle style): another name, no known checksum, the images one level deeper."""
    (tmp_path / "download").mkdir(exist_ok=True)
    return archive_folder(copy["images"], tmp_path / "download" / "archive.zip", prefix="archive/SUN397/")


def _given(kind: str, copy: dict, tmp_path: Path) -> Path:
    (tmp_path / "download").mkdir(exist_ok=True)
    if kind == "original archive":
        path = tmp_path / "download" / "SUN397.tar.gz"
        path.write_bytes(copy["archive"])
        return path
    if kind == "dataset folder":  # the images and the split file, as another machine holds them
        return copy["folder"]
    if kind == "renamed folder":
        path = tmp_path / "download" / "sun397_images"
        shutil.copytree(copy["images"], path)
        return path
    if kind == "nested folder":
        path = tmp_path / "download" / "unzipped"
        shutil.copytree(copy["images"], path / "archive" / "SUN397")
        return path
    if kind == "nested zip":
        return _nested_zip(copy, tmp_path)
    raise KeyError(kind)


@pytest.mark.parametrize(
    "kind", ["original archive", "dataset folder", "renamed folder", "nested folder", "nested zip"]
)
def test_from_lays_out_a_copy_obtained_elsewhere(server, copy, tmp_path, monkeypatch, capsys, kind):
    server.files[SPLIT] = copy["split_bytes"]  # no archive served: the copy replaces it
    spec = _recipe(server, sha256=_sha(copy["archive"]))
    _register(monkeypatch, spec)
    path = _given(kind, copy, tmp_path)
    before = _snapshot(path) if path.is_dir() else path.read_bytes()
    root = tmp_path / "data"
    rc, out, err = _cli(capsys, "download", "sun397", "--from", path, "--root", root, "--retries", "1")
    assert rc == 0, err
    _assert_laid_out(copy, root)
    assert (_snapshot(path) if path.is_dir() else path.read_bytes()) == before, "the copy given was changed"
    assert ARCHIVE not in server.paths and MIRROR not in server.paths
    # the split file comes from the copy when it holds one, else from the recipe's URL
    assert server.paths == ([] if kind == "dataset folder" else [SPLIT])
    state = json.loads((root / "sun397/.prompt_ot/checksums.json").read_text())
    given = state[FROM_KEY]
    assert given["path"] == str(path.resolve())
    if path.is_file():
        assert given["kind"] == "archive" and given["sha256"] == _sha(path.read_bytes())
        assert given["pinned"] is (kind == "original archive")
        assert ("SUN397.tar.gz" in state) is (kind == "original archive")
    else:
        assert given["kind"] == "folder" and given["hard_links"] + given["copied"] == len(copy["listed"]) + 1
        placed = root / "sun397" / "SUN397" / copy["listed"][0]
        original = next(p for p in path.rglob(copy["listed"][0].rsplit("/", 1)[-1]))
        if given["hard_links"]:  # a hard link where the file system allows it: the same file, no second copy
            assert os.stat(placed).st_ino == os.stat(original).st_ino
    assert "complete (from" in out
    marker = json.loads((root / "sun397/.prompt_ot/complete.json").read_text())
    assert marker["checksums"][FROM_KEY] == given
    # a second run has nothing to do; --force lays the copy out again
    rc, out, _ = _cli(capsys, "download", "sun397", "--from", path, "--root", root)
    assert rc == 0 and "already complete" in out
    rc, _, err = _cli(capsys, "download", "sun397", "--from", path, "--root", root, "--force", "--retries", "1")
    assert rc == 0, err
    _assert_laid_out(copy, root)


def test_from_an_archive_with_another_sha256_is_refused_unless_no_verify(server, copy, tmp_path, monkeypatch, capsys):
    server.files[SPLIT] = copy["split_bytes"]
    pinned = _sha(b"the bytes of the original archive")
    spec = _recipe(server, sha256=pinned)
    _register(monkeypatch, spec)
    path = _given("original archive", copy, tmp_path)  # named SUN397.tar.gz, but not the pinned bytes
    root = tmp_path / "data"
    rc, _, err = _cli(capsys, "download", "sun397", "--from", path, "--root", root)
    _one_error(rc, err, str(path), _sha(copy["archive"]), pinned, "differs", "--no-verify")
    assert not root.exists(), "a refused copy left something under --root"
    rc, _, err = _cli(capsys, "download", "sun397", "--from", path, "--root", root, "--no-verify")
    assert rc == 0, err
    _assert_laid_out(copy, root)
    given = json.loads((root / "sun397/.prompt_ot/checksums.json").read_text())[FROM_KEY]
    assert given["sha256"] == _sha(copy["archive"]) and given["pinned"] is False


def _earlier_root(tmp_path: Path) -> Path:
    """A data root holding a complete other dataset and an unfinished SUN397 folder (a partial download)."""
    root = tmp_path / "data"
    make_fixture("dtd", root, num_classes=3)
    part = root / "sun397" / ".prompt_ot" / "downloads" / "SUN397.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"the first bytes of a download")
    return root


def test_from_a_folder_missing_listed_images_is_refused_and_names_them(server, copy, tmp_path, monkeypatch, capsys):
    server.files[SPLIT] = copy["split_bytes"]
    _register(monkeypatch, _recipe(server, sha256=None))
    path = _given("renamed folder", copy, tmp_path)
    gone = copy["listed"][1], copy["listed"][-1]
    for relpath in gone:
        (path / relpath).unlink()
    root = _earlier_root(tmp_path)
    before = _snapshot(root)
    rc, out, err = _cli(capsys, "download", "sun397", "--from", path, "--root", root)
    _one_error(rc, err, str(path), f"{len(copy['listed']) - 2} of the {len(copy['listed'])}", "2 are missing", *gone)
    assert all(f"missing: {relpath}" in out for relpath in gone)
    assert _snapshot(root) == before, "a refused copy changed the data root"


def test_from_a_copy_that_holds_none_of_the_listed_images_says_what_was_expected_and_found(
    server, copy, tmp_path, monkeypatch, capsys
):
    server.files[SPLIT] = copy["split_bytes"]
    _register(monkeypatch, _recipe(server, sha256=None))
    path = tmp_path / "download" / "sun397-50-50"
    for name in ("train/abbey/1.jpg", "test/abbey/2.jpg"):  # re-sorted: the original paths are lost
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(b"x")
    (path / "README.txt").write_text("re-split copy")
    root = _earlier_root(tmp_path)
    before = _snapshot(root)
    rc, _, err = _cli(capsys, "download", "sun397", "--from", path, "--root", root)
    _one_error(rc, err, str(path), "holds none of the images", copy["listed"][0], "README.txt, test/, train/")
    assert _snapshot(root) == before
    # the same as an archive: its top-level entries are named the same way
    archive = archive_folder(path, tmp_path / "download" / "sun397-50-50.zip")
    rc, _, err = _cli(capsys, "download", "sun397", "--from", archive, "--root", root)
    _one_error(rc, err, str(archive), "holds none of the images", "README.txt, test/, train/")
    assert _snapshot(root) == before
    # a folder holding the archive rather than its contents: the message says to give the archive itself
    rc, _, err = _cli(capsys, "download", "sun397", "--from", archive.parent, "--root", root)
    _one_error(rc, err, "to use the archive sun397-50-50.zip, give its own path to --from")
    assert _snapshot(root) == before


def test_from_a_path_that_does_not_exist_or_is_no_archive(server, tmp_path, monkeypatch, capsys):
    _register(monkeypatch, _recipe(server, sha256=None))
    root = tmp_path / "data"
    missing = tmp_path / "nowhere" / "SUN397.tar.gz"
    rc, _, err = _cli(capsys, "download", "sun397", "--from", missing, "--root", root)
    _one_error(rc, err, f"--from {missing}: no such file or folder", "archive")
    page = tmp_path / "SUN397.tar.gz"
    page.write_text("<html>Sign in to download</html>")
    rc, _, err = _cli(capsys, "download", "sun397", "--from", page, "--root", root)
    _one_error(rc, err, f"--from {page} is neither a zip nor a tar archive")
    assert not root.exists() and server.paths == []


def test_from_takes_one_dataset_and_not_with_check(tmp_path, capsys):
    rc, _, err = _cli(capsys, "download", "sun397", "dtd", "--from", tmp_path, "--root", tmp_path / "data")
    _one_error(rc, err, "--from lays out one dataset")
    rc, _, err = _cli(capsys, "download", "sun397", "--from", tmp_path, "--root", tmp_path / "data", "--check")
    _one_error(rc, err, "--from cannot be combined with --check")


def test_from_reuses_a_split_file_downloaded_earlier_and_keeps_the_folder_state(server, copy, tmp_path):
    """No network needed when the split file is already in the dataset folder; a partial download stays."""
    spec = _recipe(server, sha256=None)
    root = _earlier_root(tmp_path)
    (root / "sun397" / SPLIT_FILE).write_bytes(copy["split_bytes"])
    path = _given("nested folder", copy, tmp_path)
    lines: list[str] = []
    provide_dataset(spec, root, path, settings=FAST, log=lines.append)
    assert dataset_is_complete(spec, root) and server.paths == []
    assert (root / "sun397/.prompt_ot/downloads/SUN397.tar.gz.part").read_bytes() == b"the first bytes of a download"
    assert (root / "dtd").is_dir()
    assert any("'s images: " in line and "archive/SUN397" in line for line in lines)


def test_from_refuses_a_data_root_inside_the_copy(server, copy, tmp_path):
    spec = _recipe(server, sha256=None)
    path = _given("renamed folder", copy, tmp_path)
    with pytest.raises(UserError, match="lies inside --from"):
        provide_dataset(spec, path / "data", path, settings=FAST, log=_quiet)
    assert not (path / "data").exists()


def test_best_image_folder_prefers_the_most_matches_then_the_shallowest():
    listed = ["a/abbey/1.jpg", "a/abbey/2.jpg", "b/bar/3.jpg"]
    files = ["x/a/abbey/1.jpg", "deep/SUN397/a/abbey/1.jpg", "deep/SUN397/a/abbey/2.jpg", "deep/SUN397/b/bar/3.jpg"]
    assert best_image_folder(files, listed) == ("deep/SUN397", 3)
    assert best_image_folder(["a/abbey/1.jpg", "copy/a/abbey/1.jpg"], listed) == ("", 1)
    assert best_image_folder(["train/abbey/1.jpg"], listed) == (None, 0)


def test_download_help_documents_from(capsys):
    with pytest.raises(SystemExit):
        cli_main(["download", "--help"])
    out = capsys.readouterr().out
    assert "--from PATH" in out and "hard-linked" in out and "copied" in out


def test_a_nested_zip_with_an_escaping_member_is_refused(server, copy, tmp_path):
    """--from reuses the download's safe unpacking: a member that would land outside is refused."""
    spec = _recipe(server, sha256=None)
    path = _nested_zip(copy, tmp_path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("../../escaped.txt", b"x")
    root = tmp_path / "data"
    with pytest.raises(UserError, match="refusing to unpack archive.zip"):
        provide_dataset(spec, root, path, settings=FAST, log=_quiet)
    assert not root.exists() and not list(tmp_path.rglob("escaped.txt"))
