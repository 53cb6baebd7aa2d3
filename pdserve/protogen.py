"""Generates the Python gRPC modules of pdserve's wire contracts from ``proto/``.

The ``.proto`` files under ``proto/pdserve/v1/`` are the source of truth; the modules this writes
into ``pdserve/v1/`` are build outputs (ignored by git) and are never edited by hand. ``make proto``
runs it; so does the set-up.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
OUT_ROOT = REPO_ROOT


def generate() -> list[Path]:
    """Compiles every ``proto/pdserve/v1/*.proto`` and returns the files written."""
    from grpc_tools import protoc  # build-time dependency only

    protos = sorted((PROTO_ROOT / "pdserve" / "v1").glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT / 'pdserve' / 'v1'}")
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={OUT_ROOT}",
        f"--pyi_out={OUT_ROOT}",
        f"--grpc_python_out={OUT_ROOT}",
        *[str(p) for p in protos],
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return sorted((OUT_ROOT / "pdserve" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    written = generate()
    print(f"generated {len(written)} files under pdserve/v1/", file=sys.stderr)
