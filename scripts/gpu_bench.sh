#!/usr/bin/env bash
# Issue 11's training-speed figures in one device call, most wanted first, each step cut to the time left so
# that the call ends END_S seconds after it started with every finished row kept:
#   1. the GAN zoo's PGAN and ours at the same network size and minibatch (z 512, fmap_max 256, the zoo's
#      one-GPU table, mid-fade), per resolution: ours / zoo;
#   2. the `gpu` preset (the default model's network) at 128 and 256 px: bf16 + channels-last + fused
#      against the fp32 NCHW unfused baseline, in one process each;
#   3. the `gpu` preset at 256 px with larger minibatches (what the 2.7 % of the bf16 peak is waiting on);
#   4. where the `gpu` preset's step spends its time at 128 and 256 px: the costliest kernels and how busy
#      the device is (torch.profiler; bench/step_floor.py gives the ceilings on the CPU side);
#   5. the same step compiled (`train --compile`) at 128 and 256 px, beside the uncompiled one;
#   6. (part "graph") the step `train --cuda-graph` replays (trainer/graphstep.py: captured once, its first
#      replay checked against the eager step) beside the eager step, at GRAPH_RES (default "16 64" and the
#      RES of 128 and up) and at the preset's minibatch and 64: whether the host's 20-30 us an op is what
#      holds the step back, and whether the trainer's graph passes its check on a real GPU;
#   7. (part "compgraph", in place of part 5) at 128 and 256 px, in one process each: the step eager,
#      compiled, as a CUDA graph, and compiled and captured as one graph (`train --compile --cuda-graph`);
#   8. (part "forms") the step against the same as first written (PixelNorm, fused kernels, D's two passes).
# Parts run in this order: 1, 2, 3, 6, 7, 8, 4, 5.
# What comes back under $OUT: bench.log (every table as printed), zoo.jsonl and summary.md (ours / zoo).
#
#   mkdir -p .gpu && cp -r ../shared/anchors .gpu/anchors     # on the CPU side: the zoo travels in .gpu/
#   device call (carry .gpu/anchors): OUT=$OUT END_S=540 bash scripts/gpu_bench.sh
#
# RES (default "64 128 256"), GRAPH_RES and STEPS (default 20) shrink it, e.g. for a smoke run on a CPU;
# PARTS (default "zoo baseline minibatch profile compile"; "graph", "compgraph" and "forms" only when named)
# picks the parts; their order is fixed, e.g. PARTS="graph compgraph forms profile" RES="128 256" for what
# the H200 call of 2026-11-27 left unmeasured and what was prepared after it.
set -uo pipefail
t0=$(date +%s)
: "${OUT:?set OUT}"
END_S=${END_S:-540}
RES=${RES:-64 128 256}
STEPS=${STEPS:-20}
ANCHORS=${ANCHORS:-.gpu/anchors}
PY=${PY:-python3}
PARTS=" ${PARTS:-zoo baseline minibatch profile compile} "
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
device=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
log=$OUT/bench.log

