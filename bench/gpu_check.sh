#!/bin/bash
# One device call: GPU tests, decode-step and prefill profiles, then the sampling benchmark (to stdout;
# on the device: bash bench/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log).
nvidia-smi --query-gpu=name --format=csv
RMR1_SHARED=.gpu/shared python -m pytest -q -x tests/test_sample.py tests/test_model.py 2>&1 | tail -3
python bench/profile_step.py .gpu/hf/qwen2.5-7b-instruct 1 300 2>&1 | grep -v Warn | head -32
python bench/profile_step.py .gpu/hf/qwen2.5-7b-instruct 64 700 2>&1 | grep -v Warn | head -32
python bench/profile_step.py .gpu/hf/qwen2.5-7b-instruct 32 0 512 2>&1 | grep -v Warn | head -20
python bench/bench_sample.py --repeats 3 --parts ${PARTS:-b1,b64,ragged,long} 2>&1
