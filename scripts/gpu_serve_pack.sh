#!/usr/bin/env bash
# CPU side of the GPU serving measurement (issue 13): everything scripts/gpu_serve.sh needs on a lent GPU,
# in the git-ignored .gpu/:
#   .gpu/bench        the default model's network at 64-256 px in three graph forms (bench/serve_gpu.py build),
#                     with the trained weights of $CHECKPOINT (default: the shipped model's), or fresh ones
#                     if CHECKPOINT= is empty
#   .gpu/whl          the service's wheels the device image lacks, at the versions installed in .venv
#   .gpu/ort/p1..pN   onnxruntime-gpu for CPython 3.12 (its TensorRT provider left out: never used here),
#                     xz-compressed and split into parts under one call's 64 MiB; pN/sha256 checks them
# Needs pip to reach an index (it does here). Then, on the device, while the machine stays warm (the exact
# calls of the last measurement: docs/benchmarks.md, "Rerun"):
#   one call per part but the last, carrying .gpu/ort/pI (command `true`), then one carrying the last part,
#   .gpu/whl and .gpu/bench that runs `OUT=$OUT bash scripts/gpu_serve.sh` (docs/benchmarks.md). The
#   script prints the sizes, and what to move out of the tracked tree while the calls run if it is too big.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ORT_VERSION=${ORT_VERSION:-1.31.1}
CHECKPOINT=${CHECKPOINT-models/celeba/checkpoint.safetensors}
PART_MB=${PART_MB:-56}  # less where the tracked tree that travels beside each part is larger
WHEELS=(fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types
  uvicorn python-multipart opentelemetry-api)
PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
download() { # NAME==VERSION DEST: a CPython 3.12 x86_64 wheel (or a pure-Python one), no dependencies
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" --platform manylinux2014_x86_64 --platform any -d "$2" "$1"
}

rm -rf .gpu/bench .gpu/whl .gpu/ort
"$PY" bench/serve_gpu.py build --out .gpu/bench ${CHECKPOINT:+--checkpoint "$CHECKPOINT"}

mkdir -p .gpu/whl
for name in "${WHEELS[@]}"; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "$name is not installed in $PY's environment: run make install" >&2; exit 2; }
  download "$name==$version" .gpu/whl
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
download "onnxruntime-gpu==$ORT_VERSION" "$work/dl"
mkdir "$work/site"
(cd "$work/site" && unzip -q "$work"/dl/onnxruntime_gpu-*.whl)
rm -f "$work"/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
tar -C "$work/site" -c . | xz -6 -T0 > "$work/ort.tar.xz"
# one call carries the tracked tree plus what `carry` names, 64 MiB in all: $PART_MB MiB parts, and the last
# (smaller) one travels with the wheels and the bench models
split -b "${PART_MB}M" -d -a 1 "$work/ort.tar.xz" "$work/part"
n=0
for part in "$work"/part*; do
  n=$((n + 1))
  mkdir -p ".gpu/ort/p$n"
  mv "$part" ".gpu/ort/p$n/part"
done
sha256sum < "$work/ort.tar.xz" | cut -d' ' -f1 > ".gpu/ort/p$n/sha256"
du -sh .gpu/bench .gpu/whl .gpu/ort/p*
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
last=$(du -cb .gpu/bench .gpu/whl ".gpu/ort/p$n" | tail -1 | cut -f1)
echo "device calls: carry .gpu/ort/p1 ... p$((n - 1)) one per call, then .gpu/ort/p$n .gpu/whl .gpu/bench"
echo "the tracked tree travels with every call: $((tree >> 20)) MiB; the last call carries $((last >> 20)) MiB more"
if (((tree + last) >> 20 >= 64)); then
  echo "over 64 MiB: while the calls run, move the model checkpoints out of the tree, e.g." \
    "mkdir -p .gpu/hold && mv models/celeba/checkpoint.safetensors models/celeba/weights.bin .gpu/hold/" \
    "(and back afterwards: git status must show nothing under models/)"
fi
