# The face service: FastAPI + onnxruntime, never torch (docs/deploy.md).
#
#   docker build -f docker/service.Dockerfile -t progan-faces/service:gpu .               # CUDA 13 + cuDNN 9 from pip
#   docker build -f docker/service.Dockerfile --build-arg ORT=cpu -t progan-faces/service:cpu .
#
# ORT=gpu installs onnxruntime-gpu with the NVIDIA CUDA and cuDNN wheels (the host needs only the
# driver and the NVIDIA Container Toolkit); ORT=cpu installs the plain CPU onnxruntime, for an image
# a seventh the size. The models in models/ are baked in at /models; mount another folder there read-only to
# serve other models.

ARG PYTHON_IMAGE=python:3.11-slim

# --- the models, made readable by the service user (the exporter writes 0700 folders, and COPY keeps modes)
FROM ${PYTHON_IMAGE} AS models
COPY models/ /models/
RUN chmod -R u=rwX,go=rX /models

# --- the service
FROM ${PYTHON_IMAGE}
ARG ORT=gpu
ARG ONNXRUNTIME_GPU="onnxruntime-gpu[cuda,cudnn]==1.31.1"
ARG ONNXRUNTIME_CPU="onnxruntime==1.31.1"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Dependencies first (this layer is rebuilt only when pyproject.toml changes): pyproject's base
# dependencies and its `serve` extra, with onnxruntime chosen by ORT. For the GPU build, the NVIDIA
# wheels' library folders go into the loader's path (onnxruntime's CUDA provider has no rpath to them)
# and the build fails unless every library the provider needs resolves, libcuda.so.1 aside (the
# NVIDIA Container Toolkit mounts it from the host driver at run time).
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN set -eu; \
    case "$ORT" in \
      gpu) ort="$ONNXRUNTIME_GPU" ;; \
      cpu) ort="$ONNXRUNTIME_CPU" ;; \
      *) echo "error: build arg ORT must be gpu or cpu, not '$ORT'" >&2; exit 1 ;; \
    esac; \
    python /tmp/build/requirements.py /tmp/build/pyproject.toml --extra serve \
      --without onnxruntime onnxruntime-gpu > /tmp/build/requirements.txt; \
    pip install --no-cache-dir "$ort" -r /tmp/build/requirements.txt; \
    if [ "$ORT" = gpu ]; then \
      site=$(python -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parents[1])'); \
      find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u > /etc/ld.so.conf.d/nvidia-pip.conf; \
      ldconfig; \
      missing=$(ldd "$site/onnxruntime/capi/libonnxruntime_providers_cuda.so" | awk '/not found/ {print $1}' | grep -v '^libcuda\.so\.1$' || true); \
      [ -z "$missing" ] || { echo "error: the CUDA provider lacks: $missing" >&2; exit 1; }; \
      ldconfig -p | grep -q 'libcudnn\.so\.9' || { echo "error: cuDNN 9 not found" >&2; exit 1; }; \
    fi; \
    rm -rf /tmp/build

RUN groupadd --gid 10001 faces && \
    useradd --uid 10001 --gid faces --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin faces

WORKDIR /app
COPY --from=models /models /models
COPY contract/ /app/contract/
COPY service/ /app/service/
COPY docker/healthcheck.py /app/healthcheck.py
RUN python -m compileall -q /app

# bytecode is compiled above (the service user could not write it anyway); onnxruntime's telemetry is
# off (else onnxruntime warns at start that it cannot keep a device id: the service user has no home)
ENV PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    FACES_MODEL_DIR=/models \
    FACES_HOST=0.0.0.0 \
    FACES_PORT=8000
USER faces
EXPOSE 8000
# start period: every session of every model is created and warmed up before /readyz says 200
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 CMD ["python", "/app/healthcheck.py"]
CMD ["python", "-m", "service"]
