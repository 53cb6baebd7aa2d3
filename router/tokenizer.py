"""The router's tokenizer: prompts are tokenized once here and travel as token ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pdserve.errors import InvalidRequest

logger = logging.getLogger(__name__)

_CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})


class PromptTokenizer:
    """The served model's tokenizer and chat template."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.vocab_size = len(self._tok)
        self.has_chat_template = bool(getattr(self._tok, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        """Token ids of a plain prompt, with the model's special tokens (as vLLM adds them)."""
        return list(self._tok.encode(text, add_special_tokens=True))

    def render_chat(self, messages: Sequence[tuple[str, str]], *, request_id: str = "") -> str:
        """The chat-templated prompt text, generation prompt added."""
        if not messages:
            raise InvalidRequest("chat.messages must not be empty", request_id=request_id)
        for i, (role, _) in enumerate(messages):
            if role not in _CHAT_ROLES:
                raise InvalidRequest(
                    f"chat.messages[{i}].role must be one of {sorted(_CHAT_ROLES)}, got {role!r}",
                    request_id=request_id,
                )
        if not self.has_chat_template:
            raise InvalidRequest(
                "the served model has no chat template; send a prompt instead",
                request_id=request_id,
            )
        rendered = self._tok.apply_chat_template(
            [{"role": r, "content": c} for r, c in messages],
            add_generation_prompt=True,
            tokenize=False,
        )
        return str(rendered)

    def encode_chat(
        self, messages: Sequence[tuple[str, str]], *, request_id: str = ""
    ) -> list[int]:
        text = self.render_chat(messages, request_id=request_id)
        # The template already wrote the special tokens it wants.
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=True))
