#!/bin/bash
# A/B on an H200: every matrix row-major against column-major (the model's own since this change), batch 1 of both
# models and 7B batch 64, no transformers; two rounds interleaved.
nvidia-smi --query-gpu=name --format=csv,noheader
A="--configs .gpu/hf --repeats 3 --parts b1,b64 --skip-hf"
for layout in rows columns rows columns; do
  echo "== $layout"; python bench/bench_sample.py $A --weight-layout $layout 2>&1 | grep -v Warn | grep "^\["
done
