"""Benchmark workloads: what to send. A workload is a list of sessions, each a list of turns.

Outside the multi-turn workload every session has one turn. In a multi-turn session, turn ``k > 0``
is sent when turn ``k - 1`` has finished, with the prompt ``prompt(k-1) + output(k-1) + user(k)``
(:func:`extend_prompt`): each turn re-sends the whole conversation so far, as a chat client does.

Synthetic prompts are token ids drawn uniformly from ``[MIN_TOKEN_ID, vocab_size)``, so their
lengths are exact; the low ids are skipped because tokenizers keep special tokens there.

Workloads:

- ``random``: input and output lengths uniform in ``[len * (1 - r), len * (1 + r)]`` (vLLM's
  ``--random-range-ratio``).
- ``shared-prefix``: ``num_tenants`` tenants, each with its own system prefix of ``prefix_len``
  tokens; every request is a uniformly drawn tenant's prefix followed by a fresh question of
  ``question_len`` tokens.
- ``multi-turn``: conversations of ``turns`` turns; the first prompt has ``input_len`` tokens and
  each later user turn ``user_turn_len`` tokens.
- ``jsonl``: one JSON object per line, ``{"prompt": "...", "output_len": N}`` (a text prompt,
  tokenized by the router) or ``{"prompt_len": M, "output_len": N}`` (random token ids).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "MIN_TOKEN_ID",
    "WORKLOAD_NAMES",
    "Prompt",
    "Session",
    "Turn",
    "WorkloadError",
    "WorkloadSpec",
    "build_workload",
    "extend_prompt",
    "jsonl_workload",
    "multi_turn_workload",
    "random_workload",
    "shared_prefix_workload",
]

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 49152
"""Vocabulary size of the default model (SmolLM2-135M-Instruct)."""
MIN_TOKEN_ID = 100
"""Smallest token id of synthetic prompts; ids below are left to special tokens."""
WORKLOAD_NAMES = ("random", "shared-prefix", "multi-turn", "jsonl")
"""The workloads :func:`build_workload` knows."""


class WorkloadError(ValueError):
    """A workload cannot be built: bad parameters or a malformed JSONL file."""


@dataclass(frozen=True)
class Prompt:
    """A prompt as token ids or as text: exactly one of the two is set."""

    ids: tuple[int, ...] | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if (self.ids is None) == (self.text is None):
            raise ValueError("a Prompt has exactly one of ids and text")

    @property
    def num_tokens(self) -> int | None:
        """The length in tokens for token-id prompts; None for text (the router tokenizes)."""
        return None if self.ids is None else len(self.ids)


@dataclass(frozen=True)
class Turn:
    """One request of a session."""

    prompt: Prompt
    """The whole prompt of a first turn; the new user part of a later turn."""
    output_len: int
    """Exact number of tokens to generate."""
    tenant: int | None = None
    """Tenant index (shared-prefix workload)."""


@dataclass(frozen=True)
class Session:
    """Turns sent one after the other; a later turn extends the previous one (module doc)."""

    turns: tuple[Turn, ...]


def extend_prompt(previous: Prompt, output_ids: Sequence[int], output_text: str,
                  user: Prompt) -> Prompt:
    """The next turn's prompt: the previous prompt, the previous output, then the user turn.

    Raises:
        ValueError: ``previous`` and ``user`` are not both token ids or both text.
    """
    if previous.ids is not None and user.ids is not None:
        return Prompt(ids=(*previous.ids, *output_ids, *user.ids))
    if previous.text is not None and user.text is not None:
        return Prompt(text=previous.text + output_text + user.text)
    raise ValueError("a multi-turn session mixes token-id and text prompts")


@dataclass(frozen=True)
class WorkloadSpec:
    """Parameters of a workload; which fields matter depends on ``name`` (module doc)."""

    name: str = "random"
    """One of :data:`WORKLOAD_NAMES`."""
    num_requests: int = 100
    """Sessions to build (conversations for multi-turn; lines read at most for jsonl)."""
    input_len: int = 512
    """Prompt tokens (random), first-turn prompt tokens (multi-turn)."""
    output_len: int = 128
    """Output tokens per request (all synthetic workloads)."""
    range_ratio: float = 0.0
    """Relative spread of the random workload's lengths, in [0, 1)."""
    num_tenants: int = 4
    """Tenants of the shared-prefix workload."""
    prefix_len: int = 1024
    """System-prefix tokens per tenant."""
    question_len: int = 64
    """Question tokens after a tenant's prefix."""
    turns: int = 3
    """Turns per multi-turn conversation."""
    user_turn_len: int = 64
    """Tokens of each later user turn of a conversation."""
    dataset: Path | None = None
    """JSONL file of the jsonl workload."""
    vocab_size: int = DEFAULT_VOCAB_SIZE
    """Vocabulary size; synthetic ids are drawn from [MIN_TOKEN_ID, vocab_size)."""
    seed: int = 0
    """Seed of every random choice of the workload."""

    def __post_init__(self) -> None:
        if self.name not in WORKLOAD_NAMES:
            raise WorkloadError(
                f"unknown workload {self.name!r}; choose from {', '.join(WORKLOAD_NAMES)}"
            )
        if self.num_requests < 1:
            raise WorkloadError(f"num_requests must be >= 1, got {self.num_requests}")
        for name in ("input_len", "output_len", "num_tenants", "turns"):
            if getattr(self, name) < 1:
                raise WorkloadError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prefix_len", "question_len", "user_turn_len"):
            if getattr(self, name) < 0:
                raise WorkloadError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.range_ratio < 1:
            raise WorkloadError(f"range_ratio must be in [0, 1), got {self.range_ratio}")
        if self.vocab_size <= MIN_TOKEN_ID:
            raise WorkloadError(f"vocab_size must be > {MIN_TOKEN_ID}, got {self.vocab_size}")
        if self.name == "jsonl" and self.dataset is None:
            raise WorkloadError("the jsonl workload needs a dataset file")
        if self.name == "shared-prefix":
            if self.prefix_len + self.question_len < 1:
                raise WorkloadError("prefix_len + question_len must be >= 1")
            if self.num_tenants > self.vocab_size - MIN_TOKEN_ID:
                raise WorkloadError("num_tenants must not exceed the usable vocabulary")


