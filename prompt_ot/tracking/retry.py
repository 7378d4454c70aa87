"""Waiting out a locked SQLite store: recognising the lock and retrying a call with a bounded backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

LOCK_RETRY_SECONDS = 120.0  # total time one call may spend waiting on a locked SQLite database


def _is_locked(exc: BaseException | None) -> bool:
    """A SQLite lock somewhere in the exception chain (MLflow wraps SQLAlchemy's OperationalError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        if "database is locked" in text or "database table is locked" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _retry(call: Callable, *args, deadline_s: float | None = None, **kwargs):
    """Call, retrying on a locked SQLite database with jittered exponential backoff for at most ``deadline_s``."""
    deadline_s = LOCK_RETRY_SECONDS if deadline_s is None else deadline_s
    start, delay = time.monotonic(), 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not _is_locked(exc) or time.monotonic() - start + delay > deadline_s:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)
