"""The README's Python examples, run as written on a tiny checkpoint: only the folder name is swapped in
(and, on a machine without a GPU, "cuda" becomes "cpu"), so an example that stops working fails here."""

import json
import re

import torch
from conftest import ROOT, SHARED

import model as M
import sample


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 2  # loading a checkpoint, sampling (a new example needs its checks here)
    code = "\n".join(blocks)
    assert code.count('"Qwen2.5-7B-Instruct"') == 3
    tok_dir = SHARED / "hf" / "qwen2.5-7b-instruct"
    cfg = M.Config.from_hf({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
                            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 1e6,
                            "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 32768})
    torch.manual_seed(0)
    M.save(M.Transformer(cfg), tmp_path / "tiny", copy_files_from=tok_dir,
           generation_config=json.loads((tok_dir / "generation_config.json").read_text()))
    code = code.replace('"Qwen2.5-7B-Instruct"', repr(str(tmp_path / "tiny")))
    if not torch.cuda.is_available():
        code = code.replace('"cuda"', '"cpu"')
    monkeypatch.chdir(tmp_path)  # the example saves to out/my-checkpoint
    questions = ["What is 17 * 3?", "Name a prime number."]
    ns = {"questions": questions}
    exec(compile(code, "README.md", "exec"), ns)

    # Loading: logits and hidden states of the chat prompt, and a saved copy that loads back equal.
    T = len(ns["ids"])
    assert ns["logits"].shape == (1, T, 151936) and ns["hidden"].shape == (1, T, 32)
    assert torch.equal(ns["logits"], ns["model"].logits(ns["hidden"]))
    back = M.load(tmp_path / "out" / "my-checkpoint", dtype=None).state_dict()
    assert all(torch.equal(t.cpu(), back[k]) for k, t in ns["model"].state_dict().items())
    # Sampling: 7 samples per question, prompt-major, a log-prob per token, one printed line each; released.
    outs = ns["outs"]
    assert [(o.prompt_index, o.sample_index) for o in outs] == [(i, j) for i in range(2) for j in range(7)]
    assert all(o.finish in ("eos", "length") and len(o.logprobs) == len(o.tokens) <= 1024 for o in outs)
    assert len(capsys.readouterr().out.splitlines()) >= len(outs)
    assert sample._engine is None
