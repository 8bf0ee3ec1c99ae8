"""The README's Python examples, run as written on a tiny checkpoint: only the folder name is swapped in
(and, on a machine without a GPU, "cuda" becomes "cpu"), so an example that stops working fails here."""

import re

import torch
from conftest import ROOT, tiny_judge

import model as M
import sample


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 2  # loading a checkpoint, sampling (a new example needs its checks here)
    code = "\n".join(blocks)
    assert code.count('"Qwen2.5-7B-Instruct"') == 3
    tiny_judge(tmp_path / "tiny", layers=2)
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
