#!/bin/bash
# The queue-order A/B again with judgment lengths drawn by seed 95, a draw where the scheduler's simulation gives
# the three orders nearly the same number of decode steps (given 4,298, shortest first 4,243, longest first 4,266),
# so that what differs between them is the prefill's padding, not the draw's tail. Two timed rounds after a warm-up.
# As in the first A/B, the working tree then queued prompts longest first (a first version of 0746642).
R=$(pwd)
nvidia-smi --query-gpu=name --format=csv,noheader
for spec in ". given" ".gpu/old given" ".gpu/old shortest"; do
  set -- $spec
  echo "== $1 --order $2"
  (cd $1 && python bench/bench_eval.py --config $R/.gpu/hf/qwen2.5-1.5b-instruct --shared $R/.gpu/shared \
     --ways one --rounds 2 --order $2 --length-seed 95 2>&1 | grep -v Warn)
done
