"""Validation of the sampling parameters of a request, shared by the router and the workers.

Plain Python: turns a ``pdserve.v1.SamplingParams`` message into a checked :class:`Sampling`
or raises :class:`~pdserve.errors.InvalidRequest` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdserve.errors import InvalidRequest
from pdserve.v1 import generation_pb2

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 64


@dataclass(frozen=True)
class Sampling:
    """Checked sampling parameters (defaults filled in)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def to_proto(self) -> generation_pb2.SamplingParams:
        msg = generation_pb2.SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=list(self.stop),
            stop_token_ids=list(self.stop_token_ids),
            ignore_eos=self.ignore_eos,
        )
        if self.seed is not None:
            msg.seed = self.seed
        return msg


def check_sampling(
    msg: generation_pb2.SamplingParams,
    *,
    default_max_tokens: int,
    vocab_size: int | None = None,
    request_id: str = "",
) -> Sampling:
    """Validates ``msg``; raises ``InvalidRequest`` naming the first bad field."""

    def bad(text: str) -> InvalidRequest:
        return InvalidRequest(text, request_id=request_id)

    max_tokens = msg.max_tokens if msg.HasField("max_tokens") else default_max_tokens
    if max_tokens < 1:
        raise bad(f"sampling.max_tokens must be >= 1, got {max_tokens}")
    temperature = msg.temperature if msg.HasField("temperature") else 1.0
    if not math.isfinite(temperature) or temperature < 0:
        raise bad(f"sampling.temperature must be a finite number >= 0, got {temperature}")
    top_p = msg.top_p if msg.HasField("top_p") else 1.0
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise bad(f"sampling.top_p must be in (0, 1], got {top_p}")
    top_k = msg.top_k if msg.HasField("top_k") else 0
    if top_k < -1:
        raise bad(f"sampling.top_k must be -1, 0 (disabled) or a positive count, got {top_k}")
    if len(msg.stop) > MAX_STOP_STRINGS:
        raise bad(f"sampling.stop has {len(msg.stop)} strings; at most {MAX_STOP_STRINGS}")
    for text in msg.stop:
        if not text or len(text) > MAX_STOP_STRING_CHARS:
            raise bad(
                f"sampling.stop strings must be 1..{MAX_STOP_STRING_CHARS} characters, "
                f"got {text[:40]!r} ({len(text)} characters)"
            )
    if len(msg.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise bad(f"sampling.stop_token_ids has {len(msg.stop_token_ids)} ids; at most 64")
    if vocab_size is not None:
        for token in msg.stop_token_ids:
            if token >= vocab_size:
                raise bad(
                    f"sampling.stop_token_ids contains {token}, outside the vocabulary "
                    f"(0..{vocab_size - 1})"
                )
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=0 if top_k in (0, -1) else top_k,
        seed=msg.seed if msg.HasField("seed") else None,
        stop=tuple(msg.stop),
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
    )
