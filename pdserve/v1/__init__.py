"""pdserve's wire contracts, version 1: modules generated from ``proto/pdserve/v1/*.proto``.

Import the generated modules from here, e.g. ``from pdserve.v1 import generation_pb2``.
They are build outputs: ``make proto`` (part of ``make setup``) writes them.
"""

from pathlib import Path

if not (Path(__file__).parent / "generation_pb2.py").exists():
    raise ImportError(
        "pdserve's gRPC modules are not generated yet: run `make proto` "
        "(or `python -m pdserve.protogen`) in the repository root"
    )
