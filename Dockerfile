# ragops service image (CPU). Build: docker build -t ragops .
# torch comes first and pinned; pass --build-arg TORCH_INDEX_URL=<a PyTorch CPU wheel index> to get the CPU
# build instead of the default (CUDA) wheel.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAGOPS_DATA_DIR=/data \
    RAGOPS_MODELS_DIR=/opt/ragops/models

WORKDIR /opt/ragops
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL"; \
    else pip install torch==2.13.0; fi
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
COPY retrieval ./retrieval
COPY serving ./serving
RUN sed -i 's/^torch==.*$//' constraints.txt && pip install --constraint constraints.txt .
# Make the int8 ONNX export at build time, so a container starts without it.
RUN python -c "from pathlib import Path; from retrieval.embedding import OnnxEmbedder; OnnxEmbedder('all-MiniLM-L6-v2', Path('/opt/ragops/models'))"
COPY data ./data

RUN useradd --system --uid 10001 ragops && mkdir -p /data && chown ragops /data
USER ragops
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["ragops", "serve", "--host", "0.0.0.0", "--port", "8000"]
