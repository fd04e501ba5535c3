# Builds offline, from wheels gathered on the host first (docs/deploy.md):
#   python3 scripts/wheelhouse.py && docker build -t captioner .                                  # CPU, no torch
#   python3 scripts/wheelhouse.py --gpu && docker build --build-arg VARIANT=gpu -t captioner:gpu .   # + torch, CUDA
# BASE: any image with Python 3.11 and its venv module (tests/test_container.py builds on a Debian
# bookworm image it makes itself). VARIANT cpu installs the base install: the service runs the CNN
# and the beam search in OpenVINO. VARIANT gpu adds the gpu extra (torch with its CUDA libraries as
# wheels): the beam search runs on the GPU with `docker run --gpus all`, and no CUDA base image is needed.
ARG BASE=python:3.11-slim
# hadolint ignore=DL3006
FROM ${BASE}
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH HOME=/tmp
WORKDIR /srv/captioner

# The dependencies, each wheel checked against its sha256; this layer is rebuilt only when
# the variant's requirements (the set of wheels) change, not when the code does.
COPY wheelhouse/requirements-${VARIANT}.txt /tmp/requirements.txt
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    python3 -m venv /opt/venv \
    && pip install --no-index --find-links /wheelhouse --require-hashes --no-deps -r /tmp/requirements.txt \
    && pip uninstall --yes --quiet setuptools \
    && rm /tmp/requirements.txt

COPY wheelhouse/captioner-*.whl /tmp/
RUN pip install --no-index --no-deps /tmp/captioner-*.whl && rm /tmp/captioner-*.whl

# A weights folder whose files do not match its manifest fails the build here, with the file named.
COPY weights/ weights/
RUN chmod -R a+rX weights && python -m runtime.weights weights

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
