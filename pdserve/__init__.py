"""pdserve: disaggregated prefill/decode LLM serving.

The shared package: configuration, the worker registry, the engine wrapper, the local launcher,
the client, the CLI, the benchmark harness, the planner and the prefix-cache index.
"""

__version__ = "0.1.0"
