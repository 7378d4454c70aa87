"""The fork server for the pipeline tests: ``FORKED`` prefixes a tool's command so that every job it starts runs as a
fork of one server (``python -m prompt_ot forkserver -- CMD``), and ``fork_server`` runs a server by hand, stopped by
pid, with a count of its live children."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from tests.support.workflow import PROMPT_OT, quiet_env

FORKED = [*PROMPT_OT, "forkserver", "--"]


@contextlib.contextmanager
def fork_server(folder):
    """A running `python -m prompt_ot forkserver` (stopped by pid), its socket and a count of its live children."""
    socket_path, pidfile = folder / "fork.sock", folder / "fork.pid"
    server = subprocess.Popen(
        [sys.executable, "-m", "prompt_ot", "forkserver", "--socket", str(socket_path), "--pidfile", str(pidfile)],
        env=quiet_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists():
            assert server.poll() is None, f"the fork server did not start:\n{server.stdout.read()}"
            assert time.monotonic() < deadline, "the fork server did not listen within 120 s"
            time.sleep(0.2)

        def children():
            return len(subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split())

        yield socket_path, children
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
