"""Errors of the KV handoff.

KVTransferError            a handoff cannot happen as asked
├── KVVersionError         the parameters speak a contract version this side does not know
└── KVCompatibilityError   the two engines' KV layouts differ (model, dtype, block size, ...)
"""

from __future__ import annotations


class KVTransferError(Exception):
    """A KV handoff cannot happen as asked."""


class KVVersionError(KVTransferError):
    """The transfer parameters carry a contract version this side does not know."""


class KVCompatibilityError(KVTransferError):
    """The prefill and decode engines' KV layouts differ; the message names both values."""
