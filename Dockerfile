# CPU image by default; `--build-arg BASE=cuda` builds on NVIDIA's CUDA runtime image instead
# (run it with `docker run --gpus all`; CAPTIONER_DEVICE=auto then picks the GPU).
ARG BASE=cpu

FROM python:3.11-slim AS base-cpu

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 AS base-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python

# hadolint ignore=DL3006
FROM base-${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
WORKDIR /srv/captioner

# The same install as `make serve`: the project itself, whose pyproject.toml pins torch and torchvision.
COPY pyproject.toml README.md ./
COPY model/ model/
COPY app/ app/
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && python -m pip install --upgrade pip \
    && python -m pip install .

COPY weights/ weights/
RUN useradd --create-home --uid 10001 captioner
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
