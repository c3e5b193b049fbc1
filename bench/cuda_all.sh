#!/usr/bin/env bash
# Every CUDA figure the project owes, in one run of at most 8 minutes, written as one JSON file
# and printed as the last line (issue 15, item 4):
#
#   pose_solver  bench/pose_solver.py --device cuda --batch: ms per pair at B=1 and batched,
#                errors vs ground truth, KITTI 06 (strides 1 and 3), OpenCV beside it
#   nets         flow (both ways) + depth net at 256x832, full width, fp32 / fp16 / bf16
#                autocast, ms per call (bench/cuda_parts.py nets; random weights)
#   vo           VisualOdometry frames/s with the paper networks at 256x832 (random weights;
#                KITTI 06, and a synthetic run with the renderer's exact flow / depth so that
#                every frame is tracked) (bench/cuda_parts.py vo)
#   train        trianflow-train's step at 256x832, batch 8, stages flow and depth_pose:
#                iterations/s and peak torch.cuda.max_memory_allocated (bench/cuda_parts.py train)
#
# Each part runs in its own process under its own timeout (PART_TIMEOUTS below, cut to what is
# left of the 470 s budget); a part that fails or times out is recorded with its error and the
# tail of its log, and the others still run. Exit status 0 whenever the JSON was written.
#
# Usage (repository root):
#   bench/cuda_all.sh [--out FILE]       # default: $OUT/cuda_all.json if $OUT is set, else
#                                        # results/cuda_all.json
#   bench/cuda_all.sh --cpu-smoke        # the same parts on the CPU at tiny sizes: checks the
#                                        # script (no figures); used by the test suite
# Without CUDA and without --cpu-smoke it writes {"cuda": false, ...} at once and exits 0.
# Python: $PYTHON, else .venv/bin/python, else python3.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUDGET_S=470
declare -A PART_TIMEOUTS=([pose_solver]=120 [nets]=80 [vo]=110 [train]=150)
PARTS=(pose_solver nets vo train)
# Overrides (tests): CUDA_ALL_PARTS="nets,vo" runs a subset, CUDA_ALL_TIMEOUT_<PART>=S (e.g.
# CUDA_ALL_TIMEOUT_NETS=1) changes a part's timeout.
if [ -n "${CUDA_ALL_PARTS:-}" ]; then IFS=, read -r -a PARTS <<<"$CUDA_ALL_PARTS"; fi
for part in "${!PART_TIMEOUTS[@]}"; do
    var="CUDA_ALL_TIMEOUT_${part^^}"
    [ -n "${!var:-}" ] && PART_TIMEOUTS[$part]="${!var}"
done
for part in "${PARTS[@]}"; do
    [ -n "${PART_TIMEOUTS[$part]:-}" ] || { echo "cuda_all.sh: unknown part $part" >&2; exit 2; }
done

mode=cuda
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) mode=cpu-smoke ;;
        --out) out="${2:?--out needs a file}"; shift ;;
        --out=*) out="${1#--out=}" ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "cuda_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$out" ]; then
    if [ -n "${OUT:-}" ]; then out="$OUT/cuda_all.json"; else out="$ROOT/results/cuda_all.json"; fi
fi
mkdir -p "$(dirname "$out")"

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

# The environment: torch, CUDA and the GPU, as JSON (cuda false when there is none).
"$PY" - >"$work/env.json" 2>"$work/env.err" <<'EOF'
import json
import torch
env = {'torch': torch.__version__, 'cuda': bool(torch.cuda.is_available()),
       'cuda_version': torch.version.cuda}
if env['cuda']:
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
               gpu_count=torch.cuda.device_count())
print(json.dumps(env))
EOF
env_rc=$?

if [ "$mode" = cuda ]; then
    if [ "$env_rc" != 0 ] || ! grep -q '"cuda": true' "$work/env.json"; then
        reason="torch.cuda.is_available() is False"
        [ "$env_rc" != 0 ] && reason="python/torch failed: $(tail -1 "$work/env.err")"
        "$PY" - "$work/env.json" "$out" "$reason" <<'EOF' || { echo '{"cuda": false}'; exit 0; }
