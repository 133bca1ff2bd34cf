"""The one error of serving's process management: a start, stop or key that cannot go on. Its
message says why and what to do; `python -m serving` prints it as `error: ...` and exits 1."""

from __future__ import annotations


class ServeError(Exception):
    """A start or stop that cannot go on; the message says why and what to do."""
