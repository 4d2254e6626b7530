#!/usr/bin/env bash
# One training round on a lent GPU (docs/training-log.md says how rounds go). Trains with `--minutes` so
# that training ends END_S seconds after this script started, then packs what comes back into $OUT, at
# most 8 files: the checkpoint in parts (scripts/gpu_checkpoint.py; its unpack draws the loss plot from the
# checkpoint's history), ckpt.json, stats.jsonl, round.json (config, plan, exit status, the run's setup.json:
# where the time before the steps went), the last sample grid and, with COMPILE=1, compile-cache.bin.
#
#   OUT=... DATA=.gpu/faces-64.zip PRESET=gpu MAX_RES=64 END_S=540 bash scripts/gpu_round.sh [train args]
#
# GRAPH=1 trains the first attempt with --cuda-graph (each phase's step replayed from one CUDA graph, checked
# against the eager step, eager where it differs); COMPILE=1 adds --compile (each phase's first steps compile G
# and D; with GRAPH=1 the graph then replays the compiled kernels) and --compile-cache: the file
# COMPILE_CACHE names (the last lease's compile-cache.bin, carried by `gpu_carry.py plan --also`: default
# /tmp/carry/compile-cache.bin) is loaded first if it is there, and what this round compiled comes back as
# $OUT/compile-cache.bin (if it is under 15 MiB) for the next lease. If the first attempt fails early, a
# second runs with whatever time is left: without the graph and the compiler when either was on (the
# arguments' precision and layout kept), else in fp32 NCHW. After packing, scripts/d_level.py follows
# D_LEVEL_STEPS (default 0: none; round 5 ran 16, ~26 s, and answered its question) eager steps from the
# checkpoint; its tables go into round.json.
set -uo pipefail
t0=$(date +%s)
: "${OUT:?set OUT}" "${DATA:?set DATA to an archive from prepare-data}"
PRESET=${PRESET:-gpu}
MAX_RES=${MAX_RES:-64}
END_S=${END_S:-540}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PROGAN_CACHE=${PROGAN_CACHE:-/tmp/progan}
# the device runs the checkout uninstalled: scripts/*.py import `trainer` from the repository root
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
runs=${RUNS:-/tmp/runs}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

attempt() {
    local left=$((END_S - ($(date +%s) - t0)))
    local minutes
    minutes=$($PY -c "print(round($left / 60, 2))")
    echo "== train --minutes $minutes $*"
    $PY -m trainer train --data "$DATA" --preset "$PRESET" --max-res "$MAX_RES" --out "$runs" --quiet \
        --minutes "$minutes" --checkpoint-minutes 3 "$@"
}

fast=()
[ "${GRAPH:-0}" = 1 ] && fast+=(--cuda-graph)
cache=/tmp/compile-cache.bin  # a copy: a damaged carried file stays as it came
if [ "${COMPILE:-0}" = 1 ]; then
    carried=${COMPILE_CACHE:-/tmp/carry/compile-cache.bin}
    rm -f "$cache"
    if [ -f "$carried" ]; then
        cp "$carried" "$cache" && echo "compile cache: $(stat -c %s "$cache") bytes from $carried"
    else
        echo "compile cache: none at $carried, compiling from nothing"
    fi
    fast+=(--compile --compile-cache "$cache")
fi
attempt "${fast[@]}" "$@"
rc=$?
if [ $rc -ne 0 ] && [ $(($(date +%s) - t0)) -lt $((END_S / 3)) ]; then
    if [ ${#fast[@]} -gt 0 ]; then
        # the step rounds 2-3 trained with (the arguments' precision and layout), without the graph or compiler
        echo "== first attempt failed (rc $rc): again without ${fast[*]}"
        attempt "$@"
    else
        echo "== first attempt failed (rc $rc): again in fp32, NCHW"
        attempt "$@" --amp off --no-channels-last # last on the line, so they override the arguments'
    fi
    rc=$?
fi

run=$(ls -d "$runs"/*/ 2>/dev/null | tail -1)
if [ -z "$run" ] || [ ! -f "$run/checkpoint.pt" ]; then
    echo "no checkpoint to bring back (rc $rc)"
    exit 1
fi
$PY scripts/gpu_checkpoint.py pack "$run" "$OUT"
cp "$run/stats.jsonl" "$OUT/" 2>/dev/null
cp "$(ls "$run"/grids/*.png | tail -1)" "$OUT/grid.png" 2>/dev/null
cache_bytes=0
if [ "${COMPILE:-0}" = 1 ] && [ -f "$cache" ]; then
    cache_bytes=$(stat -c %s "$cache")
    if [ "$cache_bytes" -le $((15 * 1024 * 1024)) ]; then
        cp "$cache" "$OUT/compile-cache.bin"
    else
        echo "compile cache of $cache_bytes bytes: over the 15 MiB a returned file may have, left behind"
    fi
fi
level=/tmp/d_level.md
: > "$level"
if [ "${D_LEVEL_STEPS:-0}" -gt 0 ]; then
    # the saved D's scores on the CPU and the device, and step by step from the checkpoint (scripts/d_level.py)
    timeout 90 $PY scripts/d_level.py "$run" --data "$DATA" --steps "${D_LEVEL_STEPS}" > "$level" 2>&1
    cat "$level"
fi
$PY - "$run" "$OUT/round.json" "$rc" "$(($(date +%s) - t0))" "$level" "$cache_bytes" <<'EOF'
import json, sys
from pathlib import Path
run, out, rc, secs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cache_bytes = int(sys.argv[6])
plan, level, setup = run / "plan.txt", Path(sys.argv[5]).read_text(), run / "setup.json"
json.dump({
    "rc": rc, "seconds": secs, "run": run.name,
    "config": json.loads((run / "config.json").read_text()),
    "plan": plan.read_text() if plan.exists() else None,
    "grids": sorted(p.name for p in (run / "grids").glob("end-*.png")),
    "setup_s": json.loads(setup.read_text()) if setup.exists() else None,
    "d_level": level or None,
    "compile_cache_bytes": cache_bytes or None,
}, open(out, "w"), indent=1)
EOF
ls -la "$OUT"
tail -3 "$run/stats.jsonl"
echo "round done in $(($(date +%s) - t0)) s, rc $rc"
exit $rc