# step NAME MAX_S CMD...: runs CMD for at most MAX_S seconds and never past END_S; its output goes to the log
step() {
    local name=$1 max_s=$2 left
    shift 2
    left=$((END_S - ($(date +%s) - t0) - 5))
    [ "$left" -gt "$max_s" ] && left=$max_s
    if [ "$left" -lt 10 ]; then
        echo "== $name: skipped, out of time" | tee -a "$log"
        return
    fi
    echo "== $name (at most $left s)" | tee -a "$log"
    timeout "$left" "$@" 2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" -eq 124 ] && echo "== $name: stopped at its limit" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  $PY -c "import torch; print('torch', torch.__version__)"; } | tee -a "$log"

bench=(bench/train_throughput.py --steps "$STEPS")
[ "$device" = cpu ] && bench+=(--cpu)
want() { [[ "$PARTS" == *" $1 "* ]]; }
for r in $RES; do
    want zoo || break
    step "zoo $r" 60 $PY "$ANCHORS/anchor_pgan_bench.py" --zoo "$ANCHORS/pytorch_GAN_zoo" --device "$device" \
        --res "$r" --fmap-max 256 --latent 512 --iters "$STEPS" | grep '^{' >> "$OUT/zoo.jsonl"
    step "ours $r (the zoo's size and batch)" 60 $PY "${bench[@]}" --presets paper --fmap-max 256 --z-dim 512 \
        --zoo-batch --alpha 0.5 --res "$r" --no-baseline
done
for r in $RES; do
    [ "$r" -ge 128 ] && want baseline || continue
    step "gpu preset $r: fast against the fp32 baseline" 90 $PY "${bench[@]}" --presets gpu --res "$r"
done
top=${RES##* }
want minibatch && step "gpu preset $top: minibatch" 120 $PY "${bench[@]}" --presets gpu --res "$top" \
    --batch 16,32,64 --no-baseline
big=""
for r in $RES; do [ "$r" -ge 128 ] && big="$big $r"; done
for r in ${GRAPH_RES:-16 64$big}; do
    want graph && [ "$device" = cuda ] || continue
    step "gpu preset $r: CUDA graph" 120 $PY "${bench[@]}" --presets gpu --res "$r" --cuda-graph --no-baseline \
        --batch "$($PY -c "from trainer.config import TrainConfig as T, preset as p; print(*sorted({T(**p('gpu')[1]).batch($r), 64}), sep=',')")"
done
for r in $RES; do  # compiles: minutes, but the figure the 30 % target hangs on
    [ "$r" -ge 128 ] && want compgraph && [ "$device" = cuda ] || continue
    step "gpu preset $r: compiled, CUDA graph, both" 240 $PY "${bench[@]}" --presets gpu --res "$r" \
        --compile --cuda-graph --no-baseline
done
for r in $RES; do
    [ "$r" -ge 128 ] && want forms || continue
    step "gpu preset $r: first forms" 60 $PY "${bench[@]}" --presets gpu --res "$r" --first-forms --no-baseline
done
for r in $RES; do
    [ "$r" -ge 128 ] && want profile || continue
    step "gpu preset $r: profile" 60 $PY "${bench[@]}" --presets gpu --res "$r" --profile 20 --no-baseline
done
for r in $RES; do  # last: compiling may take minutes, and a step cut at its limit loses its row
    [ "$r" -ge 128 ] && want compile || continue
    step "gpu preset $r: compiled" 180 $PY "${bench[@]}" --presets gpu --res "$r" --compile --no-baseline
done

$PY - "$log" "$OUT/zoo.jsonl" "$OUT/summary.md" "$device" <<'EOF'
import json, sys
from pathlib import Path
log, zoo_file, out = (Path(p) for p in sys.argv[1:4])
fast = "bf16 + CL + fused" if sys.argv[4] == "cuda" else "fp32 + fused"
zoo = {}
if zoo_file.exists():
    zoo = {d["res"]: d for d in map(json.loads, zoo_file.read_text().splitlines())}
ours = {}
for line in log.read_text().splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if len(cells) > 3 and cells[0] == "paper" and cells[1].isdigit():
        ours[int(cells[1])] = (int(cells[2]), float(cells[3]))
rows = [f"| res | batch | zoo img/s (fp32) | ours img/s ({fast}) | ours / zoo |", "|---|---|---|---|---|"]
for res in sorted(set(zoo) | set(ours)):
    z, o = zoo.get(res), ours.get(res)
    ratio = f"{o[1] / z['img_per_s']:.2f}x" if z and o else "–"
    batch = o[0] if o else z["batch"]
    rows.append(f"| {res} | {batch} | {z['img_per_s'] if z else '–'} | {o[1] if o else '–'} | {ratio} |")
out.write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
echo "bench done in $(($(date +%s) - t0)) s"
