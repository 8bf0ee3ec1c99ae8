#!/bin/bash
# The mean-row-length A/B again, with generate's queue reversed (longest prompts first) in both trees, to test
# whether the fold-or-calls rule is what costs that order the ~0.85 s BENCHMARKS traces to it. Two timed rounds.
# .gpu/new_longest: git archive mean-row-length; .gpu/old_longest: git archive 641f8eb; in both, generate's queue
# sorts by -len(prompts[i]):
#   sed -i 's/order = sorted(range(len(prompts)), key=lambda i: len(prompts\[i\]))/order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))/' .gpu/*_longest/sample.py
R=$(pwd)
nvidia-smi --query-gpu=name --format=csv,noheader
for tree in .gpu/new_longest .gpu/old_longest; do
  echo "== $tree judging"
  (cd $tree && python bench/bench_eval.py --config $R/.gpu/hf/qwen2.5-1.5b-instruct --shared $R/.gpu/shared \
     --ways one --rounds 2 2>&1 | grep -v Warn)
done
