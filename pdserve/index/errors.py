"""Errors of the prefix-cache index.

::

    KVIndexError            any index failure; the router falls back to load-only routing
    ├── IndexUnavailable    the backing store cannot be reached (refused, reset, timed out)
    └── IndexCommandError   the backing store answered with an error (e.g. out of memory)
"""

from __future__ import annotations

__all__ = ["IndexCommandError", "IndexUnavailable", "KVIndexError"]


class KVIndexError(Exception):
    """A prefix-cache index operation failed; routing can go on without the index."""


class IndexUnavailable(KVIndexError):
    """The index's backing store cannot be reached."""


class IndexCommandError(KVIndexError):
    """The index's backing store rejected a command."""
