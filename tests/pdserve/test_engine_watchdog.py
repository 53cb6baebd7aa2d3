"""An engine's child processes die with their worker, even when it is killed with SIGKILL
(plain processes stand in for the worker and its engine here; no engine is needed)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

_WORKER = """
import subprocess, sys, time
from pdserve.engine import reap_with_this_process
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
reap_with_this_process([engine.pid])
print(engine.pid, flush=True)
time.sleep(120)
"""


def _wait_gone(pid: int, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_engine_processes_die_when_the_worker_is_killed() -> None:
    worker = subprocess.Popen([sys.executable, "-c", _WORKER], stdout=subprocess.PIPE)
    engine_pid = 0
    try:
        assert worker.stdout is not None
        engine_pid = int(worker.stdout.readline())
        assert psutil.Process(engine_pid).is_running()
        worker.kill()
        worker.wait()
        assert _wait_gone(engine_pid), "the engine process outlived its killed worker"
    finally:
        if worker.poll() is None:
            worker.kill()
        if engine_pid and psutil.pid_exists(engine_pid):
            psutil.Process(engine_pid).kill()