def _random_ids(rng: np.random.Generator, num: int, vocab_size: int) -> tuple[int, ...]:
    return tuple(int(x) for x in rng.integers(MIN_TOKEN_ID, vocab_size, size=num))


def _lengths(rng: np.random.Generator, mean: int, ratio: float, num: int) -> list[int]:
    low = max(1, math.floor(mean * (1 - ratio)))
    high = max(low, math.ceil(mean * (1 + ratio)))
    return [int(x) for x in rng.integers(low, high + 1, size=num)]


def random_workload(num: int, input_len: int, output_len: int, range_ratio: float = 0.0,
                    vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0) -> list[Session]:
    """``num`` one-turn sessions of random token ids with lengths spread by ``range_ratio``."""
    rng = np.random.default_rng(seed)
    in_lens = _lengths(rng, input_len, range_ratio, num)
    out_lens = _lengths(rng, output_len, range_ratio, num)
    return [
        Session((Turn(Prompt(ids=_random_ids(rng, n_in, vocab_size)), n_out),))
        for n_in, n_out in zip(in_lens, out_lens, strict=True)
    ]


def shared_prefix_workload(num: int, num_tenants: int, prefix_len: int, question_len: int,
                           output_len: int, vocab_size: int = DEFAULT_VOCAB_SIZE,
                           seed: int = 0) -> list[Session]:
    """``num`` one-turn sessions, each a random tenant's shared prefix plus a fresh question.

    The prefixes of different tenants start with different token ids, so no two tenants share
    a cached block.
    """
    rng = np.random.default_rng(seed)
    prefixes: list[tuple[int, ...]] = []
    if prefix_len > 0:
        firsts = rng.choice(np.arange(MIN_TOKEN_ID, vocab_size), size=num_tenants, replace=False)
        for first in firsts:
            prefixes.append((int(first), *_random_ids(rng, prefix_len - 1, vocab_size)))
    else:
        prefixes = [()] * num_tenants
    sessions = []
    for tenant in rng.integers(0, num_tenants, size=num):
        ids = prefixes[int(tenant)] + _random_ids(rng, question_len, vocab_size)
        sessions.append(Session((Turn(Prompt(ids=ids), output_len, tenant=int(tenant)),)))
    return sessions


