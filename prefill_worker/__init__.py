"""The prefill worker: computes a prompt's KV cache and holds it for a decode worker to pull."""

from prefill_worker.servicer import PrefillServicer

__all__ = ["PrefillServicer"]
