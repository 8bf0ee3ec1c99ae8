"""Exploration: does PyTorch's TunableOp speed decoding up by timing cuBLAS's algorithms for each GEMM shape?

    python bench/explore_tunableop.py --configs .gpu/hf

cuBLAS picks a GEMM algorithm from a heuristic. `torch.cuda.tunable` (TunableOp) can instead time every candidate
for a shape (where torch is built with it on CUDA: cuBLAS's own choice and up to 8 cuBLASLt algorithms of the
heuristic's list) and keep the fastest. At batch 1 the decode step's GEMMs read their weights at about 85% of copy
bandwidth (BENCHMARKS.md), so a better algorithm is one of the few levers left in plain PyTorch.

For each model: batch-1 decoding (prompt 128, 256 new, greedy; and batch 64, prompt 512, for the 7B) with cuBLAS's
choice, then with TunableOp on. Tuning cannot run inside a CUDA graph's capture, so every GEMM shape is tuned first
in an eager call of the same shapes (tuning on), then the graphs are captured anew with tuning off, and the same
calls timed. Median of --repeats. Prints tok/s both ways and the algorithm kept for each GEMM shape.

Found (2026-11-24, H200, torch 2.11, bench/results/2026-11-24-h200-explore-tunableop.log): nothing to gain there.
TunableOp on torch 2.11's CUDA build offers no cuBLASLt algorithms, only cuBLAS's own choice (registered twice:
"out of 2 candidates", both "Default", with PYTORCH_TUNABLEOP_CUBLASLT_ENABLED=1 too), so every one of the 31 shapes
kept "Default" and the tok/s are the same within noise (7B batch 1 201.9 / 201.4 against 202.2 / 200.2). A torch
whose TunableOp does time cuBLASLt's candidates on CUDA can be tried with this script as it is.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.cuda.tunable as tunable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sample  # noqa: E402
from bench_sample import bench_ours, ceilings, our_model, random_prompts, weight_bytes  # noqa: E402
from sample import generate  # noqa: E402

SHAPES = {"qwen2.5-1.5b-instruct": [(1, 128)], "qwen2.5-7b-instruct": [(1, 128), (64, 512)]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="default / tuned pairs, interleaved")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    bw, _ = ceilings()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    tunable.set_filename(str(Path(tempfile.mkdtemp()) / "tunableop_results.csv"))
    for name, cases in SHAPES.items():
        m = our_model(args.configs / name)
        roof = bw / weight_bytes(m)  # the weight-read roofline, as bench_sample.py computes it
        # tune: one eager call per shape (prefill and decode GEMMs both), tuning on
        tunable.enable(True)
        tunable.tuning_enable(True)
        tunable.set_rotating_buffer_size(-1)  # time each candidate with its inputs out of L2, as decoding reads them
        sample.release()
        for batch, plen in cases:
            generate(m, random_prompts(batch, plen), 4, temperature=0, cuda_graph=False)
        tunable.tuning_enable(False)
        results = tunable.get_results()
        print(f"\n{name}: {len(results)} GEMM shapes tuned; kept (op, shape, algorithm, ms):", flush=True)
        for r in results:
            print("   ", " | ".join(map(str, r)), flush=True)
        for batch, plen in cases:
            figures = {"default": [], "tuned": []}
            for _ in range(args.rounds):
                for way in ("default", "tuned"):
                    tunable.enable(way == "tuned")
                    sample.release()  # graphs captured anew, with this way's GEMMs
                    figures[way].append(bench_ours(m, batch, plen, 256, args.repeats))
            same = []
            for way in ("default", "tuned"):
                tunable.enable(way == "tuned")
                sample.release()
                same.append([o.tokens for o in generate(m, random_prompts(batch, plen), 64, temperature=0)])
            agree = sum(a == b for a, b in zip(*same))
            cells = "  ".join(f"{w} " + " / ".join(f"{t:.1f}" for t in v) for w, v in figures.items())
            note = f" = {statistics.median(figures['tuned']) / roof:.1%} of roofline" if batch == 1 else ""
            print(f"{name} batch {batch}, prompt {plen}, 256 new, tok/s: {cells}{note} "
                  f"(greedy 64 tokens: {agree} of {batch} rows the same both ways)", flush=True)
        tunable.enable(False)
        sample.release()
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
