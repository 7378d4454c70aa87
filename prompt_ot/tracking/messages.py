"""How tracking talks to the user: one-line warnings, short failure reasons, URIs with credentials hidden."""

from __future__ import annotations

import re
import sys


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 200 else text[:197] + "..."


def _redact(uri: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", uri)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
