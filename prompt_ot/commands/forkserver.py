"""`python -m prompt_ot forkserver`: serve the stage commands as forks of one warm process.

Jobs started with ``PROMPT_OT_FORKSERVER=PATH`` in their environment run as children of the server
(``prompt_ot.forkserver``), skipping the seconds of importing torch, torchvision and open_clip. Two forms:

    python -m prompt_ot forkserver -- snakemake --cores 2 ...   # serve while the command runs, then stop
    python -m prompt_ot forkserver --socket PATH [--pidfile F]  # serve until SIGTERM / Ctrl-C

For CPU grids (the offline demo); on a GPU machine, run the jobs as their own processes.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        type=_socket_path,
        help="UNIX socket to listen on (jobs name it in $PROMPT_OT_FORKSERVER); with a "
        "command, a fresh one in the temporary folder by default",
    )
    parser.add_argument(
        "--pidfile", type=check.out_file, help="write the server's pid here once it listens (removed when it stops)"
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after '--': a command to run with the server (its exit status is this command's)",
    )


def _socket_path(text: str) -> str:
    """A path the server can bind: in an existing folder, short enough, and not an existing file (which the server
    would delete to bind there; a stale socket of an earlier server is replaced)."""
    problem = _socket_problem(Path(text))
    if problem:
        raise check.ArgumentTypeError(f"{text}: {problem}")
    return text


def _socket_problem(path: Path) -> str | None:
    if not path.parent.is_dir():
        return f"folder {path.parent} does not exist; create it or pick another path"
    if len(os.fsencode(str(path.resolve()))) > 100:
        return "a UNIX socket path must be shorter than about 100 bytes; use a shorter one (e.g. under /tmp)"
    if (path.exists() or path.is_symlink()) and not stat.S_ISSOCK(path.lstat().st_mode):
        return "exists and is not a socket; pick a new path (the server replaces what is there)"
    return None


def _check_socket(path: Path) -> None:
    from prompt_ot.errors import UserError

    problem = _socket_problem(path)
    if problem:
        raise UserError(f"--socket {path}: {problem}")


def run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        return _run_with_server(command, args.socket)
    from prompt_ot.errors import UserError
    from prompt_ot.forkserver import serve

    if not args.socket:
        raise UserError("give --socket PATH to serve, or a command after '--' to run with a server")
    socket_path = Path(args.socket)
    _check_socket(socket_path)
    pidfile = Path(args.pidfile) if args.pidfile else None

    def ready():
        if pidfile is not None:
            pidfile.write_text(f"{os.getpid()}\n")

    try:
        serve(str(socket_path), ready=ready)
    finally:
        if pidfile is not None and pidfile.exists():
            pidfile.unlink()
    return 0


def _run_with_server(command: list[str], socket_arg: str | None) -> int:
    """Start a server (a child process, stopped by pid whatever happens), run ``command`` with it, return its status."""
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from prompt_ot.errors import UserError
    from prompt_ot.forkclient import ENV

    if shutil.which(command[0]) is None:
        raise UserError(f"command {command[0]!r} after '--' was not found on PATH")
    folder = Path(tempfile.mkdtemp(prefix="prompt_ot_fork_"))
    socket_path = Path(socket_arg) if socket_arg else folder / "s.sock"
    _check_socket(socket_path)
    pidfile = folder / "server.pid"
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prompt_ot", "forkserver", "--socket", str(socket_path), "--pidfile", str(pidfile)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while not pidfile.exists():
            if server.poll() is not None:
                log.flush()
                raise UserError(f"the fork server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        job = subprocess.Popen(command, env=os.environ | {ENV: str(socket_path)})
        while True:
            try:
                return job.wait()
            except KeyboardInterrupt:  # Ctrl-C reaches the command too; wait for it to finish its way
                continue
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