import json, sys, datetime
try:
    env = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    env = {}
env.update(cuda=False, reason=sys.argv[3], parts={}, errors={},
           date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
           note='not run: no CUDA GPU here (bench/cuda_all.sh --cpu-smoke checks the script)')
text = json.dumps(env)
open(sys.argv[2], 'w').write(text + '\n')
print(text)
EOF
        exit 0
    fi
    device=cuda
else
    device=cpu
fi

run_part() {
    local part="$1" left limit rc t0
    left=$((BUDGET_S - ($(date +%s) - start)))
    limit=${PART_TIMEOUTS[$part]}
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$left" -le 5 ]; then
        echo "skipped: the ${BUDGET_S} s budget is spent" >"$work/$part.skipped"
        return
    fi
    local cmd
    case "$part" in
        pose_solver)
            if [ "$device" = cuda ]; then
                cmd=("$PY" bench/pose_solver.py --device cuda --batch --no-progress)
            else
                cmd=("$PY" bench/pose_solver.py --device cpu --quick 2 --strides 1 --repeats 1
                     --threads 1 --batch --no-progress)
            fi ;;
        *)
            cmd=("$PY" bench/cuda_parts.py "$part" --device "$device")
            [ "$device" = cpu ] && cmd+=(--smoke) ;;
    esac
    echo "== $part (timeout ${limit} s): ${cmd[*]}" >&2
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "${cmd[@]}" >"$work/$part.out" 2>"$work/$part.err"
    rc=$?
    echo "$rc $(($(date +%s) - t0)) $limit" >"$work/$part.rc"
    tail -3 "$work/$part.out" | cut -c1-300 >&2
}

for part in "${PARTS[@]}"; do
    run_part "$part"
done

"$PY" - "$work" "$out" "$mode" "$((BUDGET_S))" "$(($(date +%s) - start))" "${PARTS[@]}" <<'EOF'
import datetime
import json
from pathlib import Path
import sys

work, out, mode, budget, total = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], \
    sys.argv[5]
try:
    result = json.loads((work / 'env.json').read_text())
except (OSError, ValueError):
    result = {'cuda': mode == 'cuda'}
result.update(mode=mode, budget_s=int(budget), parts={}, errors={},
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              weights='random (paper architecture) for nets and vo; pose_solver and train '
                      'need no weights')
if mode != 'cuda':
    result['cuda'] = False
    result['note'] = 'CPU smoke run at tiny sizes: checks the script, not figures'
for part in sys.argv[6:]:
    skipped = work / f'{part}.skipped'
    if skipped.is_file():
        result['errors'][part] = skipped.read_text().strip()
        continue
    rc, seconds, limit = (work / f'{part}.rc').read_text().split()
    lines = (work / f'{part}.out').read_text().splitlines()
    err_tail = (work / f'{part}.err').read_text().splitlines()[-5:]
    parsed = None
    if lines:
        try:
            parsed = json.loads(lines[-1])
        except ValueError:
            parsed = None
    entry = parsed if isinstance(parsed, dict) else {}
    entry['wall_s'] = int(seconds)
    result['parts'][part] = entry
    if rc in ('124', '137'):
        result['errors'][part] = f'timed out after {limit} s'
    elif rc != '0':
        result['errors'][part] = f'exit code {rc}'
    elif parsed is None:
        result['errors'][part] = 'no JSON on its last line'
    else:
        inner = [f'{k}: {v["error"]}' for k, v in entry.items()
                 if isinstance(v, dict) and 'error' in v]
        if 'error' in entry:
            inner.insert(0, entry['error'])
        if inner:
            result['errors'][part] = '; '.join(inner)
    if part in result['errors'] and err_tail:
        entry['log_tail'] = err_tail
result['total_s'] = int(total)
text = json.dumps(result)
Path(out).write_text(text + '\n')
print(text)
EOF
exit 0
