"""Downloads against a local HTTP server: resume, checksums, mirrors, failures, safe unpacking, markers, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

from prompt_ot.cli import main as cli_main
from prompt_ot.data import registry
from prompt_ot.data.download import (
    FetchSettings,
    SourceFile,
    dataset_is_complete,
    download_dataset,
    extract_archive,
    fetch,
)
from prompt_ot.data.registry import dataset_spec
from prompt_ot.errors import UserError
from tests.support.data import archive_folder, make_fixture, png_bytes
from tests.support.http_files import LocalServer

FAST = FetchSettings(timeout=5, retries=3, backoff=0)
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every offset distinguishable


@pytest.fixture
def server():
    srv = LocalServer()
    yield srv
    srv.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _quiet(_line: str) -> None:
    pass


def _fetch(source, tmp_path):
    """``fetch`` of ``source`` to tmp_path/a.bin, partial files in tmp_path/parts, quickly and quietly."""
    return fetch(source, tmp_path / "a.bin", tmp_path / "parts", settings=FAST, log=_quiet)


def _fetch_a(server, tmp_path):
    """``_fetch`` of the server's /a.bin."""
    return _fetch(SourceFile(url=server.url("/a.bin"), filename="a.bin"), tmp_path)


# ------------------------------------------------------------------ fetching


