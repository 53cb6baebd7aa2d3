"""Port allocation for servers and side channels that share one machine.

Several workers on one machine must not collide on gRPC or NIXL side-channel ports. Asking the
kernel for a free port (binding port 0) and handing it to the engine leaves a short window in
which another process could take it; :func:`allocate_port` keeps a per-process record of what it
handed out so that workers started from one launcher never get the same port twice.
"""

from __future__ import annotations

import socket
import threading

_given: set[int] = set()
_lock = threading.Lock()


def allocate_port(host: str = "127.0.0.1", *, span: int = 1) -> int:
    """A free TCP port on ``host`` (with the ``span - 1`` ports above it free too, for engines
    that use one side-channel port per tensor-parallel rank)."""
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        candidates = range(port, port + span)
        if port + span - 1 > 65535:
            continue
        with _lock:
            if any(p in _given for p in candidates):
                continue
            if all(_is_free(host, p) for p in candidates[1:]):
                _given.update(candidates)
                return port
    raise OSError(f"no run of {span} free port(s) found on {host}")


def _is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
