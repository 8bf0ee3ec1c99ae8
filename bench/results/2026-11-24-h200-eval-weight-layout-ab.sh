#!/bin/bash
# A/B: judging throughput (eval's one generate call) with every matrix row-major against column-major, on the
# 1,024 RM-Bench judge prompts of bench_eval.py, 1.5B, default slots; a warm-up round and 3 rounds each.
nvidia-smi --query-gpu=name --format=csv,noheader
for layout in rows columns; do
  echo "== $layout"
  python bench/bench_eval.py --config .gpu/hf/qwen2.5-1.5b-instruct --shared .gpu/shared --items 1024 --rounds 3 \
    --ways one --weight-layout $layout 2>&1 | grep -v Warn
done