def test_fetch_gives_the_bytes_and_their_sha256(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    source = SourceFile(url=server.url("/a.bin"), filename="a.bin", sha256=_sha(PAYLOAD))
    digest, url = _fetch(source, tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert digest == _sha(PAYLOAD) and url == source.url
    assert not (tmp_path / "parts" / "a.bin.part").exists()


def test_cut_connection_is_resumed_with_a_range_request(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.rules["/a.bin"] = {"cut_after": [300_000, 200_000]}
    source = SourceFile(url=server.url("/a.bin"), filename="a.bin", sha256=_sha(PAYLOAD))
    _fetch(source, tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/a.bin", None), ("/a.bin", "bytes=300000-"), ("/a.bin", "bytes=500000-")]


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.bin.part").write_bytes(PAYLOAD[:123_456])
    source = SourceFile(url=server.url("/a.bin"), filename="a.bin")
    digest, _ = _fetch(source, tmp_path)
    assert digest == _sha(PAYLOAD) and (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/a.bin", "bytes=123456-")]


def test_server_that_ignores_range_restarts_cleanly(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.rules["/a.bin"] = {"ignore_range": True}
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.bin.part").write_bytes(b"x" * 1000)
    _fetch_a(server, tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_raises_and_leaves_no_file(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.rules["/a.bin"] = {"body": PAYLOAD[:-1] + b"\x00"}
    source = SourceFile(url=server.url("/a.bin"), filename="a.bin", sha256=_sha(PAYLOAD))
    with pytest.raises(UserError, match=r"could not download a\.bin: .*sha256 .* differs .*--no-verify"):
        _fetch(source, tmp_path)
    assert not (tmp_path / "a.bin").exists()
    assert list((tmp_path / "parts").iterdir()) == []


def test_stale_partial_file_is_discarded_after_a_mismatch(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.bin.part").write_bytes(b"stale bytes from another version")
    source = SourceFile(url=server.url("/a.bin"), filename="a.bin", sha256=_sha(PAYLOAD))
    _fetch(source, tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/a.bin", None)


def test_404_names_the_url_and_what_to_do(server, tmp_path):
    source = SourceFile(url=server.url("/gone.tar.gz"), filename="gone.tar.gz")
    with pytest.raises(UserError) as info:
        fetch(source, tmp_path / "gone.tar.gz", tmp_path / "parts", settings=FAST, log=_quiet)
    assert server.url("/gone.tar.gz") in str(info.value) and "HTTP 404" in str(info.value)
    assert "save it as" in str(info.value)
    assert len(server.requests) == 1  # a 404 is not retried


def test_mirrors_are_tried_in_order(server, tmp_path):
    server.files["/mirror2/a.bin"] = PAYLOAD
    server.rules["/mirror1/a.bin"] = {"html": True}  # e.g. Google Drive's quota page
    source = SourceFile(
        url=server.url("/main/a.bin"),
        filename="a.bin",
        sha256=_sha(PAYLOAD),
        mirrors=(server.url("/mirror1/a.bin"), server.url("/mirror2/a.bin")),
    )
    _, url = _fetch(source, tmp_path)
    assert url == server.url("/mirror2/a.bin") and (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert [path for path, _ in server.requests] == ["/main/a.bin", "/mirror1/a.bin", "/mirror2/a.bin"]


def test_server_errors_are_retried_a_bounded_number_of_times(server, tmp_path):
    server.rules["/a.bin"] = {"status": 503}
    with pytest.raises(UserError, match="HTTP 503.*gave up after 3 attempts"):
        _fetch_a(server, tmp_path)
    assert len(server.requests) == 3


def test_unreachable_host_is_a_user_error(tmp_path):
    source = SourceFile(url="http://127.0.0.1:9/a.bin", filename="a.bin")  # discard port: refused
    with pytest.raises(UserError, match="connection failed"):
        fetch(source, tmp_path / "a.bin", tmp_path / "parts", settings=dataclasses.replace(FAST, retries=2), log=_quiet)


# ------------------------------------------------------------------ unpacking


def _tar_with(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _outside_files(tmp_path: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)


@pytest.mark.parametrize("bad", ["../evil.txt", "ok/../../evil.txt", "ABSOLUTE", "link-abs", "link-up", "hardlink"])
def test_tar_members_that_escape_are_refused(tmp_path, bad):
    dest = tmp_path / "dest"
    members = {
        "../evil.txt": [("../evil.txt", b"x")],
        "ok/../../evil.txt": [("ok/../../evil.txt", b"x")],
        "ABSOLUTE": [(str(tmp_path / "evil.txt"), b"x")],
        "link-abs": [_link("sneaky", str(tmp_path)), ("sneaky/evil.txt", b"x")],
        "link-up": [("a/fine.txt", b"ok"), _link("a/sneaky", "../.."), ("a/sneaky/evil.txt", b"x")],
        "hardlink": [_link("copy", "../../../etc/hostname", tarfile.LNKTYPE)],
    }[bad]
    archive = _tar_with(tmp_path / "bad.tar", members)
    with pytest.raises(UserError, match="refusing to unpack bad.tar: member '.*' .*delete"):
        extract_archive(archive, dest)
    assert _outside_files(tmp_path, {"dest", "bad.tar"}) == []
    assert not any(p.is_symlink() and not os.path.realpath(p).startswith(str(dest)) for p in dest.rglob("*"))


def test_a_chain_of_links_cannot_lead_out(tmp_path):
    """Each link stays inside by name, but the second is stored through the first one."""
    dest = tmp_path / "dest"
    archive = _tar_with(
        tmp_path / "chain.tar",
        [
            ("sub/keep.txt", b"ok"),
            _link("sub/up", ".."),
            _link("sub/up/out", ".."),
            ("sub/up/out/evil.txt", b"x"),
        ],
    )
    with pytest.raises(UserError, match="refusing to unpack chain.tar"):
        extract_archive(archive, dest)
    assert _outside_files(tmp_path, {"dest", "chain.tar"}) == []


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "symlink"])
def test_zip_members_that_escape_are_refused_before_anything_is_written(tmp_path, bad):
    dest = tmp_path / "dest"
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good/first.txt", b"written only if the whole archive is safe")
        if bad == "symlink":
            info = zipfile.ZipInfo("good/link")
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "../../..")
        else:
            zf.writestr(bad, b"x")
    with pytest.raises(UserError, match="refusing to unpack bad.zip"):
        extract_archive(archive, dest)
    assert not (dest / "good" / "first.txt").exists()
    assert _outside_files(tmp_path, {"dest", "bad.zip"}) == []


def test_member_prefix_and_dest_relocate_members(tmp_path):
    src = tmp_path / "src"
    for rel in ("top/images/a/1.jpg", "top/meta/classes.txt", "elsewhere/skip.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    for name in ("x.tar.gz", "x.zip"):
        dest = tmp_path / f"dest-{name}"
        archive = archive_folder(src, tmp_path / name)
        assert extract_archive(archive, dest, member_prefix="top/", dest="data/") == 2
        assert (dest / "data/images/a/1.jpg").read_bytes() == b"top/images/a/1.jpg"
        assert (dest / "data/meta/classes.txt").exists()
        assert not (dest / "elsewhere").exists() and not (dest / "data/elsewhere").exists()


def test_a_file_that_is_no_archive_is_a_user_error(tmp_path):
    page = tmp_path / "split.tar.gz"
    page.write_text("<html>Sign in to continue</html>")
    with pytest.raises(UserError, match=r"split.tar.gz is neither a zip nor a tar archive.*delete it"):
        extract_archive(page, tmp_path / "dest")


def test_links_inside_the_folder_are_kept(tmp_path):
    archive = _tar_with(
        tmp_path / "ok.tar",
        [("real/a.txt", b"A"), _link("alias", "real"), _link("copy.txt", "real/a.txt", tarfile.LNKTYPE)],
    )
    extract_archive(archive, tmp_path / "dest")
    assert (tmp_path / "dest/alias/a.txt").read_bytes() == b"A"
    assert (tmp_path / "dest/copy.txt").read_bytes() == b"A"


# ------------------------------------------------------------------ whole datasets


def _serve_eurosat(server: LocalServer, tmp_path: Path) -> registry.DatasetSpec:
    """EuroSAT's real definition with its sources pointed at the local server (zip + split file)."""
    staging = tmp_path / "staging"
    make_fixture("eurosat", staging, num_classes=10)
    zip_path = archive_folder(staging / "eurosat" / "2750", tmp_path / "EuroSAT.zip", prefix="2750/")
    server.files["/EuroSAT.zip"] = zip_path.read_bytes()
    server.files["/split.json"] = (staging / "eurosat" / "split_zhou_EuroSAT.json").read_bytes()
    real = dataset_spec("eurosat")
    return dataclasses.replace(
        real,
        sources=(
            dataclasses.replace(
                real.sources[0], url=server.url("/EuroSAT.zip"), mirrors=(), sha256=_sha(server.files["/EuroSAT.zip"])
            ),
            dataclasses.replace(real.sources[1], url=server.url("/split.json"), mirrors=()),
        ),
    )


def test_download_fetches_unpacks_checks_and_marks(server, tmp_path, monkeypatch):
    spec = _serve_eurosat(server, tmp_path)
    root = tmp_path / "data"
    report = download_dataset(spec, root, settings=FAST, log=_quiet)
    assert report.ok and report.num_classes == 10 and report.counts == {"train": 20, "val": 10, "test": 10}
    assert dataset_is_complete(spec, root)
    split = spec.load_split(root)
    assert all((spec.image_root(root) / it.relpath).read_bytes() == png_bytes() for it in split["test"])
    checksums = json.loads((root / "eurosat/.prompt_ot/checksums.json").read_text())
    assert checksums["split_zhou_EuroSAT.json"]["sha256"] == _sha(server.files["/split.json"])
    assert checksums["split_zhou_EuroSAT.json"]["pinned"] is False and checksums["EuroSAT.zip"]["done"]
    assert not (root / "eurosat/.prompt_ot/downloads/EuroSAT.zip").exists()  # archive removed after unpacking

    def no_network(*args, **kwargs):
        raise AssertionError("a complete dataset must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    lines: list[str] = []
    assert download_dataset(spec, root, settings=FAST, log=lines.append) is None
    assert "already complete" in lines[0]


def test_failed_download_leaves_no_marker_and_resumes_later(server, tmp_path):
    spec = _serve_eurosat(server, tmp_path)
    split_bytes = server.files.pop("/split.json")
    root = tmp_path / "data"
    with pytest.raises(UserError, match="split_zhou_EuroSAT.json.*HTTP 404"):
        download_dataset(spec, root, settings=FAST, log=_quiet)
    assert not dataset_is_complete(spec, root)
    assert not (root / "eurosat/.prompt_ot/complete.json").exists()
    server.files["/split.json"] = split_bytes
    server.requests.clear()
    download_dataset(spec, root, settings=FAST, log=_quiet)
    assert dataset_is_complete(spec, root)
    assert [path for path, _ in server.requests] == ["/split.json"]  # the unpacked zip is not fetched again


def test_nested_archive_is_unpacked_like_caltech(server, tmp_path):
    staging = tmp_path / "staging"
    make_fixture("caltech101", staging, num_classes=100, per_split=(1, 0, 1))
    inner = archive_folder(
        staging / "caltech-101" / "101_ObjectCategories",
        tmp_path / "101_ObjectCategories.tar.gz",
        prefix="101_ObjectCategories/",
    )
    outer = tmp_path / "caltech-101.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, "caltech-101/101_ObjectCategories.tar.gz")
        zf.writestr("caltech-101/show_annotation.m", "% not needed")
    server.files["/caltech-101.zip"] = outer.read_bytes()
    server.files["/split.json"] = (staging / "caltech-101" / "split_zhou_Caltech101.json").read_bytes()
    real = dataset_spec("caltech101")
    spec = dataclasses.replace(
        real,
        sources=(
            dataclasses.replace(real.sources[0], url=server.url("/caltech-101.zip")),
            dataclasses.replace(real.sources[1], url=server.url("/split.json"), mirrors=()),
        ),
    )
    root = tmp_path / "data"
    download_dataset(spec, root, settings=FAST, log=_quiet)
    assert dataset_is_complete(spec, root)
    assert (root / "caltech-101/101_ObjectCategories/accordion/image_0001.jpg").is_file()
    assert not (root / "caltech-101/101_ObjectCategories.tar.gz").exists()


def test_manual_dataset_prints_steps_and_fails_until_the_folder_is_there(tmp_path, capsys):
    lines: list[str] = []
    with pytest.raises(UserError, match="imagenet .* is not complete.*--check"):
        download_dataset(dataset_spec("imagenet"), tmp_path, log=lines.append)
    text = "\n".join(lines)
    assert "image-net.org" in text and str(tmp_path / "imagenet" / "images" / "train") in text
    assert not dataset_is_complete(dataset_spec("imagenet"), tmp_path)


def test_prepare_fn_builds_the_folder_instead_of_fetching(tmp_path):
    calls: list[Path] = []

    def prepare(folder: Path) -> None:
        calls.append(folder)
        make_fixture("eurosat", folder.parent, num_classes=10)

    spec = dataclasses.replace(dataset_spec("eurosat"), sources=(), prepare_fn=prepare, name="demo_eurosat")
    download_dataset(spec, tmp_path, log=_quiet)
    download_dataset(spec, tmp_path, log=_quiet)
    assert calls == [tmp_path / "eurosat"]
    assert dataset_is_complete(spec, tmp_path) and not dataset_is_complete(dataset_spec("eurosat"), tmp_path)


# ------------------------------------------------------------------ the command


def test_cli_check_validates_a_hand_made_folder(tmp_path, capsys):
    expected = make_fixture("eurosat", tmp_path, num_classes=10)
    missing = expected["val"][0].relpath
    (tmp_path / "eurosat" / "2750" / missing).unlink()
    assert cli_main(["download", "eurosat", "--root", str(tmp_path), "--check"]) == 2
    captured = capsys.readouterr()
    assert missing in captured.out and "not complete" in captured.err
    assert not dataset_is_complete(dataset_spec("eurosat"), tmp_path)
    (tmp_path / "eurosat" / "2750" / missing).write_bytes(png_bytes())
    assert cli_main(["download", "eurosat", "--root", str(tmp_path), "--check"]) == 0
    assert dataset_is_complete(dataset_spec("eurosat"), tmp_path)
    assert cli_main(["download", "--list", "--root", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("eurosat") and line.endswith("complete") for line in listing.splitlines())


def test_cli_downloads_through_the_registry(server, tmp_path, monkeypatch):
    monkeypatch.setitem(registry._load_registry(), "eurosat", _serve_eurosat(server, tmp_path))
    assert cli_main(["download", "eurosat", "--root", str(tmp_path / "data"), "--retries", "2"]) == 0
    assert dataset_is_complete(dataset_spec("eurosat"), tmp_path / "data")


def test_cli_rejects_unknown_names_before_fetching_anything(tmp_path, capsys):
    assert cli_main(["download", "eurosat", "imagenet_z", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'imagenet_z'" in capsys.readouterr().err
    assert not (tmp_path / "eurosat").exists()


def test_cli_verify_lists_missing_extra_and_changed_files_against_the_record(tmp_path, capsys):
    """`download --check` records every file (size, sha256); `--verify` compares the folder with that record and
    the split file, listing what is missing, extra or changed, all of it, not the first only."""
    expected = make_fixture("eurosat", tmp_path, num_classes=10)
    root = ["--root", str(tmp_path)]
    assert cli_main(["download", "eurosat", *root, "--verify"]) == 2  # completed before any record: nothing to compare
    assert "--check" in capsys.readouterr().err
    assert cli_main(["download", "eurosat", *root, "--check"]) == 0
    record = json.loads((tmp_path / "eurosat/.prompt_ot/files.json").read_text())
    images = tmp_path / "eurosat" / "2750"
    first = expected["train"][0].relpath
    assert record[f"2750/{first}"]["sha256"] == _sha((images / first).read_bytes())
    assert cli_main(["download", "eurosat", *root, "--verify"]) == 0
    assert "all " in capsys.readouterr().out
    gone, changed = expected["test"][0].relpath, expected["train"][1].relpath
    (images / gone).unlink()
    (images / changed).write_bytes(png_bytes(colour=(1, 2, 3)))
    (images / "stray file.png").write_bytes(b"x")
    assert cli_main(["download", "eurosat", *root, "--verify"]) == 2
    captured = capsys.readouterr()
    assert f"  missing: 2750/{gone}" in captured.out and f"  changed: 2750/{changed}" in captured.out
    assert "  extra: 2750/stray file.png" in captured.out
    assert f"  listed by the split, not there: {gone}" in captured.out
    assert "1 missing, 1 extra, 1 changed, 1 listed by the split but not there" in captured.err
