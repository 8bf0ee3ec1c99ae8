#!/bin/bash
# A/B of KVCache choosing folded or split flash calls by the live rows' mean length (the working tree, branch
# mean-row-length) instead of the bound on the longest row (.gpu/old: git archive of main at 641f8eb, the commit
# the branch sits on). Usage: bash this.sh judging|ragged. judging: bench_eval.py's workload (1,024 items, three
# timed rounds after a warm-up, eval's way), new, old, new; ragged: the ragged target (default slots, 3 repeats).
# .gpu/old: mkdir -p .gpu/old && git archive 641f8eb | tar -x -C .gpu/old
R=$(pwd)
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "$1" = judging ]; then
  for tree in . .gpu/old; do
    echo "== $tree judging"
    (cd $tree && python bench/bench_eval.py --config $R/.gpu/hf/qwen2.5-1.5b-instruct --shared $R/.gpu/shared \
       --ways one --rounds 3 2>&1 | grep -v Warn)
  done
else
  for tree in . .gpu/old; do
    echo "== $tree ragged"
    (cd $tree && python bench/bench_sample.py --configs $R/.gpu/hf --parts ragged --skip-hf --repeats 3 \
       --ragged-slots default 2>&1 | grep -v Warn)
  done
fi
