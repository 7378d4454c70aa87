"""Fetch a dataset's files, verify them, unpack archives safely and mark the folder complete.

``download_dataset(spec, root)`` fills ``<root>/<spec.folder>``: each ``Source`` is fetched over
HTTP(S) with resume (a ``.part`` file and a ``Range`` request), bounded retries and mirrors tried in
order; its sha256 is checked when the dataset definition pins one and recorded in
``<folder>/.prompt_ot/checksums.json`` either way; archives are unpacked without letting any member
escape the folder. The folder is then checked (split readable, listed images present) and only then
``<folder>/.prompt_ot/complete.json`` is written: ``dataset_is_complete`` reads that marker.
Datasets that cannot be fetched say how to build the folder by hand (``manual_steps``); datasets with
a ``prepare_fn`` (offline demo data) build it locally.
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
from prompt_ot.data.registry import DatasetSpec, Source, classnames_of
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
    raise UserError(f"could not download {source.filename}: {'; '.join(failures)}. To fix: {advice}")


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
        folder.mkdir(parents=True, exist_ok=True)
        downloads = folder / STATE_DIR / "downloads"
        state = _read_state(folder)
        for source in spec.sources:
            entry = state.get(source.filename, {})
            if entry.get("done") and not force and (source.extract or (folder / source.filename).is_file()):
                log(f"  {source.filename}: already fetched")
                continue
            target = downloads / source.filename if source.extract else folder / source.filename
            digest, url = _obtain(source, target, downloads, settings, verify, log)
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
    """The spec's manual steps with the real folder and root filled in."""
    steps = (spec.manual_steps or "").replace("{folder}", str(spec.dataset_dir(root))).replace("{root}", str(root))
    return f"{spec.name} needs manual steps:\n{steps.strip()}"
