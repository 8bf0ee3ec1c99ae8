"""A small end-to-end run on the CPU, no download: a tiny random Qwen2 with the real Qwen2.5 tokenizer
is written as a Hugging Face folder, fine-tuned for two SFT steps on judge traces built from real
RM-Bench pairs (sft.py, one process), and the result used as a judge on real benchmark rows (eval.py).

    python demo.py            # writes runs/demo/ (replaced on each run)

A random model's verdicts are noise (expect invalid outputs and chance accuracy); the point is the
whole path: checkpoint I/O, chat template, judge prompts, batched sampling, parsing, scoring, resume.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

import data
import eval as evaluate
import model as M
import sft

ROOT = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("RMR1_SHARED", ROOT.parent / "shared"))  # as in the tests
TOKENIZER = SHARED / "hf" / "qwen2.5-7b-instruct"


def tiny_checkpoint(path: Path):
    cfg = M.Config.from_hf({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 32768})
    torch.manual_seed(0)
    model = M.Transformer(cfg)
    with torch.no_grad():  # the usual small init, so the untrained loss starts near ln(vocab)
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.02)
    gen = json.loads((TOKENIZER / "generation_config.json").read_text())
    M.save(model, path, generation_config=gen, copy_files_from=TOKENIZER)


def main(argv=None):
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    if not TOKENIZER.is_dir():
        sys.exit(f"{TOKENIZER} not found: the demo reads the Qwen2.5 tokenizer from ../shared/hf/ (or RMR1_SHARED)")
    out = ROOT / "runs" / "demo"
    shutil.rmtree(out, ignore_errors=True)
    ckpt = out / "tiny-qwen2"
    tiny_checkpoint(ckpt)
    print(f"wrote {ckpt}: {sorted(p.name for p in ckpt.iterdir())}")
    # 1. Stage 1: SFT rows = judge prompts (alternating A/B) + a trace ending in the right verdict.
    pairs = data.read_rmbench(SHARED / "benchmarks" / "rm-bench" / "chat_filtered.json")[:8]
    rows = sft.training_rows(pairs)
    for r in rows:
        letter = "A" if r["winner"] == "model_a" else "B"
        r["response"] = ("<type>Chat</type>\n<rubric>\n1. Accuracy (100%)\n<justify>Facts first.</justify>\n"
                         f"</rubric>\n<eval>Chatbot {letter} is accurate.</eval>\n<answer>[[{letter}]]</answer>")
    (out / "sft_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft.main(["--model", str(ckpt), "--data", str(out / "sft_rows.jsonl"), "--out", str(out / "sft"),
              "--global-batch", "4", "--lr", "1e-3", "--compute-dtype", "float32", "--micro-tokens", "4096"])
    ckpt = out / "sft" / "hf"
    metrics = (out / "sft" / "metrics.jsonl").read_text().splitlines()
    print(f"SFT losses: {[round(json.loads(x)['loss'], 3) for x in metrics]}")
    # 2. One pair, streamed.
    evaluate.main(["--model", str(ckpt), "--question", "What is 17 * 3?", "--answer-a", "51", "--answer-b", "41",
                   "--max-new-tokens", "24", "--device", "cpu"])
    # 3. Two benchmarks on a few real rows each, with both orders on one of them.
    common = ["--model", str(ckpt), "--max-new-tokens", "16", "--device", "cpu"]
    evaluate.main(common + ["--bench", "rm-bench",
                            "--data", str(SHARED / "benchmarks" / "rm-bench" / "chat_filtered.json"),
                            "--limit", "18", "--out", str(out / "rm-bench")])
    evaluate.main(common + ["--bench", "rmb", "--data",
                            str(SHARED / "benchmarks" / "rmb" / "BoN_set" / "Helpfulness" / "Reasoning"),
                            "--limit", "10", "--both-orders", "--out", str(out / "rmb")])  # 4 whole items
    # 4. Rescoring saved judgments needs no model.
    evaluate.main(["--bench", "rm-bench", "--out", str(out / "rm-bench"), "--score-only"])
    print(f"\ndemo done: judgments and scores under {out}")


if __name__ == "__main__":
    main()
