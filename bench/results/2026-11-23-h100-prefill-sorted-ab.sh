#!/bin/bash
# A/B of the prefill packing: .gpu/old (1dea0a5, prompts in their own order) against the working tree (sorted).
# .gpu/old holds the code before: mkdir -p .gpu/old && git archive 1dea0a5 | tar -x -C .gpu/old && cp bench/bench_eval.py .gpu/old/bench/
R=$(pwd)
nvidia-smi --query-gpu=name --format=csv,noheader
for spec in "1.5b 1024" "1.5b 1024" "7b 256"; do
  set -- $spec
  for tree in .gpu/old .; do
    echo "== $tree qwen2.5-$1 items $2"
    (cd $tree && python bench/bench_eval.py --config $R/.gpu/hf/qwen2.5-$1-instruct --shared $R/.gpu/shared \
       --prefill --rounds 3 --items $2 2>&1 | grep -v Warn | tail -2)
  done
done
RMR1_SHARED=.gpu/shared timeout 200 python -m pytest -q -rs --timeout 150 tests/test_sample.py 2>&1 | tail -4
