"""The vLLM engine embedded in a worker process.

:class:`Engine` wraps ``vllm.v1.engine.async_llm.AsyncLLM``: it sets the environment the engine
reads at start (CPU KV-cache size, core binding, NIXL side channel), builds the engine arguments
(dtype float32 on CPU, prefix caching, the KV connector of the worker's role, KV-cache events),
streams request outputs as deltas, and keeps load and transfer counters from vLLM's own stat
loggers. vLLM is imported lazily so that the rest of pdserve imports without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kv_transfer import ConnectorSpec, KVLayout, TransferStats, compat_hash, connector_config
from kv_transfer.connector import side_channel_env
from pdserve.sampling import Sampling

if TYPE_CHECKING:
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

RELEASE_REPEAT_S = (2.0, 10.0)
"""Delays after which a release to a prefill engine not yet connected is repeated."""

__all__ = ["Engine", "EngineLoad", "EngineSpec", "reap_with_this_process"]


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine is built from."""

    model_path: str
    """Local model directory."""
    served_name: str
    dtype: str = "auto"
    max_model_len: int = 2048
    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    connector: ConnectorSpec | None = None
    """KV transfer role; None: a plain engine that computes every prompt itself."""
    kv_events: dict[str, Any] | None = None
    """vLLM ``kv_events_config`` (KV-cache events publisher), or None."""
    cpu_threads_bind: str = ""
    enforce_eager: bool = False
    seed: int = 0
    chunked_prefill: bool | None = None
    """Split long prompts over scheduler steps. None: on, except on CPU, where vLLM's seeded
    sampling fails on a split prompt (its CPU random generators cannot rewind) and kills the
    engine; a request with a seed (every sampled request through the router) would do that."""


@dataclass
class EngineLoad:
    """The latest load figures vLLM's scheduler reported, and running totals."""

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    prompt_tokens_computed: int = 0
    prompt_tokens_local_hit: int = 0
    prompt_tokens_transferred: int = 0
    updated_at: float = field(default_factory=time.monotonic)


# -- engine processes die with their worker ---------------------------------------------------

_WATCHDOG = """
import ctypes, os, signal, sys
parent, pids = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def reap(*_):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)
signal.signal(signal.SIGTERM, reap)
ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    reap()
while True:
    signal.pause()
"""


def reap_with_this_process(pids: list[int]) -> subprocess.Popen[bytes] | None:
    """Starts a watchdog that SIGKILLs ``pids`` when this process dies, however it dies.

    vLLM runs its engine core (and, on CPUs, a model-runner process) as children of the worker.
    A worker killed with SIGKILL (or by the OOM killer) cannot stop them: they would live on,
    holding their KV cache, spinning their CPU threads and keeping the NIXL side-channel port
    bound. The watchdog is told by the kernel (``PR_SET_PDEATHSIG``) when the worker exits and
    then kills them. Linux only; elsewhere returns None."""
    if not sys.platform.startswith("linux") or not pids:
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), *map(str, pids)],
        stdin=subprocess.DEVNULL,
    )


