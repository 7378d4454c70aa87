"""A real ``mlflow server`` for the tests, in its own process group, stopped by group; restartable on the same port
and store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.workflow import quiet_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` in its own process group (it spawns uvicorn workers), stopped by group: SIGTERM, then
    SIGKILL. Restartable on the same port and store."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"

    def start(self, timeout: float = 180) -> str | None:
        """Start and wait for /health; None when it answers, else why not (the server is then stopped)."""
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'server.db'}",
            "--artifacts-destination",
            str(self.artifacts),
            "--workers",
            "1",
        ]
        # no background job runner: it would start seven huey consumers (~1 GB) that nothing here uses
        server_env = quiet_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        server_env.pop("MLFLOW_TRACKING_URI", None)
        log = open(self.folder / "server.log", "a")
        self.proc = subprocess.Popen(
            cmd, cwd=self.folder, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self.proc.poll()) is not None:
                lines = (self.folder / "server.log").read_text().strip().splitlines()
                errors = [line for line in lines if "error" in line.lower()]  # the cause, not the shutdown after it
                self.stop()
                return f"it exited with {code}: {(errors or lines or ['no output'])[-1]}"
            if self.healthy():
                return None
            time.sleep(0.25)
        self.stop()
        return f"/health did not answer within {timeout:.0f} s"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, hard: bool = False) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after 30 s (at once when ``hard``); return once
        the group is gone."""
        if self.proc is None:
            return
        group, proc, self.proc = self.proc.pid, self.proc, None
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10))[hard:]:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                proc.poll()  # reap the leader, so it does not keep the group alive as a zombie
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                continue
            break
        proc.wait(timeout=10)
