"""Checks of the token-level requests that workers receive (the router checks its own input
before it tokenizes)."""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.errors import InvalidRequest

MAX_REQUEST_ID_CHARS = 128


def check_request_id(request_id: str, *, required: bool) -> None:
    if not request_id:
        if required:
            raise InvalidRequest("request_id must not be empty")
        return
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise InvalidRequest(
            f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable characters, got "
            f"{request_id[:40]!r} ({len(request_id)} characters)"
        )
    if not request_id.isascii():
        raise InvalidRequest(f"request_id must be ASCII, got {request_id[:40]!r}")


def check_prompt_tokens(
    token_ids: Sequence[int],
    *,
    vocab_size: int,
    max_model_len: int,
    request_id: str = "",
    field: str = "prompt_token_ids",
) -> None:
    """The prompt must be non-empty, within the vocabulary, and leave room for one token."""
    if not token_ids:
        raise InvalidRequest(f"{field} must not be empty", request_id=request_id)
    if len(token_ids) >= max_model_len:
        raise InvalidRequest(
            f"{field} has {len(token_ids)} tokens; the model's context is {max_model_len} "
            f"tokens, so a prompt can have at most {max_model_len - 1}",
            request_id=request_id,
        )
    bad = next((t for t in token_ids if t >= vocab_size), None)
    if bad is not None:
        raise InvalidRequest(
            f"{field} contains token id {bad}, outside the vocabulary (0..{vocab_size - 1})",
            request_id=request_id,
        )