def _is_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class Engine:
    """One in-process vLLM engine."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.load = EngineLoad()
        self.transfers = TransferStats()
        self._llm: AsyncLLM | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._known_prefill_engines: set[str] = set()
        """Prefill engines this (decode) engine has pulled from or released to: connected."""
        self._repeats: set[asyncio.Task[None]] = set()
        self.block_size = 0
        self.vocab_size = 0
        self.compat_hash = ""
        self.max_model_len = spec.max_model_len
        self.eos_token_id: int | None = None
        self.on_prefix_cache_reset: list[Callable[[], Awaitable[None]]] = []
        """Awaited after each successful :meth:`reset_prefix_cache`."""

    @property
    def llm(self) -> AsyncLLM:
        if self._llm is None:
            raise RuntimeError("the engine is not started")
        return self._llm

    async def start(self) -> None:
        """Creates the engine (about 25 s for a small model on 2 CPU cores)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        spec = self.spec
        cpu = _is_cpu()
        env: dict[str, str] = {}
        if cpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(spec.kv_cache_gib)))
            if spec.cpu_threads_bind:
                env["VLLM_CPU_OMP_THREADS_BIND"] = spec.cpu_threads_bind
        if spec.connector is not None:
            env.update(side_channel_env(spec.connector))
        os.environ.update(env)  # read by the engine-core process vLLM spawns next

        dtype = spec.dtype
        if dtype == "auto" and cpu:
            dtype = "float32"  # bf16 is 4-5x slower on CPUs without AMX
        chunked_prefill = (not cpu) if spec.chunked_prefill is None else spec.chunked_prefill
        kwargs: dict[str, Any] = dict(
            model=spec.model_path,
            served_model_name=spec.served_name,
            dtype=dtype,
            max_model_len=spec.max_model_len,
            max_num_seqs=spec.max_num_seqs,
            enable_prefix_caching=True,
            enable_chunked_prefill=chunked_prefill,
            seed=spec.seed,
            disable_log_stats=False,
            enforce_eager=spec.enforce_eager,
        )
        if not chunked_prefill:
            # Without chunking a whole prompt must fit in one step's token budget.
            kwargs["max_num_batched_tokens"] = max(2048, spec.max_model_len)
        if not cpu:
            kwargs["gpu_memory_utilization"] = spec.gpu_memory_utilization
        if spec.connector is not None:
            kwargs["kv_transfer_config"] = connector_config(spec.connector)
        if spec.kv_events is not None:
            from vllm.config.kv_events import KVEventsConfig

            kwargs["kv_events_config"] = KVEventsConfig(**spec.kv_events)
        args = AsyncEngineArgs(**kwargs)
        started = time.monotonic()
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stat_logger_factory()])
        import psutil

        self._watchdog = reap_with_this_process(
            [p.pid for p in psutil.Process().children(recursive=True)]
        )
        config = self._llm.vllm_config
        self.block_size = int(config.cache_config.block_size)
        self.max_model_len = int(config.model_config.max_model_len)
        self.vocab_size = int(config.model_config.get_vocab_size())
        self.eos_token_id = self._llm.get_tokenizer().eos_token_id
        self.compat_hash = compat_hash(self.kv_layout())
        logger.info(
            "engine for %s started in %.1f s (block size %d, dtype %s, connector %s, "
            "chunked prefill %s)",
            spec.served_name,
            time.monotonic() - started,
            self.block_size,
            dtype,
            spec.connector.role if spec.connector else "none",
            "on" if chunked_prefill else "off",
        )

    def kv_layout(self) -> KVLayout:
        """What a peer engine must share with this one to exchange KV blocks."""
        config = self.llm.vllm_config
        model = config.model_config
        parallel = config.parallel_config
        digest = hashlib.sha256(
            (Path(self.spec.model_path) / "config.json").read_bytes()
        ).hexdigest()[:12]
        return KVLayout(
            model_id=f"{self.spec.served_name}@{digest}",
            kv_dtype=str(config.cache_config.cache_dtype) + "/" + str(model.dtype),
            block_size=self.block_size,
            num_layers=int(model.get_num_layers(parallel)),
            num_kv_heads=int(model.get_total_num_kv_heads()),
            head_size=int(model.get_head_size()),
            tp_size=int(parallel.tensor_parallel_size),
        )

    def kv_bytes_per_block(self) -> int:
        layout = self.kv_layout()
        itemsize = 4 if "float32" in layout.kv_dtype else 2
        return (
            2
            * layout.num_layers
            * layout.num_kv_heads
            * layout.head_size
            * (layout.block_size * itemsize)
        )

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: Sampling,
        *,
        max_tokens: int | None = None,
        kv_transfer_params: dict[str, Any] | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        """Streams the request's outputs as deltas; closing the iterator early aborts it."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        extra_args = {"kv_transfer_params": kv_transfer_params} if kv_transfer_params else None
        params = SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            stop_token_ids=list(sampling.stop_token_ids) or None,
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
            extra_args=extra_args,
        )
        stream = self.llm.generate(
            TokensPrompt(prompt_token_ids=prompt_token_ids), params, request_id
        )
        # The first output comes after the pull: from then on the engines are connected.
        pulled_from = str(kv_transfer_params.get("remote_engine_id")) if kv_transfer_params else ""
        finished = False
        try:
            async for output in stream:
                if pulled_from:
                    self._known_prefill_engines.add(pulled_from)
                    pulled_from = ""
                finished = output.finished
                yield output
        finally:
            if not finished:
                await self.llm.abort(request_id)

    @property
    def is_dead(self) -> bool:
        """True once the engine-core process has failed; the worker must then exit."""
        return self._llm is not None and bool(self._llm.errored)

    def num_unfinished_requests(self) -> int:
        """Requests the engine holds right now (running, waiting or being aborted)."""
        return int(self.llm.output_processor.get_num_unfinished_requests())

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    async def reset_prefix_cache(self) -> bool:
        """Empties the prefix cache; False (and nothing changed) while requests are running.
        After a reset, each of ``on_prefix_cache_reset`` is awaited."""
        if not await self.llm.reset_prefix_cache():
            return False
        for listener in self.on_prefix_cache_reset:
            await listener()
        return True

    async def release_remote(self, request_id: str, kv_transfer_params: dict[str, Any]) -> None:
        """Frees blocks a prefill engine holds for a pull that will not happen (decode side).

        The first time this engine deals with a given prefill engine it must connect to it
        (NIXL handshake) before it can tell it anything, and vLLM drops the notification of a
        rejected request that waited for that connection: the blocks would stay held until
        their lease runs out. So for a prefill engine not known to be connected the release is
        repeated after :data:`RELEASE_REPEAT_S` (once the connection is up). A repeat that finds
        the blocks already freed makes the prefill engine log that it got a notification for
        an unknown request, at most once per repeat."""
        await self.llm.notify_kv_transfer_request_rejected(request_id, kv_transfer_params)
        self.transfers.record_release()
        engine_id = str(kv_transfer_params.get("remote_engine_id"))
        if engine_id in self._known_prefill_engines:
            return
        self._known_prefill_engines.add(engine_id)
        task = asyncio.get_running_loop().create_task(
            self._repeat_release(request_id, kv_transfer_params)
        )
        self._repeats.add(task)
        task.add_done_callback(self._repeats.discard)

    async def _repeat_release(self, request_id: str, kv_transfer_params: dict[str, Any]) -> None:
        for attempt, delay_s in enumerate(RELEASE_REPEAT_S, start=1):
            await asyncio.sleep(delay_s)
            try:
                await self.llm.notify_kv_transfer_request_rejected(
                    f"{request_id}-again{attempt}", kv_transfer_params
                )
            except Exception as exc:  # the engine is gone: the lease frees the blocks
                logger.warning("[%s] repeating the release failed: %s", request_id, exc)
                return

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        if self._watchdog is not None:  # the engine's processes are gone: stand it down
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None

    def _stat_logger_factory(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        engine = self

        class _LoadLogger(StatLoggerBase):
            """Feeds vLLM's per-step scheduler and iteration stats into the engine's counters."""

            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                load = engine.load
                if scheduler_stats is not None:
                    load.num_running = int(scheduler_stats.num_running_reqs)
                    load.num_waiting = int(
                        scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                    )
                    load.kv_usage = float(scheduler_stats.kv_cache_usage)
                    load.updated_at = time.monotonic()
                    if scheduler_stats.kv_connector_stats:
                        engine.transfers.observe_connector_stats(scheduler_stats.kv_connector_stats)
                if iteration_stats is not None:
                    prompt = iteration_stats.prompt_token_stats
                    load.prompt_tokens_computed += int(prompt.computed)
                    load.prompt_tokens_local_hit += int(prompt.local_cache_hit)
                    load.prompt_tokens_transferred += int(prompt.external_kv_transfer)

            def log_engine_initialized(self) -> None:
                pass

        return _LoadLogger
