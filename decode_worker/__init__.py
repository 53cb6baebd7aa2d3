"""The decode worker: pulls a prompt's KV cache from a prefill worker and streams tokens."""

from decode_worker.servicer import DecodeServicer

__all__ = ["DecodeServicer"]
