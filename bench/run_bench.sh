#!/usr/bin/env bash
# The full benchmark matrix of issue 6: integer-only TVM against TVM FP32, PyTorch FP32,
# PyTorch dynamic int8, ONNX Runtime FP32 and ONNX Runtime dynamic int8, side by side.
#
#   bench/run_bench.sh                    # -> bench/results/bench.{json,md,png}
#   TRIALS=64 bench/run_bench.sh          # TVM FP32 tuned with MetaSchedule, 64 trials per shape
#   OUT=/tmp/b.json bench/run_bench.sh --engines tvm-int8,ort-int8   # extra arguments go to the CLI
#
# Models: MiniLM-L6 (the default model) and a BERT-Base-shaped model with random weights
# (12 layers, hidden 768, 12 heads, intermediate 3072), calibrated on random text.
# Shapes: batch 1 and 8, sequence 32 and 128. 2 threads per engine, one worker process per
# engine, engines interleaved in 5 rounds, median of >= 20 timed runs after warm-up.
# Artifacts are built once and cached under ~/.cache/ibert-tvm/bench (minutes the first time,
# more with TRIALS > 0). Check `uptime` first: figures taken under load are indicative only
# (the load average is recorded in the JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/bench.json}
TRIALS=${TRIALS:-0}
echo "load: $(uptime)"
exec ibert-tvm bench \
    --models minilm,bert-base \
    --engines all \
    --shapes 1x32,8x32,1x128,8x128 \
    --runs 20 --rounds 5 --warmup 2 --threads 2 \
    --trials "$TRIALS" \
    --profile \
    -o "$OUT" "$@"
