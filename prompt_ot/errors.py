"""The one exception type for mistakes a user can make (bad names, paths, parameters, files).

The CLI catches it, prints its message on one line and exits with status 2; anything else is a
programming error and is left to crash with a traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


def unknown_name(kind: str, name: str, known, plural: str | None = None) -> UserError:
    """A uniform message for an unknown dataset, method, backbone, solver, ..."""
    return UserError(f"unknown {kind} {name!r}; known {plural or kind + 's'}: {', '.join(sorted(known))}")
