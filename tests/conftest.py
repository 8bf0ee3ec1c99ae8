"""Shared helpers: tiny random Qwen checkpoints written by transformers' own `save_pretrained`."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RMR1_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def hf_model(arch="qwen2", heads=4, kv=2, head_dim=None, hidden=None, tied=False, layers=2, vocab=512,
             inter=96, seed=0, theta=10000.0, positions=256):
    """A random transformers Qwen2/Qwen3 model (float32). Norm weights and biases are perturbed too,
    so a loader that skips them cannot pass."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    hd = head_dim or 16
    hidden = hidden or heads * hd
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied, rope_theta=theta,
              max_position_embeddings=positions, rms_norm_eps=1e-6)
    cfg = Qwen2Config(**kw) if arch == "qwen2" else Qwen3Config(head_dim=hd, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tiny_judge(path: Path, layers: int = 1, max_positions: int = 32768, seed: int = 0) -> Path:
    """A tiny random Qwen2 written by model.save with the real Qwen2.5 tokenizer, chat template and generation
    config beside it: a judge checkpoint that eval.py, sample.py and the README's examples load as it is."""
    import json

    import model as M

    tok_dir = SHARED / "hf" / "qwen2.5-7b-instruct"
    cfg = M.Config.from_hf({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
                            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers,
                            "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 1e6,
                            "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                            "max_position_embeddings": max_positions})
    torch.manual_seed(seed)
    M.save(M.Transformer(cfg), path, copy_files_from=tok_dir,
           generation_config=json.loads((tok_dir / "generation_config.json").read_text()))
    return path


@pytest.fixture
def shared():
    return SHARED
