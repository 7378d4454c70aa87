"""A small HTTP file server on 127.0.0.1 for the download tests: ``LocalServer`` serves the bytes in its ``files``
({path: bytes}) with Range support, answers 404 for every other path, records each request's path and Range header,
and can make a path misbehave (``rules``); ``serving()`` runs one for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    """Serves ``files`` on 127.0.0.1 with Range support; ``rules`` make a path misbehave."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.rules: dict[str, dict] = {}  # path -> {"cut_after": [n, ...], "status": code, "body": bytes, ...}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                rule = server.rules.get(self.path, {})
                if "status" in rule:
                    self.send_error(rule["status"])
                    return
                if rule.get("html"):
                    body = b"<html>Quota exceeded</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = rule.get("body", server.files.get(self.path))
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                wanted = self.headers.get("Range")
                if wanted and not rule.get("ignore_range"):
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cuts = rule.get("cut_after", [])
                if cuts:  # send part of the body, then drop the connection
                    self.wfile.write(body[: cuts.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    @property
    def paths(self) -> list[str]:
        """The path of each request, in order."""
        return [path for path, _ in self.requests]


@contextlib.contextmanager
def serving() -> Iterator[LocalServer]:
    """A ``LocalServer`` running for the ``with`` block, shut down after it."""
    server = LocalServer()
    try:
        yield server
    finally:
        server.close()
