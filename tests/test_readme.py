"""The README's Python examples, run as written on a tiny checkpoint: only the folder name is swapped in
(and, on a machine without a GPU, "cuda" becomes "cpu"), so an example that stops working fails here. And its
first command, the demo."""

import os
import re

import pytest
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


def test_readme_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """`python demo.py`, the README's first command, as written but into tmp_path/runs/demo: a checkpoint, two SFT
    steps, its export judging one pair and two benchmarks, and a rescoring without a model. --help only prints."""
    import json

    import demo

    monkeypatch.setattr(demo, "tiny_checkpoint", lambda path: pytest.fail("--help ran the demo"))
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0 and "python demo.py" in capsys.readouterr().out
    monkeypatch.undo()
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    group_env = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    before = {k: os.environ.get(k) for k in group_env}
    demo.main([])
    # its one-process SFT group writes nothing to the environment: a command started from this process inherits no
    # MASTER_PORT of a group gone (it once did, and a second one-process run then found that port in use)
    assert {k: os.environ.get(k) for k in group_env} == before
    out = tmp_path / "runs" / "demo"
    losses = [json.loads(line)["loss"] for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and losses[1] < losses[0]  # two steps of 4 rows, lr 1e-3
    trained, start = (M.load(out / d, dtype=torch.float32).state_dict() for d in ("sft/hf", "tiny-qwen2"))
    assert trained.keys() == start.keys() and not torch.equal(trained["embed.weight"], start["embed.weight"])
    printed = capsys.readouterr().out
    assert "\n\nverdict: " in printed and printed.rstrip().endswith(f"demo done: judgments and scores under {out}")
    rm_bench = json.loads((out / "rm-bench" / "scores.json").read_text())
    assert (rm_bench["bench"], rm_bench["pairs_judged"], rm_bench["domains"]["chat"]["items"]) == ("rm-bench", 18, 2)
    assert len((out / "rm-bench" / "judgments.jsonl").read_text().splitlines()) == 18
    rmb = json.loads((out / "rmb" / "scores.json").read_text())
    assert (rmb["pairs_in_both_orders"], rmb["by_order"]["chosen_at_B"]["counts"]["bon_items_helpfulness"]) == (10, 4)
    assert len((out / "rmb" / "judgments.jsonl").read_text().splitlines()) == 20  # both orders
