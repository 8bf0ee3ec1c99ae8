#!/bin/bash
# A/B of the queue order: the working tree against .gpu/old (3e5588a, prompts queued in the order given), the judging
# workload of bench_eval.py, one call (eval's way). When the log beside this ran, the working tree was a first version
# of 0746642 that queued prompts longest first; since 0746642 it queues them shortest first.
# .gpu/old: mkdir -p .gpu/old && git archive 3e5588a | tar -x -C .gpu/old && cp bench/bench_eval.py .gpu/old/bench/
R=$(pwd)
nvidia-smi --query-gpu=name --format=csv,noheader
for spec in ". given" ".gpu/old given" ".gpu/old shortest"; do
  set -- $spec
  echo "== $1 --order $2"
  (cd $1 && python bench/bench_eval.py --config $R/.gpu/hf/qwen2.5-1.5b-instruct --shared $R/.gpu/shared \
     --ways one --rounds 3 --order $2 2>&1 | grep -v Warn)
done
