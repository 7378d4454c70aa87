"""Fetch a dataset's files, verify them, unpack archives safely and mark the folder complete.

``download_dataset(spec, root)`` fills ``<root>/<spec.folder>``: each ``Source`` is fetched over
HTTP(S) with resume (a ``.part`` file and a ``Range`` request), bounded retries and mirrors tried in
order; its sha256 is checked when the dataset definition pins one and recorded in
``<folder>/.prompt_ot/checksums.json`` either way; archives are unpacked without letting any member
escape the folder. The folder is then checked (split readable, listed images present) and only then
``<folder>/.prompt_ot/complete.json`` is written: ``dataset_is_complete`` reads that marker.
Datasets that cannot be fetched say how to build the folder by hand (``manual_steps``); datasets with
a ``prepare_fn`` (offline demo data) build it locally.

``provide_dataset(spec, root, path)`` (``download <name> --from PATH``) lays out a copy obtained elsewhere, an
archive or a folder, instead of fetching it: the folder in it that holds the images the split file lists is found
whatever its name or depth, built into a hidden sibling of the dataset folder (an archive unpacked there, a
folder's files hard-linked or copied; PATH is never changed) and renamed into place only once it checks out.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from prompt_ot import __version__
from prompt_ot.data.registry import DatasetSpec, Source, classnames_of, read_coop_split
from prompt_ot.errors import UserError
from prompt_ot.utils.io import atomic_write_text, sha256_file

USER_AGENT = f"prompt-ot/{__version__} (dataset download; Python urllib)"
STATE_DIR = ".prompt_ot"  # inside the dataset folder: checksums, partial downloads, completion marker
Log = Callable[[str], None]


@dataclass(frozen=True)
class SourceFile(Source):
    """A ``Source`` that says where its archive's members go.

    Only members under ``member_prefix`` are unpacked, with the prefix removed and ``dest`` put in
    front (``food-101/images/x.jpg`` -> ``images/x.jpg``); ``inner_archives`` (paths inside the
    dataset folder after unpacking) are unpacked in turn and then deleted.
    """

    member_prefix: str = ""
    dest: str = ""
    inner_archives: tuple[str, ...] = ()


def google_drive(file_id: str, filename: str, *, sha256: str | None = None, extract: bool = False) -> SourceFile:
    """A file shared on Google Drive (CoOp's split files); ``confirm=t`` skips the large-file interstitial."""
    return SourceFile(
        url=f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",
        mirrors=(f"https://drive.google.com/uc?export=download&id={file_id}",),
        filename=filename,
        sha256=sha256,
        extract=extract,
    )


@dataclass(frozen=True)
class FetchSettings:
    timeout: float = 60.0  # seconds without data before an attempt fails
    retries: int = 4  # attempts per URL for transient failures (connection lost, 5xx, timeout)
    backoff: float = 2.0  # seconds times the attempt number between attempts
    chunk: int = 1 << 20
    progress_every: float = 15.0  # seconds between progress lines


class _Transient(Exception):
    """Worth another attempt at the same URL (resuming)."""


class _Refused(Exception):
    """This URL will not give the file (4xx, a web page instead of the file): try the next mirror."""


class DownloadFailed(UserError):
    """No URL of a source gave the file: the message lists each URL and why."""


def _range_start_total(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``Content-Range: bytes a-b/total`` (or ``bytes */total``) into (a, total)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = span.split("-")[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


def _fetch_url(url: str, part: Path, settings: FetchSettings, log: Log) -> None:
    """Append the rest of ``url`` to ``part`` (or start it afresh); raise _Transient or _Refused."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=settings.timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: complete, or a stale part
            _, total = _range_start_total(err.headers.get("Content-Range"))
            if total == offset:
                return
            part.unlink()
            raise _Transient("the server refused to resume; starting again") from err
        if err.code in (408, 429) or err.code >= 500:
            raise _Transient(f"HTTP {err.code} {err.reason}") from err
        raise _Refused(f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise _Transient(f"connection failed ({getattr(err, 'reason', err)})") from err
    with response:
        if response.headers.get("Content-Type", "").startswith("text/html") and not part.name.endswith(".html.part"):
            raise _Refused("the server sent a web page instead of the file (a login, quota or confirmation page)")
        mode = "wb"
        if response.status == 206:
            start, _ = _range_start_total(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Transient(f"the server resumed at byte {start}, not {offset}; starting again")
            mode = "ab"
        else:
            offset = 0  # the server ignored the Range header: start afresh
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        received, last_report = offset, time.monotonic()
        with open(part, mode) as fh:  # a failed write (disk full) is not the network's fault: it propagates
            while True:
                try:
                    chunk = response.read(settings.chunk)
                except (http.client.HTTPException, OSError) as err:
                    raise _Transient(f"connection lost after {received} bytes ({err})") from err
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
                if time.monotonic() - last_report > settings.progress_every:
                    last_report = time.monotonic()
                    share = f" ({100 * received / total:.0f}%)" if total else ""
                    log(f"    {received / 2**20:,.0f} MiB{share}")
    if total is not None and received < total:
        raise _Transient(f"connection closed after {received} of {total} bytes")


def fetch(
    source: Source,
    target: Path,
    part_dir: Path,
    *,
    settings: FetchSettings = FetchSettings(),
    verify: bool = True,
    log: Log = print,
) -> tuple[str, str]:
    """Download ``source`` to ``target`` from the first URL that works; return (sha256, url).

    The bytes land in ``part_dir/<filename>.part`` and are renamed to ``target`` only after the
    pinned sha256 (if any, and ``verify``) matches. A mismatched file is deleted; a partial one stays
    for the next run to resume.
    """
    part_dir.mkdir(parents=True, exist_ok=True)
    part = part_dir / f"{source.filename}.part"
    failures: list[str] = []
    mismatch = False
    for url in (source.url, *source.mirrors):
        attempt, restarted = 0, False
        while True:
            attempt += 1
            resumed = part.exists() and part.stat().st_size > 0
            log(f"  {source.filename}: {'resuming' if resumed else 'fetching'} {url}")
            try:
                _fetch_url(url, part, settings, log)
            except OSError as err:  # the network errors are turned into _Transient inside
                raise UserError(f"cannot write {part}: {err}; free some space or choose another --root") from err
            except _Refused as err:
                failures.append(f"{url}: {err}")
                break
            except _Transient as err:
                if attempt >= settings.retries:
                    failures.append(f"{url}: {err} (gave up after {attempt} attempts)")
                    break
                log(f"    {err}; retrying ({attempt}/{settings.retries - 1})")
                time.sleep(settings.backoff * attempt)
                continue
            digest = sha256_file(part)
            if verify and source.sha256 and digest != source.sha256.lower():
                part.unlink()
                if resumed and not restarted:  # the earlier part may come from another version: once more afresh
                    restarted, attempt = True, 0
                    continue
                mismatch = True
                failures.append(f"{url}: sha256 {digest} differs from the expected {source.sha256} (file deleted)")
                break
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
            return digest, url
    advice = (
        "check the network and run the command again (an interrupted download resumes), or fetch the file "
        f"by hand from one of these URLs and save it as {target}"
    )
    if mismatch:
        advice += "; if the file at the source has changed for good, rerun with --no-verify"
    raise DownloadFailed(f"could not download {source.filename}: {'; '.join(failures)}. To fix: {advice}")


# ---------------------------------------------------------------- safe extraction


def _unsafe(archive: Path, name: str, why: str) -> UserError:
    return UserError(
        f"refusing to unpack {archive.name}: member {name!r} {why} and could be written outside the dataset "
        f"folder; the archive is corrupt or tampered with, delete {archive} and download it again"
    )


def _relocated(archive: Path, name: str, member_prefix: str, dest: str) -> str | None:
    """Where member ``name`` goes inside the folder: ``dest`` + the name without ``member_prefix``; None to skip it.

    An absolute name is refused here, because tarfile's data filter would silently make it relative.
    """
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise _unsafe(archive, name, "has an absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    prefix = [p for p in member_prefix.split("/") if p]
    if parts[: len(prefix)] != prefix or len(parts) == len(prefix):
        return None
    return str(PurePosixPath(dest, *parts[len(prefix) :]))


def _member_filter(archive: Path, member_prefix: str, dest: str) -> Callable:
    """A tarfile extraction filter: relocates each member, then applies the standard library's ``data_filter``
    (no absolute or escaping paths, no links leading outside, also through links already on disk; no special files).
    Devices and fifos are skipped; a refused member is a UserError naming it."""

    def check(member: tarfile.TarInfo, folder: str) -> tarfile.TarInfo | None:
        name = _relocated(archive, member.name, member_prefix, dest)
        if name is None or member.ischr() or member.isblk() or member.isfifo():
            return None
        changes = {"name": name}
        if member.islnk():  # a hard link names another member: relocate it the same way
            target = _relocated(archive, member.linkname, member_prefix, dest) if member.linkname else None
            if target is None:
                raise _unsafe(archive, member.name, f"is a hard link to {member.linkname!r}, outside what is unpacked")
            changes["linkname"] = target
        try:
            return tarfile.data_filter(member.replace(**changes, deep=False), folder)
        except tarfile.FilterError as err:
            raise _unsafe(archive, member.name, f"is refused by tarfile's data filter ({err})") from None

    return check


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tarfile.TarInfo:
    """A zip entry described as a tar member, so that the same filter checks both kinds of archive."""
    member = tarfile.TarInfo(info.filename)
    member.size, member.mode = info.file_size, 0o644
    if stat.S_ISLNK(info.external_attr >> 16):
        member.type, member.linkname = tarfile.SYMTYPE, zf.read(info).decode("utf-8", "replace")
    elif info.is_dir():
        member.type, member.mode = tarfile.DIRTYPE, 0o755
    return member


def extract_archive(archive: Path, folder: Path, *, member_prefix: str = "", dest: str = "") -> int:
    """Unpack a zip or tar archive into ``folder``; return the number of files written.

    Every member goes through ``_member_filter`` (tarfile's ``data_filter`` after relocation): a member with an
    absolute or escaping path, or a link leading outside ``folder`` (also through links already on disk, so a chain
    of links cannot lead out either), is refused with a UserError naming it. A zip archive is checked whole before
    anything is written. Devices and fifos are skipped.
    """
    folder.mkdir(parents=True, exist_ok=True)
    where = os.path.realpath(folder)
    check = _member_filter(archive, member_prefix, dest)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _zip_member(zf, info)) for info in zf.infolist()]
            planned = [(info, member) for info, member in members if check(member, where) is not None]
            count = 0
            for info, member in planned:
                member = check(member, where)  # again: links written so far are on disk now
                target = folder / member.name
                if target.is_symlink():
                    target.unlink()
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    os.symlink(member.linkname, target)
                elif member.isdir():
                    target.mkdir(exist_ok=True)
                else:
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    count += 1
        return count
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as err:
        raise UserError(
            f"{archive} is neither a zip nor a tar archive (a web page saved under its name?); "
            f"delete it and download it again"
        ) from err
    written = []

    def counted(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        member = check(member, path)
        if member is not None and (member.isfile() or member.islnk()):
            written.append(member.name)
        return member

    with tar:
        tar.extractall(where, filter=counted)  # streamed: a huge .tar.gz is read once
    return len(written)


# ---------------------------------------------------------------- checking and marking


@dataclass
class CheckReport:
    """What ``check_dataset`` found: image counts per split, classes, problems (fatal) and warnings."""

    dataset: str
    folder: Path
    counts: dict[str, int] = field(default_factory=dict)
    num_classes: int = 0
    checked_files: int = 0
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        head = f"{self.dataset} ({self.folder})"
        if self.counts:
            head += ": " + ", ".join(f"{k} {v}" for k, v in self.counts.items())
            head += f"; {self.num_classes} classes; {self.checked_files} listed files checked"
        return [head, *(f"  warning: {w}" for w in self.warnings), *(f"  problem: {p}" for p in self.problems)]


def check_dataset(spec: DatasetSpec, root: str | Path, *, sample: int | None = None, decode: int = 3) -> CheckReport:
    """Validate a dataset folder: split readable, labels 0..n-1, class count, listed files present.

    ``sample`` checks that many random listed files instead of all; ``decode`` images are opened
    with PIL to catch web pages or truncated files saved under image names.
    """
    folder = spec.dataset_dir(root)
    report = CheckReport(spec.name, folder)
    if not folder.is_dir():
        report.problems.append(f"the folder {folder} does not exist")
        return report
    try:
        split = spec.load_split(root)
        names = classnames_of(split)
    except UserError as err:
        report.problems.append(str(err))
        return report
    report.counts = {key: len(items) for key, items in split.items()}
    report.num_classes = len(names)
    expected_classes = spec.extra.get("num_classes")
    if expected_classes and len(names) != expected_classes:
        report.problems.append(f"the split has {len(names)} classes, {spec.name} has {expected_classes}")
    for key, expected in zip(("train", "val", "test"), spec.extra.get("split_sizes", ())):
        if report.counts.get(key) != expected:
            report.warnings.append(f"{key} lists {report.counts.get(key)} images, the full dataset {expected}")
    items = list({it.relpath: it for items in split.values() for it in items}.values())
    if not items:
        report.problems.append("the split lists no images")
        return report
    if sample is not None and sample < len(items):
        items = random.Random(0).sample(items, sample)
    image_root = spec.image_root(root)
    report.checked_files = len(items)
    report.missing = [it.relpath for it in items if not (image_root / it.relpath).is_file()]
    if report.missing:
        report.problems.append(
            f"{len(report.missing)} of {len(items)} listed images are missing under {image_root}, "
            f"e.g. {', '.join(report.missing[:5])}"
        )
    missing = set(report.missing)
    present = [it for it in items if it.relpath not in missing]
    for it in present[:: max(1, len(present) // max(decode, 1))][:decode] if decode else []:
        path = image_root / it.relpath
        try:
            from PIL import Image

            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises many types for bad files
            report.problems.append(f"{path} is not a readable image ({type(err).__name__}: {err})")
    return report


def _marker(folder: Path) -> Path:
    return folder / STATE_DIR / "complete.json"


def dataset_is_complete(spec: DatasetSpec, root: str | Path) -> bool:
    """True when the folder was fetched (or provided) and checked, i.e. its completion marker is there."""
    marker = _marker(spec.dataset_dir(root))
    try:
        return json.loads(marker.read_text()).get("dataset") == spec.name
    except (OSError, ValueError, AttributeError):
        return False


FILES_RECORD = "files.json"  # under STATE_DIR: every file of the completed folder, its size and sha256


def _dataset_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (POSIX paths relative to it) but the suite's own state."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] != STATE_DIR
    )


def _hashes(folder: Path, names: list[str]) -> dict[str, str]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # hashlib lets go of the GIL
        return dict(zip(names, pool.map(lambda name: sha256_file(folder / name), names)))


def record_files(folder: Path) -> dict:
    """{relative path: {"bytes", "sha256"}} of every file of the dataset folder, written to its FILES_RECORD."""
    names = _dataset_files(folder)
    digests = _hashes(folder, names)
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": digests[name]} for name in names}
    atomic_write_text(folder / STATE_DIR / FILES_RECORD, json.dumps(files, indent=0, sort_keys=True))
    return files


@dataclass
class VerifyReport:
    dataset: str
    folder: Path
    recorded: int
    missing: list[str] = field(default_factory=list)  # recorded, not there any more
    extra: list[str] = field(default_factory=list)  # there, not recorded
    changed: list[str] = field(default_factory=list)  # another size or sha256 than recorded
    unlisted: list[str] = field(default_factory=list)  # images the split file lists that are not there

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.unlisted)

    def lines(self, shown: int = 20) -> list[str]:
        out = []
        for what, names in (
            ("missing", self.missing),
            ("extra", self.extra),
            ("changed", self.changed),
            ("listed by the split, not there", self.unlisted),
        ):
            out += [f"  {what}: {name}" for name in names[:shown]]
            if len(names) > shown:
                out.append(f"  ... and {len(names) - shown} more {what}")
        return out


def verify_dataset(spec: DatasetSpec, root: str | Path) -> VerifyReport:
    """The dataset folder against the record of its files written when it was completed, and against its split."""
    folder = spec.dataset_dir(root)
    record = folder / STATE_DIR / FILES_RECORD
    if not record.is_file():
        raise UserError(
            f"{spec.name}: {record} does not exist, so there is nothing to verify against (the folder was completed "
            f"before records were kept, or never); check it and record its files with "
            f"'python -m prompt_ot download {spec.name} --root {root} --check'"
        )
    try:
        recorded = json.loads(record.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{record} cannot be read ({err}); record the files again with --check") from err
    present = set(_dataset_files(folder))
    report = VerifyReport(spec.name, folder, len(recorded))
    report.missing = sorted(set(recorded) - present)
    report.extra = sorted(present - set(recorded))
    common = sorted(present & set(recorded))
    same_size = [n for n in common if (folder / n).stat().st_size == recorded[n]["bytes"]]
    digests = _hashes(folder, same_size)
    report.changed = sorted(
        set(common) - set(same_size) | {n for n in same_size if digests[n] != recorded[n]["sha256"]}
    )
    report.unlisted = check_dataset(spec, root).missing
    return report


def mark_complete(spec: DatasetSpec, root: str | Path, report: CheckReport) -> None:
    folder = spec.dataset_dir(root)
    record_files(folder)
    payload = {
        "dataset": spec.name,
        "folder": spec.folder,
        "counts": report.counts,
        "num_classes": report.num_classes,
        "checksums": _read_state(folder),
        "prompt_ot": __version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(_marker(folder), json.dumps(payload, indent=1))


def _state_path(folder: Path) -> Path:
    return folder / STATE_DIR / "checksums.json"


def _read_state(folder: Path) -> dict:
    try:
        return json.loads(_state_path(folder).read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- the whole dataset


def _obtain(source: Source, target: Path, part_dir: Path, settings: FetchSettings, verify: bool, log: Log):
    """Use ``target`` if it is already there (a previous run, or put there by hand) and verifies; else fetch."""
    if target.is_file():
        digest = sha256_file(target)
        if not (verify and source.sha256) or digest == source.sha256.lower():
            log(f"  {source.filename}: using the copy at {target}")
            return digest, f"file://{target}"
        log(f"  {source.filename}: {target} does not match the pinned sha256; deleting it and downloading again")
        target.unlink()
    return fetch(source, target, part_dir, settings=settings, verify=verify, log=log)


def download_dataset(
    spec: DatasetSpec,
    root: str | Path,
    *,
    force: bool = False,
    verify: bool = True,
    keep_archives: bool = False,
    settings: FetchSettings = FetchSettings(),
    log: Log = print,
) -> CheckReport | None:
    """Make ``<root>/<spec.folder>`` complete: fetch, verify, unpack, check, mark. None if already complete."""
    folder = spec.dataset_dir(root)
    if dataset_is_complete(spec, root) and not force:
        log(f"{spec.name}: already complete in {folder}; nothing to do (use --force to fetch again)")
        return None
    _marker(folder).unlink(missing_ok=True)
    if spec.prepare_fn is not None:
        log(f"{spec.name}: building {folder} locally")
        folder.mkdir(parents=True, exist_ok=True)
        spec.prepare_fn(folder)
    elif spec.sources:
        log(f"{spec.name}: fetching {len(spec.sources)} file(s) into {folder}")
        existed = folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        downloads = folder / STATE_DIR / "downloads"
        state = _read_state(folder)
        for source in spec.sources:
            entry = state.get(source.filename, {})
            if entry.get("done") and not force and (source.extract or (folder / source.filename).is_file()):
                log(f"  {source.filename}: already fetched")
                continue
            target = downloads / source.filename if source.extract else folder / source.filename
            try:
                digest, url = _obtain(source, target, downloads, settings, verify, log)
            except DownloadFailed as err:
                if not existed:  # what this run made and left empty goes (a partial download stays to resume)
                    _remove_empty_folders(folder)
                raise DownloadFailed(f"{err}{_other_routes(spec, root, source)}") from err
            state[source.filename] = {
                "sha256": digest,
                "bytes": target.stat().st_size,
                "url": url,
                "pinned": bool(source.sha256),
                "done": False,
            }
            atomic_write_text(_state_path(folder), json.dumps(state, indent=1))
            if source.extract:
                log(f"  {source.filename}: unpacking")
                extract_archive(
                    target, folder, member_prefix=getattr(source, "member_prefix", ""), dest=getattr(source, "dest", "")
                )
                for inner in getattr(source, "inner_archives", ()):
                    if not (folder / inner).is_file():
                        raise UserError(
                            f"{source.filename} holds no {inner}; the archive at the source has changed, "
                            f"please report it (prompt_ot/data/datasets/{spec.name}.py needs updating)"
                        )
                    extract_archive(folder / inner, folder)
                    (folder / inner).unlink()
                if not keep_archives:
                    target.unlink()
            state[source.filename]["done"] = True
            atomic_write_text(_state_path(folder), json.dumps(state, indent=1))
    report = check_dataset(spec, root)
    if report.ok:
        mark_complete(spec, root, report)
        for line in report.lines():
            log(line)
        log(f"{spec.name}: complete")
        return report
    if spec.manual_steps:
        log(manual_instructions(spec, root))
    for line in report.lines():
        log(line)
    raise UserError(
        f"{spec.name} in {folder} is not complete: {report.problems[0]}"
        + (f" (and {len(report.problems) - 1} more problem(s))" if len(report.problems) > 1 else "")
        + (
            f"; follow the steps printed above, then run "
            f"'python -m prompt_ot download {spec.name} --root {root} --check'"
            if spec.manual_steps
            else ""
        )
    )


def manual_instructions(spec: DatasetSpec, root: str | Path) -> str:
    """The spec's manual steps with the real values filled in: ``{folder}``, ``{root}``, and ``{archive}`` and
    ``{sha256}``, the file name and pinned sha256 of its first archive (the first source to unpack)."""
    archive = next((s for s in spec.sources if s.extract), None)
    values = {
        "{folder}": str(spec.dataset_dir(root)),
        "{root}": str(root),
        "{archive}": archive.filename if archive else "the archive",
        "{sha256}": (archive.sha256 or "(not known)") if archive else "(not known)",
    }
    steps = spec.manual_steps or ""
    for key, value in values.items():
        steps = steps.replace(key, value)
    return f"{spec.name} needs manual steps:\n{steps.strip()}"


def _other_routes(spec: DatasetSpec, root: str | Path, source: Source) -> str:
    """What to add to a failed download's message: the recipe's manual steps, else the ``--from`` route."""
    if spec.manual_steps:
        return "\n" + manual_instructions(spec, root)
    if source.extract and spec.split_file:
        return (
            f"; or, with a copy of {source.filename} (or of its unpacked folder) obtained elsewhere, run "
            f"'python -m prompt_ot download {spec.name} --from PATH --root {root}'"
        )
    return ""


def _remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and the folders below it that hold no file (never a file)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for dirpath, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(dirpath)
        except OSError:  # not empty
            pass


# ---------------------------------------------------------------- a copy obtained elsewhere (--from)

FROM_KEY = "--from"  # the checksums.json entry that records a copy laid out by provide_dataset
UNPACKED = ".unpacked"  # inside the building folder: where an archive given to --from is unpacked


def _is_archive(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)
    except OSError:
        return False


def _files_under(top: Path) -> list[str]:
    """Every regular file below ``top`` (POSIX paths relative to it), the suite's own state folders left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d != STATE_DIR)
        rel = Path(dirpath).relative_to(top).as_posix()
        for name in sorted(filenames):
            if os.path.isfile(os.path.join(dirpath, name)):
                found.append(name if rel == "." else f"{rel}/{name}")
    return found


def best_image_folder(files: list[str], listed: list[str]) -> tuple[str | None, int]:
    """The folder (relative to where ``files`` were listed, "" for that place itself) below which the most of the
    ``listed`` paths are found, and how many; ties go to the shallowest, then the first in sorted order.
    (None, 0) when no listed path is there at all."""
    wanted = set(listed)
    depths = sorted({path.count("/") + 1 for path in wanted})
    counts: dict[str, int] = {}
    for path in files:
        parts = path.split("/")
        for depth in depths:
            if len(parts) >= depth and "/".join(parts[-depth:]) in wanted:
                prefix = "/".join(parts[:-depth])
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return None, 0
    prefix = min(counts, key=lambda p: (-counts[p], p.count("/") + bool(p), p))
    return prefix, counts[prefix]


def _shown(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _top_entries(top: Path) -> str:
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in top.iterdir())
    except OSError:
        entries = []
    return _shown(entries) if entries else "nothing (it is empty)"


def _link_or_copy_tree(src: Path, dest: Path) -> tuple[int, int]:
    """Recreate ``src``'s files under ``dest``: a hard link for each file where the file system allows it (same
    file system, links permitted), else a copy; ``src`` is only read. Returns (linked, copied)."""
    linked = copied = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        here = dest / Path(dirpath).relative_to(src)
        here.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            source, target = Path(dirpath) / name, here / name
            if not source.is_file():
                continue  # a broken link, a fifo, a device
            if not source.is_symlink():
                try:
                    os.link(source, target)
                    linked += 1
                    continue
                except OSError:
                    pass
            shutil.copy2(source, target)
            copied += 1
    return linked, copied


def _archive_digest(spec: DatasetSpec, archive: Path, verify: bool, log: Log) -> tuple[str, Source | None]:
    """The archive's sha256 and the recipe's source it is (by checksum, else by file name; None if neither).

    An archive named like one of the recipe's whose sha256 differs from the pinned one is refused unless not
    ``verify``; one the recipe does not know is accepted, its contents are checked against the split instead."""
    log(f"  {archive.name}: computing its sha256")
    digest = sha256_file(archive)
    archives = [s for s in spec.sources if s.extract]
    same = next((s for s in archives if s.sha256 and s.sha256.lower() == digest), None)
    if same is not None:
        log(f"  {archive.name}: sha256 {digest} is that of the original {same.filename}")
        return digest, same
    named = next((s for s in archives if s.filename == archive.name), None)
    if named is not None and named.sha256:
        if verify:
            raise UserError(
                f"{archive}: sha256 {digest} differs from the expected {named.sha256} of {named.filename}; it is "
                f"another version or a damaged copy. Get another copy, or rerun with --no-verify to accept it "
                f"(its contents are then checked against {spec.name}'s split file)"
            )
        log(f"  {archive.name}: sha256 {digest} differs from the pinned {named.sha256}; accepted (--no-verify)")
    else:
        log(f"  {archive.name}: no sha256 known for this file; its contents are checked against the split file")
    return digest, named


def _split_bytes(
    spec: DatasetSpec,
    root: str | Path,
    copy: Path,
    search: Path,
    files: list[str],
    staging: Path,
    settings: FetchSettings,
    verify: bool,
    log: Log,
) -> tuple[bytes, str, Source | None]:
    """The split file's bytes and where they came from (a URL): the copy ``copy`` (its shallowest file of that
    name; ``files`` are listed below ``search``, the copy itself or where the archive was unpacked), an earlier
    download in the dataset folder, or the recipe's own source for it."""
    name = spec.split_file
    assert name is not None
    inside = sorted((f for f in files if f.rsplit("/", 1)[-1] == name), key=lambda f: (f.count("/"), f))
    where = (lambda f: f"file://{copy.resolve()}#{f}") if copy.is_file() else (lambda f: f"file://{copy.resolve()}/{f}")
    candidates = [(search / f, where(f)) for f in inside]
    earlier = spec.dataset_dir(root) / name
    if earlier.is_file():
        candidates.append((earlier, f"file://{earlier.resolve()}"))
    for path, url in candidates:
        try:
            read_coop_split(path)
        except UserError as err:
            log(f"  {name}: {url} cannot be used ({err})")
            continue
        log(f"  {name}: using {url}")
        return path.read_bytes(), url, None
    source = next((s for s in spec.sources if s.filename == name and not s.extract), None)
    if source is None:
        raise UserError(
            f"{spec.name}'s split file {name} is neither in the copy nor in {spec.dataset_dir(root)}, and the recipe "
            f"has no URL for it; put {name} into the copy (or into {spec.dataset_dir(root)}) and run the command again"
        )
    target = staging / name
    try:
        _, url = fetch(source, target, staging / ".parts", settings=settings, verify=verify, log=log)
    except DownloadFailed as err:
        raise DownloadFailed(
            f"{err}; or put {name} into the copy given to --from (or into {spec.dataset_dir(root)}) and run the "
            f"command again"
        ) from err
    read_coop_split(target)
    return target.read_bytes(), url, source


def _move_into_place(built: Path, folder: Path) -> None:
    """Rename the built dataset folder to ``folder``; an existing ``folder`` keeps its state (checksums, partial
    downloads) and gets each built entry renamed over the old one, which goes only once the new one is there."""
    from prompt_ot.utils.io import hidden_folder

    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()
    if not folder.exists() and not folder.is_symlink():
        os.rename(built, folder)
        return
    _marker(folder).unlink(missing_ok=True)
    for entry in sorted(built.iterdir()):
        target = folder / entry.name
        if not (target.exists() or target.is_symlink()):
            os.rename(entry, target)
            continue
        old = hidden_folder(folder, "old")
        os.rename(target, old / entry.name)
        os.rename(entry, target)
        shutil.rmtree(old, ignore_errors=True)


def provide_dataset(
    spec: DatasetSpec,
    root: str | Path,
    path: str | Path,
    *,
    force: bool = False,
    verify: bool = True,
    settings: FetchSettings = FetchSettings(),
    log: Log = print,
) -> CheckReport | None:
    """Make ``<root>/<spec.folder>`` complete from a copy the user obtained elsewhere (``download --from PATH``).

    ``path`` is an archive (zip or tar.*; its sha256 is compared with the recipe's where the recipe pins one for
    an archive of that name or content, and always recorded) or a folder. The folder inside it that holds the most
    of the images the split file lists (the split file is taken from the copy, an earlier download, or the recipe's
    URL) becomes ``<folder>/<image_dir>``, whatever it was called and however deep it was. Everything is built in a
    hidden sibling of the dataset folder (an archive is unpacked there, a folder's files are hard-linked where the
    file system allows, else copied: ``path`` is never changed), checked as ``check_dataset`` does, and only then
    renamed into place and marked complete. A refusal leaves ``root`` as it was."""
    from prompt_ot.utils.io import building_folder

    path = Path(path)
    folder = spec.dataset_dir(root)
    if not path.exists():
        raise UserError(
            f"--from {path}: no such file or folder; give the archive (zip, tar, tar.gz, ...) or the folder that "
            f"holds your copy of {spec.name}"
        )
    if path.is_file() and not _is_archive(path):
        raise UserError(
            f"--from {path} is neither a zip nor a tar archive; give the archive (zip, tar, tar.gz, ...) or the "
            f"folder that holds your copy of {spec.name}"
        )
    if not path.is_file() and not path.is_dir():
        raise UserError(f"--from {path} is neither a file nor a folder; give the archive or the folder")
    if spec.split_file is None:
        raise UserError(
            f"--from works for datasets whose split is a CoOp split file; {spec.name} reads its split from the "
            f"folder itself: put the folder in place as 'python -m prompt_ot download {spec.name} --root {root}' "
            f"describes and run 'python -m prompt_ot download {spec.name} --root {root} --check'"
        )
    if dataset_is_complete(spec, root) and not force:
        log(f"{spec.name}: already complete in {folder}; nothing to do (use --force to replace it with {path})")
        return None
    if path.is_dir() and Path(os.path.realpath(root)).is_relative_to(os.path.realpath(path)):
        raise UserError(
            f"--root {root} lies inside --from {path}; choose a data root outside the copy (its files are linked "
            f"or copied into the root)"
        )
    root_existed = Path(root).exists()
    digest: str | None = None
    matched: Source | None = None
    staging = building_folder(folder)
    try:
        if path.is_file():
            digest, matched = _archive_digest(spec, path, verify, log)
            log(f"  {path.name}: unpacking into {staging}")
            extract_archive(path, staging / UNPACKED)
            search = staging / UNPACKED
        else:
            search = path
        log(f"  listing the files in {path}")
        files = _files_under(search)
        split_data, split_url, split_source = _split_bytes(
            spec, root, path, search, files, staging, settings, verify, log
        )
        (staging / ".split.json").write_bytes(split_data)
        split = read_coop_split(staging / ".split.json")
        listed = sorted({item.relpath for items in split.values() for item in items})
        prefix, found = best_image_folder(files, listed)
        image_place = f"{folder}/{spec.image_dir}" if spec.image_dir else str(folder)
        if prefix is None:
            archives = [f for f in files if "/" not in f and f.endswith((".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz"))]
            hint = f" (to use the archive {archives[0]}, give its own path to --from)" if archives else ""
            raise UserError(
                f"--from {path} holds none of the images that {spec.name}'s split file lists: expected a folder "
                f"(of any name, at any depth) holding {_shown(listed, 3)}, which becomes {image_place}; found at "
                f"its top level: {_top_entries(search)}. Give the archive or folder that holds {spec.name}'s "
                f"images{hint}"
            )
        images = search / prefix if prefix else search
        shown_at = f"{path}/{prefix}" if prefix else str(path)
        present = {f[len(prefix) + 1 :] if prefix else f for f in files if not prefix or f.startswith(prefix + "/")}
        missing = [relpath for relpath in listed if relpath not in present]
        if missing:
            for relpath in missing[:100]:
                log(f"  missing: {relpath}")
            raise UserError(
                f"--from {path}: {shown_at}, the folder holding most of {spec.name}'s images, has {found} of the "
                f"{len(listed)} images its split file lists; {len(missing)} are missing: {_shown(missing, 20)}. "
                f"Give a complete copy (nothing was changed under {root})"
            )
        if path.is_dir() and Path(os.path.realpath(folder)).is_relative_to(os.path.realpath(images)):
            raise UserError(f"--root {root} lies inside the images' folder {images}; choose another data root")
        log(f"  {spec.name}'s images: {shown_at} (all {len(listed)} listed images there); to {image_place}")
        built = staging / spec.folder
        dest = built / spec.image_dir if spec.image_dir else built
        dest.parent.mkdir(parents=True, exist_ok=True)
        linked = copied = 0
        if path.is_file():
            os.rename(images, dest)  # unpacked in the building folder: same file system, nothing to copy
        else:
            linked, copied = _link_or_copy_tree(images, dest)
            log(f"  {linked} file(s) hard-linked, {copied} copied from {images}")
        os.replace(staging / ".split.json", built / spec.split_file)
        report = check_dataset(spec, staging)
        if not report.ok:
            for line in report.lines():
                log(line)
            raise UserError(
                f"--from {path}: the copy laid out as {spec.name} is not complete: {report.problems[0]}"
                + (f" (and {len(report.problems) - 1} more problem(s))" if len(report.problems) > 1 else "")
                + f"; nothing was changed under {root}"
            )
        _move_into_place(built, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not root_existed:
            _remove_empty_folders(Path(root))
        raise
    shutil.rmtree(staging, ignore_errors=True)
    state = _read_state(folder)
    entry = {
        "path": str(path.resolve()),
        "kind": "archive" if digest else "folder",
        "image_folder": prefix,
        "files": len(files),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if digest:
        entry |= {"sha256": digest, "bytes": path.stat().st_size, "source": matched.filename if matched else None}
        entry["pinned"] = bool(matched and matched.sha256 and matched.sha256.lower() == digest)
    else:
        entry |= {"hard_links": linked, "copied": copied}
    state[FROM_KEY] = entry
    if matched is not None:
        state[matched.filename] = {
            "sha256": digest,
            "bytes": path.stat().st_size,
            "url": f"file://{path.resolve()}",
            "pinned": entry["pinned"],
            "done": True,
        }
    split_path = folder / spec.split_file
    state[spec.split_file] = {
        "sha256": sha256_file(split_path),
        "bytes": split_path.stat().st_size,
        "url": split_url,
        "pinned": bool(split_source and split_source.sha256),
        "done": True,
    }
    atomic_write_text(_state_path(folder), json.dumps(state, indent=1))
    report = check_dataset(spec, root)
    if not report.ok:  # the checked folder was renamed, not changed: only a concurrent writer gets here
        raise UserError(f"{spec.name} in {folder} is not complete after laying it out: {report.problems[0]}")
    mark_complete(spec, root, report)
    for line in report.lines():
        log(line)
    log(f"{spec.name}: complete (from {path})")
    return report
