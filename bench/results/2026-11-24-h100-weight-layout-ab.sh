#!/bin/bash
# A/B: the decode step with every nn.Linear weight as stored (rows) against re-laid column-major (columns),
# batch 1 of both models, 7B batch 64 and the ragged batch, no transformers.
# Round 1 ran before model.py changed, when bench_sample.py's flag re-laid the weights column-major
# (--weight-layout columns; rows was the model's own layout); round 2 after, when the flag re-lays them row-major
# (--weight-layout rows; columns is the model's own). The same two layouts either way; round 2 runs columns first.
nvidia-smi --query-gpu=name --format=csv,noheader
A="--configs .gpu/hf --repeats 3 --parts ${PARTS:-b1,b64,ragged} --skip-hf --ragged-slots default"
for layout in ${LAYOUTS:-columns rows}; do
  echo "== $layout"; python bench/bench_sample.py $A --weight-layout $layout 2>&1 | grep -v Warn | grep "^\["
done
