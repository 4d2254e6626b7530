#!/usr/bin/env bash
# On a lent GPU (issue 13): onnxruntime-gpu from the parts carried under .gpu/ort (scripts/gpu_serve_pack.sh
# makes them), the service's other wheels from .gpu/whl, CUDA 13 and cuDNN 9 from the host's PyTorch
# install; then bench/serve_gpu.py and bench/serve_footprint.py on the CUDA provider. Results go to $OUT.
#   OUT=$OUT bash scripts/gpu_serve.sh [serve_gpu.py run options]
set -uo pipefail
OUT=${OUT:-/tmp/gpu-serve-out}
mkdir -p "$OUT" /tmp/site
t0=$(date +%s)
cat .gpu/ort/p*/part* > /tmp/ort.tar.xz
echo "$(cat .gpu/ort/p*/sha256)  /tmp/ort.tar.xz" | sha256sum -c --quiet || { echo "onnxruntime-gpu parts: bad checksum"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 3
xz -d -T0 < /tmp/ort.tar.xz | tar -x -C /tmp/site || exit 4
export PYTHONPATH=/tmp/site
SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
LIBS=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "installed in $(( $(date +%s) - t0 )) s; CUDA libraries from: $LIBS"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import onnxruntime as o, fastapi, uvicorn; print('onnxruntime', o.__version__, o.__file__, o.get_available_providers())" || exit 5
export PYTHONUNBUFFERED=1
python3 bench/serve_gpu.py run --models .gpu/bench/models --json "$OUT/serve_gpu.json" "$@" 2>&1 | tee "$OUT/serve_gpu.log"
rc=$?
nvidia-smi --query-gpu=memory.used --format=csv
if [ -z "${SKIP_FOOTPRINT:-}" ]; then
  # one process serving the default model alone (fp32 graphs, `bench`), as a pod does; the card's memory
  # in use sampled every 0.5 s beside it (nothing else runs on the GPU by then)
  mkdir -p /tmp/one && ln -sfn "$PWD/.gpu/bench/models/bench" /tmp/one/bench
  (while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done) > "$OUT/gpu_mem.txt" &
  smi=$!
  timeout 120 python3 bench/serve_footprint.py --models /tmp/one --env FACES_PROVIDERS=CUDAExecutionProvider \
    --env FACES_REQUIRE_PROVIDER=true --env FACES_DEFAULT_MODEL=bench --requests 8 2>&1 | tee "$OUT/footprint.log"
  kill $smi
  echo "GPU memory in use during the footprint run: peak $(sort -n "$OUT/gpu_mem.txt" | tail -1) MiB (idle card $(sort -n "$OUT/gpu_mem.txt" | head -1) MiB)"
fi
echo "gpu_serve done in $(( $(date +%s) - t0 )) s (serve_gpu rc=$rc)"
exit $rc
