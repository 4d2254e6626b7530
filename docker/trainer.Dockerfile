# The trainer with CUDA torch (docs/deploy.md):
#
#   docker compose run --rm trainer train --data /data/celeba/img_align_celeba --preset fast --max-res 128
#   docker compose run --rm trainer export runs/00000-progan-fast-128 --out models/myfaces
#
# The face photos, runs/ and models/ are volumes (docker-compose.yml, profile `train`); nothing of the
# data goes into the image. torch from PyPI brings its own CUDA and cuDNN wheels: the host needs only
# the NVIDIA driver and the NVIDIA Container Toolkit.

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG TORCH=torch==2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# opencv-python (the face-rate metric of `evaluate`) needs libGL and GLib
RUN apt-get update && \
    apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && \
    rm -rf /var/lib/apt/lists/*

# torch first, pinned as the Makefile pins it; then pyproject's dependencies and its `train` extra
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN set -eu; \
    pip install --no-cache-dir "$TORCH"; \
    python /tmp/build/requirements.py /tmp/build/pyproject.toml --extra train --without torch \
      > /tmp/build/requirements.txt; \
    pip install --no-cache-dir -r /tmp/build/requirements.txt; \
    rm -rf /tmp/build

WORKDIR /app
COPY contract/ /app/contract/
COPY trainer/ /app/trainer/
# any uid may run it (`docker compose run --user "$(id -u):$(id -g)"`, so runs/ stays yours)
RUN python -m compileall -q /app/trainer && \
    mkdir -p /app/runs /app/models /cache && chmod 1777 /app/runs /app/models /cache
ENV PROGAN_CACHE=/cache \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
ENTRYPOINT ["python", "-m", "trainer"]
CMD ["--help"]
