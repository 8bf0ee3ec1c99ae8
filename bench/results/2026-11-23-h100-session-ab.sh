#!/bin/bash
# A/B: sample.py at a5793aa (session start) against this checkout, b1 and ragged, no transformers; one round ran.
# The old tree: mkdir -p .gpu/abold && git archive a5793aa sample.py model.py data.py rubrics.py bench/bench_sample.py | tar -x -C .gpu/abold
nvidia-smi --query-gpu=name --format=csv,noheader
A="--configs .gpu/hf --repeats 3 --parts b1,ragged --skip-hf --ragged-slots default"
for round in 1; do
  echo "== round $round: a5793aa"; python .gpu/abold/bench/bench_sample.py $A 2>&1 | grep -v Warn
  echo "== round $round: this checkout"; python bench/bench_sample.py $A 2>&1 | grep -v Warn
done