def multi_turn_workload(num: int, turns: int, input_len: int, user_turn_len: int,
                        output_len: int, vocab_size: int = DEFAULT_VOCAB_SIZE,
                        seed: int = 0) -> list[Session]:
    """``num`` conversations of ``turns`` turns: a first prompt, then short user turns."""
    rng = np.random.default_rng(seed)
    sessions = []
    for _ in range(num):
        first = Turn(Prompt(ids=_random_ids(rng, input_len, vocab_size)), output_len)
        later = [
            Turn(Prompt(ids=_random_ids(rng, user_turn_len, vocab_size)), output_len)
            for _ in range(turns - 1)
        ]
        sessions.append(Session((first, *later)))
    return sessions


def jsonl_workload(path: Path, num: int | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
                   seed: int = 0) -> list[Session]:
    """One-turn sessions read from a JSONL file (module doc), at most ``num`` of them.

    Raises:
        WorkloadError: the file cannot be read, or a line is not a valid object; the message
            names the file and line.
    """
    rng = np.random.default_rng(seed)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WorkloadError(f"cannot read the dataset {path}: {exc.strerror or exc}") from exc
    sessions: list[Session] = []
    for lineno, line in enumerate(lines, start=1):
        if num is not None and len(sessions) >= num:
            break
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(item, dict):
            raise WorkloadError(f"{where}: expected a JSON object")
        output_len = item.get("output_len")
        if not isinstance(output_len, int) or isinstance(output_len, bool) or output_len < 1:
            raise WorkloadError(f"{where}: output_len must be an integer >= 1")
        if "prompt" in item:
            if not isinstance(item["prompt"], str) or not item["prompt"]:
                raise WorkloadError(f"{where}: prompt must be a non-empty string")
            prompt = Prompt(text=item["prompt"])
        elif "prompt_len" in item:
            prompt_len = item["prompt_len"]
            if not isinstance(prompt_len, int) or isinstance(prompt_len, bool) or prompt_len < 1:
                raise WorkloadError(f"{where}: prompt_len must be an integer >= 1")
            prompt = Prompt(ids=_random_ids(rng, prompt_len, vocab_size))
        else:
            raise WorkloadError(f"{where}: needs a prompt or a prompt_len")
        sessions.append(Session((Turn(prompt, output_len),)))
    if not sessions:
        raise WorkloadError(f"{path}: no requests in the file")
    if num is not None and len(sessions) < num:
        logger.warning("%s holds %d requests, fewer than the %d asked for", path,
                       len(sessions), num)
    return sessions


def build_workload(spec: WorkloadSpec) -> list[Session]:
    """The sessions described by ``spec``."""
    if spec.name == "random":
        return random_workload(spec.num_requests, spec.input_len, spec.output_len,
                               spec.range_ratio, spec.vocab_size, spec.seed)
    if spec.name == "shared-prefix":
        return shared_prefix_workload(spec.num_requests, spec.num_tenants, spec.prefix_len,
                                      spec.question_len, spec.output_len, spec.vocab_size,
                                      spec.seed)
    if spec.name == "multi-turn":
        return multi_turn_workload(spec.num_requests, spec.turns, spec.input_len,
                                   spec.user_turn_len, spec.output_len, spec.vocab_size,
                                   spec.seed)
    assert spec.dataset is not None  # checked by WorkloadSpec
    return jsonl_workload(spec.dataset, spec.num_requests, spec.vocab_size, spec.seed)
