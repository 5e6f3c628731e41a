# qcat worker image. CPU torch by default; a CUDA build with --build-arg TORCH_INDEX=cu128.
#   docker build -t qcat:cpu .
#   docker build -t qcat:cuda --build-arg TORCH_INDEX=cu128 .
# Entry point `qcat`, default command `worker`; the CronJob runs `qcat retrain ...` from the same image.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/qcat
ENV PATH=/opt/qcat/bin:$PATH
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY qcat ./qcat
COPY worker ./worker
COPY training ./training
RUN pip install --no-cache-dir . && rm -rf /src

FROM python:${PYTHON_VERSION}-slim
ARG TORCH_INDEX=cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A CUDA build compiles its forward pass (Triton), which builds small C launchers at run time: it needs a C compiler.
# Unpinned: Debian's security updates replace exact versions, and gcc's own version does not matter to Triton.
# hadolint ignore=DL3008
RUN if [ "${TORCH_INDEX}" != "cpu" ]; then \
        apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; \
    fi
RUN useradd --system --uid 10001 --create-home --home-dir /home/qcat qcat \
    && mkdir -p /models /data \
    && chown qcat:qcat /models /data
COPY --from=build /opt/qcat /opt/qcat
ENV PATH=/opt/qcat/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    QCAT_DATA_DIR=/tmp/qcat-worker \
    XDG_CACHE_HOME=/tmp/cache \
    TRITON_CACHE_DIR=/tmp/cache/triton \
    QCAT_CORRECTIONS_DIR=/data/corrections \
    QCAT_REFUSED_DIR=/data/refused \
    QCAT_WEB_HOST=0.0.0.0 \
    QCAT_WEB_PORT=6066
# /models: the Hugging Face cache (or a provisioned model directory); /data: corrections and the adapter registry;
# /tmp (writable under a read-only root): the worker's state and the cache of adapters from a registry in a bucket
VOLUME ["/models", "/data"]
USER 10001
WORKDIR /home/qcat
EXPOSE 6066
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['QCAT_WEB_PORT']}/healthz\", timeout=4)"]
ENTRYPOINT ["qcat"]
CMD ["worker"]
