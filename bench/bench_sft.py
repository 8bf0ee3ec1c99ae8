"""SFT training-step speed: sft.py's FSDP2 step against transformers on the same batch.

    python bench/bench_sft.py --config .gpu/hf/qwen2.5-1.5b-instruct --seq 4096 --batch 4 --hf
    torchrun --nproc_per_node=2 bench/bench_sft.py --config .gpu/hf/qwen2.5-7b-instruct --seq 12288 --batch 1

Random weights of the real config (speed does not depend on the values). One step = forward, backward,
grad-norm clip and fused AdamW over `batch` sequences of `seq` tokens per GPU. MFU = 6 x params x
tokens/s per GPU over the bf16 matmul rate measured in the same process. Median of --steps steps
after 2 warm-up steps.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import model as M  # noqa: E402
import sft  # noqa: E402
from bench_sample import matmul_ceiling, timed  # noqa: E402


def time_steps(step, n):
    step()
    step()  # warm-up
    return timed(step, n)


def ours(mcfg, args, device, ids, tgt, mask):
    cfg = sft.SFTConfig(activation_checkpointing=not args.no_ac, loss_chunk=args.loss_chunk)
    root = sft.shard(mcfg, cfg, device)
    torch.manual_seed(dist.get_rank())
    with torch.no_grad():
        for name, p in root.named_parameters():
            local = p.to_local()
            local.fill_(1.0) if "norm" in name else local.normal_(0, 0.02)
    opt = torch.optim.AdamW(root.parameters(), lr=1e-5, betas=(0.9, 0.95), fused=True)

    def step():
        loss = sft.sequence_nll_sum(root(ids, tgt), mask) / ids.shape[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(root.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    n = sum(p.numel() for p in root.parameters())
    torch.cuda.reset_peak_memory_stats()
    t = time_steps(step, args.steps)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return t, n, peak  # model and optimizer are freed on return


def transformers_step(args, device, ids):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(args.config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    if not args.no_ac:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    t = time_steps(step, args.steps)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return t, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4, help="sequences per GPU per step")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--loss-chunk", type=int, default=4096)
    ap.add_argument("--no-ac", action="store_true", help="activation checkpointing off")
    ap.add_argument("--hf", action="store_true", help="also time transformers (one process only)")
    args = ap.parse_args()
    rank, world, device = sft.setup_distributed()
    mcfg = M.Config.from_hf(json.loads((args.config / "config.json").read_text()))
    ceiling = matmul_ceiling(device)
    g = torch.Generator(device=device).manual_seed(rank)
    ids = torch.randint(0, 150000, (args.batch, args.seq), device=device, generator=g)
    tgt = torch.roll(ids, -1, 1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    t, n, peak = ours(mcfg, args, device, ids, tgt, mask)
    torch.cuda.empty_cache()
    tok = args.batch * args.seq / t  # per GPU
    mfu = 6 * n * tok / ceiling
    name = f"{args.config.name} seq {args.seq} x {args.batch}/GPU, {world} GPU(s), AC {'off' if args.no_ac else 'on'}"
    if rank == 0:
        print(f"{torch.cuda.get_device_name()} torch {torch.__version__}; bf16 matmul ceiling {ceiling / 1e12:.0f} TFLOP/s")
        print(f"| {name} | ours (FSDP2, fp32 master, bf16 compute) | {tok:,.0f} tok/s/GPU | MFU {mfu:.1%} of measured "
              f"({6 * n * tok / 989e12:.1%} of 989) | peak {peak:.1f} GiB/GPU | step {t:.3f} s |", flush=True)
    if args.hf and world == 1:
        th, peak_h = transformers_step(args, device, ids)
        tok_h = args.batch * args.seq / th
        print(f"| {name} | transformers (bf16 weights, sdpa, fused AdamW) | {tok_h:,.0f} tok/s | MFU "
              f"{6 * n * tok_h / ceiling:.1%} of measured | peak {peak_h:.1f} GiB | ours/transformers {tok / tok_h:.2f}x |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
