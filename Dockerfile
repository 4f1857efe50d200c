# syntax=docker/dockerfile:1
# longdoc: the classification service with its bundled model, CPU torch by default.
#
#   docker build -t longdoc .                                   # CPU (torch from PyTorch's CPU wheel index)
#   docker build -t longdoc:cuda --build-arg TORCH_INDEX_URL=https://pypi.org/simple .   # CUDA build of torch
#
# One uvicorn worker per container: every worker process would hold its own copy of the model and its own
# batcher, so more workers only split the batches and multiply the memory. Scale with replicas behind the
# load balancer (docker-compose.yml) or Kubernetes (docker/k8s/), and size LONGDOC_NUM_THREADS / the CPU limit
# per replica instead.

############################ builder: a virtualenv with torch, the dependencies and the package ############
FROM python:3.11-slim AS builder

# torch comes first and from its own index: PyPI's Linux wheel of torch is the multi-GB CUDA build, PyTorch's
# CPU index serves the ~200 MB CPU build. For GPUs pass a CUDA index, e.g. https://download.pytorch.org/whl/cu128,
# or https://pypi.org/simple (the CUDA build that PyPI serves); docker-compose.gpu.yml does.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
# The dependencies (read from pyproject.toml, pinned by constraints.txt) get their own layer, so an edit to
# the code re-installs only the package. torch==2.13.0 is already satisfied above (a local version such as
# 2.13.0+cpu matches ==2.13.0), so pip keeps the build chosen by TORCH_INDEX_URL.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install --no-cache-dir --constraint constraints.txt --requirement /tmp/requirements.txt
COPY README.md ./
COPY app/ app/
COPY longdoc/ longdoc/
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && python -c "import torch, app.main; print('torch', torch.__version__)"

############################ runtime: the virtualenv, the model, a non-root user ##########################
FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="longdoc" \
      org.opencontainers.image.description="Classify documents of any length with a fine-tuned BERT-family model" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 longdoc \
    && useradd --system --uid 10001 --gid longdoc --home-dir /home/longdoc --create-home \
       --shell /usr/sbin/nologin longdoc

COPY --from=builder /opt/venv /opt/venv
# The bundled default model (weights, tokenizer, longdoc.json serving defaults, model card), read-only.
COPY model_store/ /opt/longdoc/model_store/

# The package is installed into site-packages, so the bundled model is named explicitly. Nothing is ever
# fetched from a model hub at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    LONGDOC_MODEL_DIR=/opt/longdoc/model_store/hyperpartisan-minilm \
    LONGDOC_HOST=0.0.0.0 \
    LONGDOC_PORT=8000

# Fail the build, not the first start, when the model directory is missing (e.g. not trained yet).
RUN test -f "${LONGDOC_MODEL_DIR}/config.json" \
    || { echo "no model at ${LONGDOC_MODEL_DIR}: run 'make train' (or put a checkpoint there) first" >&2; exit 1; }

# Numeric, so that Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# ... and that user must be able to read every model file: COPY keeps the modes of the build context, and
# a model written under umask 077 (root's 0600) would fail every start with "Permission denied".
RUN find "${LONGDOC_MODEL_DIR}" -type f -exec cat {} + > /dev/null \
    || { echo "the model files are not readable by uid 10001: chmod -R a+rX model_store, then build again" >&2; exit 1; }
WORKDIR /home/longdoc
EXPOSE 8000

# Ready = model loaded, warmed up, batcher running, not draining (503 otherwise); python's urllib raises on
# any non-2xx answer, so no curl is needed in the image. start-period covers loading and warm-up.
# start-period: LONGDOC_STARTUP_TIMEOUT_S (600 s); the first passing check ends it (docker-compose.yml)
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LONGDOC_PORT', '8000'), timeout=4)"]

# SIGTERM drains: /health turns 503 at once, accepted requests finish (up to LONGDOC_DRAIN_TIMEOUT_S), then
# the process exits; give `docker stop` / compose's stop_grace_period at least that long.
STOPSIGNAL SIGTERM
# Exec form: the service is PID 1 and receives SIGTERM itself; it handles SIGTERM from its first moment (PID 1
# has no default action), so a stop during start-up exits at once. One worker per container (see the top).
CMD ["longdoc", "serve"]
