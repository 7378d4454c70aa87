"""The client side of the fork server (:mod:`prompt_ot.forkserver`): what ``python -m prompt_ot <stage>`` runs first.

When ``$PROMPT_OT_FORKSERVER`` names a listening server, :func:`run_through_server` hands the command line, folder,
environment and standard streams to it, forwards SIGINT and SIGTERM, and returns the forked job's exit status (or dies
by the job's signal); with no server to ask it returns None and the command runs in its own process. The wire format
(length-prefixed JSON requests, the one-byte signal and exit messages) is defined here and used by both sides.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

ENV = "PROMPT_OT_FORKSERVER"
_IN_CHILD = "PROMPT_OT_FORKSERVER_CHILD"
_SIGNAL, _EXIT = b"S", b"X"


def _send(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(struct.pack("!I", len(payload)) + payload)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        data += chunk
    return data


def run_through_server(argv: list[str]) -> int | None:
    """Run ``python -m prompt_ot argv`` in a child of the server named by $PROMPT_OT_FORKSERVER; its exit status,
    or None when there is no server to ask (the caller then runs the command itself)."""
    path = os.environ.get(ENV)
    if not path or os.environ.get(_IN_CHILD):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [struct.pack("!I", len(request))], [0, 1, 2])
    conn.sendall(request)

    def forward(signum, _frame):
        try:
            conn.sendall(_SIGNAL + bytes([signum]))
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        reply = _recv_exact(conn, 5)
    except ConnectionError:
        reply = b""
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        conn.close()
    if len(reply) < 5 or reply[:1] != _EXIT:
        print("error: the fork server's child ended without a status (killed?); rerun the job", file=sys.stderr)
        return 1
    status = struct.unpack("!i", reply[1:])[0]
    if status < 0:  # killed by a signal: die by it, as the process itself would have
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status
