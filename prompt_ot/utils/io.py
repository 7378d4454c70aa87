"""Atomic writes: a file or folder appears under its final name only when it is complete.

Folders are built in a hidden sibling, ``.<name>.building-<host>-<pid>-<random>``, and renamed into place
(:func:`building_folder`, :func:`replace_folder`). A build killed outright (SIGKILL, power loss) leaves that
sibling behind; the next build of the same target removes it once its owner process is gone
(:func:`remove_stale_folders`), and never touches the folder of a live process or of another host.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
_KINDS = ("building", "old")  # what a hidden sibling holds: a build in progress, or the folder it replaces


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (setting it is not thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporary_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host()}-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would make every output private to its writer
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _remove_stale_temporary_files(path: Path) -> None:
    """Temporary files of ``path`` left by writers of this host that were killed mid-write."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[a-z0-9_]+\.tmp$")
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.match(sibling.name)
        if match and match["host"] == _host() and not _pid_alive(int(match["pid"])):
            sibling.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def npz_bytes(arrays: dict) -> bytes:
    """``numpy.savez_compressed``'s format with every entry dated 1980-01-01: the same arrays give the same bytes
    (numpy stamps each entry with the time of writing), which ``numpy.load`` reads as usual."""
    import io
    import zipfile

    import numpy as np

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entry.getvalue())
    return buffer.getvalue()


def npz_arrays(path: str | Path) -> dict:
    """Every array of an ``.npz`` file (as :func:`npz_bytes` writes), by name, without pickles. Any failure to read it
    (missing, not numpy's, cut short: numpy raises several kinds) is a ``ValueError`` saying why."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except Exception as err:
        raise ValueError(str(err) or err.__class__.__name__) from err


def read_json(path: str | Path, *, what: str, fix: str, missing: str | None = None):
    """The JSON value in ``path``. A missing file, or one that is not UTF-8 JSON, is one ``UserError`` naming the
    file (``what`` says what it is, e.g. "manifest") and ending with ``fix``, what the user should do; ``missing``
    replaces the whole message for a missing file."""
    import json

    from prompt_ot.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(missing or f"{what} {path} does not exist; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON ({err}); {fix}") from None


def safe_load_yaml(text: str):
    """``yaml.safe_load(text)`` through libyaml's parser where PyYAML has it (params.yaml in about 3 ms instead of
    20 in a fresh job; the same objects, tests/test_cli_errors.py), else PyYAML's own. On an error the text is parsed
    again by PyYAML's own parser, whose message quotes the offending line."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        return yaml.safe_load(text)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - CSafeLoader is the safe loader, in C
    except yaml.YAMLError:
        return yaml.safe_load(text)  # raises again, with PyYAML's message


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _host() -> str:
    """This machine's name as it goes into a folder name (no separators, no dashes)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "localhost"


def hidden_folder(out_dir: str | Path, kind: str = "building") -> Path:
    """Create the hidden sibling ``.<name>.<kind>-<host>-<pid>-<random>`` of ``out_dir`` (with the permissions
    of a normal new folder) and return it; the owner (host, pid) lets a later build tell whether it is stale."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{kind}-{_host()}-{os.getpid()}-", dir=out_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the result from other users
    return tmp


def building_folder(out_dir: str | Path) -> Path:
    """Remove stale building folders of ``out_dir`` left by killed builds, then create this build's own."""
    remove_stale_folders(out_dir)
    return hidden_folder(out_dir, "building")


def owner() -> dict:
    """This process as the owner of something it is writing: host name and process id."""
    return {"host": _host(), "pid": os.getpid()}


def owner_running(info: dict) -> bool:
    """Whether the owner ``{"host", "pid"}`` (see :func:`owner`) is a process of this host that still runs.

    An owner on another host cannot be checked and counts as gone: Snakemake and DVC never run two jobs
    for one output, so an owner recorded there is a job that ended without cleaning up."""
    try:
        return info.get("host") == _host() and _pid_alive(int(info.get("pid", 0)))
    except (TypeError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process id we can judge: keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:
        return False
    try:  # a zombie (killed, not yet reaped) no longer writes anything
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def stale_folders(out_dir: str | Path) -> list[Path]:
    """Hidden building/old siblings of ``out_dir`` whose owner was a process of this host that no longer runs.

    Folders of a live process, of another host (a shared file system) or without an owner in their name
    (made by an older version) are never listed."""
    out_dir = Path(out_dir)
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(?:{'|'.join(_KINDS)})-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+$")
    try:
        siblings = list(out_dir.parent.iterdir())
    except FileNotFoundError:
        return []
    stale = []
    for path in siblings:
        match = pattern.match(path.name)
        if match and match["host"] == _host() and path.is_dir() and not path.is_symlink():
            if not _pid_alive(int(match["pid"])):
                stale.append(path)
    return sorted(stale)


def remove_stale_folders(out_dir: str | Path) -> list[Path]:
    """Delete :func:`stale_folders` of ``out_dir``; returns what was removed."""
    removed = []
    for path in stale_folders(out_dir):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    if removed:
        log.info(
            "removed %d folder(s) left by killed builds of %s: %s",
            len(removed),
            out_dir,
            ", ".join(p.name for p in removed),
        )
    return removed


def replace_folder(tmp: str | Path, out_dir: str | Path) -> None:
    """Rename the finished folder ``tmp`` to ``out_dir``; an older ``out_dir`` is removed only after the new
    one is in place, so a reader never sees a half-written folder (an empty ``out_dir`` is simply replaced)."""
    tmp, out_dir = Path(tmp), Path(out_dir)
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = hidden_folder(out_dir, "old")
    os.rename(out_dir, old / out_dir.name)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
