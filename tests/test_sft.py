"""sft.py: the masked loss against slow references, one vs two gloo processes, kill-and-resume, the
Hugging Face export in transformers, and learning on a tiny trace set."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SHARED, hf_model

import model as M
import sft
from data import Tokenizer

QWEN25 = SHARED / "hf" / "qwen2.5-7b-instruct"


def test_tokenize_row_masks_header_trace_and_eos():
    tok = Tokenizer.load(QWEN25)
    msgs = [{"role": "system", "content": "judge"}, {"role": "user", "content": "A or B?"}]
    trace = "<type>Chat</type>\n<answer>[[B]]</answer>"
    ids, mask = sft.tokenize_row(tok, msgs, trace)
    assert tok.decode(ids) == tok.apply_chat_template(msgs + [{"role": "assistant", "content": trace}])
    masked = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(masked) == "<|im_start|>assistant\n" + trace + "<|im_end|>"
    assert mask[-1] == 0 and ids[-1] == tok.encode("\n")[0]  # the template's trailing newline carries no loss
    assert sum(mask) == len(ids) - len(tok.encode_chat(msgs)) - 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    hf_model("qwen2", 8, 2, 16, layers=2, vocab=512, seed=4).save_pretrained(d)
    return M.load(d, dtype=torch.float32)


def slow_logprobs(model, ids, tgt):
    out = torch.zeros(tgt.shape)
    logits = model(ids)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            out[b, t] = logits[b, t].log_softmax(-1)[tgt[b, t]]
    return out


@pytest.mark.parametrize("chunk", [1, 5, 7, 4096])
def test_chunked_logprobs_and_loss_match_slow_reference(tiny, chunk):
    torch.manual_seed(0)
    ids, tgt = torch.randint(0, 512, (3, 9)), torch.randint(0, 512, (3, 9))
    mask = torch.rand(3, 9) > 0.4
    mask[2] = False  # a sequence with no loss tokens contributes nothing
    logp = sft.token_logprobs(tiny.hidden(ids), tiny.output_weight, tgt, chunk)
    ref = slow_logprobs(tiny, ids, tgt)
    assert torch.allclose(logp, ref, atol=1e-5)
    loss = sft.sequence_nll_sum(logp, mask)
    want = sum(-(ref[b][mask[b]]).mean() for b in range(2))
    assert torch.allclose(loss, want, atol=1e-5)
    # gradients through the checkpointed chunks equal those of the plain computation
    tiny.zero_grad()
    loss.backward()
    g = tiny.layers[0].mlp.gate_up.weight.grad.clone()
    tiny.zero_grad()
    plain = tiny(ids).float().log_softmax(-1).gather(-1, tgt[..., None])[..., 0]
    sft.sequence_nll_sum(plain, mask).backward()
    assert torch.allclose(g, tiny.layers[0].mlp.gate_up.weight.grad, atol=1e-6)
    tiny.zero_grad()


def test_activation_checkpointing_recomputes_blocks_with_the_same_gradients(tiny):
    """checkpoint_blocks: each block runs twice per step (forward, then again in backward) and the gradients
    are those of the stored activations."""
    torch.manual_seed(1)
    ids, tgt = torch.randint(0, 512, (2, 11)), torch.randint(0, 512, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.bool)
    calls = []
    # pre-hooks: the recompute stops once it has what backward needs, so post-forward hooks do not see it
    hooks = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in tiny.layers]
    grads = {}
    try:
        for on in (False, True):
            tiny.train()
            tiny.checkpoint_blocks = on
            tiny.zero_grad()
            calls.clear()
            logp = sft.token_logprobs(tiny.hidden(ids), tiny.output_weight, tgt, 4)
            sft.sequence_nll_sum(logp, mask).backward()
            grads[on] = {k: p.grad.clone() for k, p in tiny.named_parameters()}
            assert len(calls) == len(tiny.layers) * (2 if on else 1)
    finally:
        for h in hooks:
            h.remove()
        tiny.checkpoint_blocks = False
        tiny.zero_grad()
        tiny.eval()
    for k in grads[False]:
        assert torch.allclose(grads[True][k], grads[False][k], atol=1e-6, rtol=1e-5), k


def test_metrics_up_to_the_saved_step(tmp_path, capsys):
    """On resume the metrics log keeps the steps up to the saved one; a last line cut short is dropped (said so),
    any other unreadable line is an error naming it."""
    log = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    log.write_text("\n".join(lines) + "\n" + lines[2][:9])
    assert sft.metrics_up_to(log, 2) == [json.loads(x) for x in lines[:2]]
    assert "dropping the unfinished last line 4" in capsys.readouterr().err
    for bad in ('{"loss": 1}', '{"step": true}', '{"step": 0}'):  # no step; a JSON true is not step 1
        log.write_text(lines[0] + "\n" + bad + "\n" + lines[2] + "\n")
        with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics line \(a JSON object with a step, a "
                                             r"whole number from 1\)"):
            sft.metrics_up_to(log, 3)


def test_lr_schedule():
    cfg = sft.SFTConfig(lr=1.0, warmup_ratio=0.03, min_lr_ratio=0.1)
    lrs = [sft.lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[:4] == [1 / 3, 2 / 3, 1.0, 1.0]  # ceil(0.03 * 100) = 3 warmup steps
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and abs(lrs[-1] - 0.1) < 1e-3


def test_micro_batches_respect_budget_and_keep_every_row():
    import random

    lengths = [random.Random(k).randint(5, 400) for k in range(50)]
    mbs = sft.micro_batches(list(range(50)), lengths, budget=800)
    assert sorted(i for mb in mbs for i in mb) == list(range(50))
    assert all(len(mb) == 1 or len(mb) * max(lengths[i] for i in mb) <= 800 for mb in mbs)


# -- whole runs, as subprocesses (one or two gloo processes on the CPU; the GPU tests at the end on GPUs) ---


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small Qwen2 (real Qwen2.5 tokenizer, so vocab 151936) and 16 short judge-style traces."""
    d = tmp_path_factory.mktemp("sft")
    hf_model("qwen2", 4, 2, 8, layers=2, vocab=151936, seed=1, inter=32, positions=12288).save_pretrained(d / "model")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(QWEN25 / f, d / "model")
    rows = []
    for k in range(16):
        at = "AB"[k % 2]
        rows.append({"context_messages": [{"role": "system", "content": "Judge."},
                                          {"role": "user", "content": f"{k}+{k}? A: {2 * k} B: {2 * k + 1}" + " pad" * (k % 5)}],
                     "winner": "model_a" if at == "A" else "model_b",
                     "response": f"<type>Reasoning</type><solution>{2 * k}</solution><answer>[[{at}]]</answer>"})
    (d / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d


def command(d, out, *extra, procs=1, gpu=False) -> tuple[list[str], dict]:
    """The command line and environment of one small sft.py run: one process, or `procs` under torchrun; on
    the CPU (gloo) on any machine unless gpu."""
    base = ["--model", str(d / "model"), "--data", str(d / "rows.jsonl"), "--out", str(out), "--global-batch", "6",
            "--micro-tokens", "120", "--lr", "3e-3", "--warmup-ratio", "0.3", "--compute-dtype", "float32",
            "--loss-chunk", "16", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29600 + hash(str(out)) % 300)}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the runs these tests compare are CPU runs, also on a GPU machine
    if procs == 1:
        return [sys.executable, str(ROOT / "sft.py"), *base], env
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
            f"--master_port={env['MASTER_PORT']}", str(ROOT / "sft.py"), *base], env


def run(d, out, *extra, procs=1, gpu=False):
    """sft.py run to its end (see command). Returns the metrics lines and the finished process; a failed run
    raises with its stderr."""
    cmd, env = command(d, out, *extra, procs=procs, gpu=gpu)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(r.stderr[-6000:])
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()], r


def weights(out):
    return M.load(out / "hf", dtype=torch.float32).state_dict()


@pytest.fixture(scope="module")
def straight(run_dir):
    return run(run_dir, run_dir / "straight")[0]


def test_one_process_equals_two_processes(run_dir, straight):
    two, _ = run(run_dir, run_dir / "two", procs=2)
    assert len(two) == len(straight) == 3  # 16 rows in batches of 6: 6, 6, 4
    for a, b in zip(straight, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
    wa, wb = weights(run_dir / "straight"), weights(run_dir / "two")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-2 * wa[k].abs().max().item() + 1e-6), k  # equal up to bf16 export


def test_kill_and_resume_continues_exactly(run_dir, straight):
    out = run_dir / "resumed"
    run(run_dir, out, "--max-steps", "1")  # stopped after step 1
    resumed, _ = run(run_dir, out, "--resume")
    assert [m["step"] for m in resumed] == [1, 2, 3]
    assert [m["loss"] for m in resumed] == [m["loss"] for m in straight]
    assert [m["lr"] for m in resumed] == [m["lr"] for m in straight]
    wa, wb = weights(run_dir / "straight"), weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_on_another_number_of_processes(run_dir, straight):
    """Stopped on two processes, resumed on one (the sharded state is resharded on load): the straight run's
    losses and steps."""
    out = run_dir / "reshard"
    run(run_dir, out, "--max-steps", "1", procs=2)
    resumed, _ = run(run_dir, out, "--resume")
    assert [m["step"] for m in resumed] == [1, 2, 3]
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(resumed, straight, strict=True))


def test_sigkill_at_any_moment_then_resume(run_dir, straight):
    """Killed with SIGKILL after its first saved state: --resume ends exactly where a straight run does."""
    import signal
    import time

    out = run_dir / "killed"
    cmd, env = command(run_dir, out, "--save-every", "1")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "state" / "progress.json").is_file() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    resumed, _ = run(run_dir, out, "--resume", "--save-every", "1")
    assert [m["step"] for m in resumed] == [1, 2, 3]  # no step logged twice
    assert [m["loss"] for m in resumed] == [m["loss"] for m in straight]
    wa, wb = weights(run_dir / "straight"), weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_state_is_a_clear_error_that_writes_nothing(run_dir, straight, tmp_path):
    with pytest.raises(AssertionError, match="no training state to resume from"):
        run(run_dir, tmp_path / "fresh", "--resume")
    assert not (tmp_path / "fresh").exists()  # it used to be made, holding a config.json
    # a save cut off after setting the old state aside: the error names it, and the folder is left as it was
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(run_dir / "straight" / "config.json", cut / "config.json")
    shutil.copytree(run_dir / "straight" / "state", cut / ".state.old-7")
    before = (cut / "config.json").read_bytes()
    with pytest.raises(AssertionError, match=r"cut/state: no training state to resume from; \S*cut/.state.old-7 is "
                                             r"the previous state, set aside by a save that was cut off: rename it"):
        run(run_dir, cut, "--resume")
    assert sorted(p.name for p in cut.iterdir()) == [".state.old-7", "config.json"]
    assert (cut / "config.json").read_bytes() == before


def test_a_run_folder_is_never_mixed_with_another_run(run_dir, straight):
    out = run_dir / "straight"
    before = {f: (out / f).read_bytes() for f in ("config.json", "metrics.jsonl", "state/progress.json")}
    with pytest.raises(AssertionError, match="holds a run .*pass --resume to continue it"):
        run(run_dir, out)  # a second fresh run would have appended its steps to this run's metrics
    with pytest.raises(AssertionError, match=r"lr: 0.003 there, 0.001 now; seed: 0 there, 1 now"):
        run(run_dir, out, "--resume", "--lr", "1e-3", "--seed", "1")
    assert before == {f: (out / f).read_bytes() for f in before}
    rows = (run_dir / "rows.jsonl").read_text()
    try:  # the same path with other rows
        (run_dir / "rows.jsonl").write_text(rows.replace("pad", "PAD"))
        with pytest.raises(AssertionError, match="data_sha256: '[0-9a-f]{64}' there, '[0-9a-f]{64}' now"):
            run(run_dir, out, "--resume")
    finally:
        (run_dir / "rows.jsonl").write_text(rows)
    assert before == {f: (out / f).read_bytes() for f in before}
    model_config = (run_dir / "model" / "config.json").read_bytes()
    with pytest.raises(AssertionError, match="config.json is not an SFT run's config"):
        run(run_dir, run_dir / "model")  # --out given the model folder: its config.json stays
    assert (run_dir / "model" / "config.json").read_bytes() == model_config
    (run_dir / "broken").mkdir()
    (run_dir / "broken" / "config.json").write_text("{cut short")
    with pytest.raises(AssertionError, match=r"broken/config.json: not valid JSON \(Expecting") as e:
        run(run_dir, run_dir / "broken", "--resume")  # named in one line, and left as it was
    assert "Traceback" not in str(e.value)
    assert (run_dir / "broken" / "config.json").read_text() == "{cut short"


@pytest.mark.parametrize("flag,value,match", [("--global-batch", "0", r"--global-batch must be >= 1, got 0"),
                                              ("--warmup-ratio", "1.5", r"--warmup-ratio must be in \[0, 1\]"),
                                              ("--lr", "nan", "--lr must be a finite number > 0, got nan"),
                                              ("--weight-decay", "inf", "--weight-decay must be a finite number >= 0"),
                                              ("--compute-dtype", "float16", "--compute-dtype must be bfloat16 or"),
                                              ("--beta2", "1", r"--beta2 must be in \[0, 1\), got 1.0"),  # AdamW's
                                              ("--beta1", "nan", r"--beta1 must be in \[0, 1\), got nan"),
                                              # torch.manual_seed's range (an OverflowError traceback after the
                                              # process group started)
                                              ("--seed", str(2**64), r"--seed must be in \[0, 9223372036854775807\]")])
def test_bad_settings_are_refused_before_any_work(tmp_path, flag, value, match):
    with pytest.raises(SystemExit, match=match):
        sft.main(["--model", "m", "--data", "d", "--out", str(tmp_path / "o"), flag, value])
    assert not (tmp_path / "o").exists()


def test_max_len_over_the_model_positions_is_refused_before_any_work(tmp_path):
    """Sequences of --max-len tokens must fit the positions the model was trained on (config.json's
    max_position_embeddings); nothing is read or written before the refusal."""
    hf_model("qwen2", 4, 2, 8, layers=1, positions=4096).save_pretrained(tmp_path / "m")
    args = ["--model", str(tmp_path / "m"), "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match=r"--max-len 12288 is over the model's max_position_embeddings, 4096 "
                                         r"\(.*m/config.json\): pass --max-len 4096 or less"):
        sft.main(args)
    with pytest.raises(SystemExit, match="--max-len 4097 is over"):
        sft.main(args + ["--max-len", "4097"])
    assert not (tmp_path / "o").exists()
    with pytest.raises(M.MissingInput, match="missing.jsonl: no such file"):  # at the limit: on to the data
        sft.main(args + ["--max-len", "4096"])


def test_a_bad_row_stops_a_new_run_before_anything_is_written(run_dir, tmp_path):
    rows = (run_dir / "rows.jsonl").read_text().splitlines()
    bad = json.loads(rows[3])
    del bad["winner"]
    (tmp_path / "rows.jsonl").write_text("\n".join(rows[:3] + [json.dumps(bad)] + rows[4:]) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:4: missing field 'winner'"):
        sft.main(["--model", str(run_dir / "model"), "--data", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_hf_export_loads_in_transformers(run_dir, straight):
    from transformers import AutoModelForCausalLM

    out = run_dir / "straight" / "hf"
    ref = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = M.load(out, dtype=torch.float32)
    ids = torch.randint(0, 151000, (2, 12))
    with torch.no_grad():
        assert (ref(ids).logits - ours(ids)).abs().max().item() < 1e-4
    start = M.load(run_dir / "model", dtype=torch.float32)
    assert not torch.equal(start.layers[0].mlp.gate_up.weight, ours.layers[0].mlp.gate_up.weight)  # it trained
    assert Tokenizer.load(out).eos_ids == [151645, 151643]  # tokenizer files travel with it
    cfg = json.loads((run_dir / "straight" / "config.json").read_text())
    assert cfg["global_batch"] == 6 and cfg["max_len"] == 12288  # the resolved config is saved


def test_without_activation_checkpointing_the_run_is_the_same(run_dir, straight):
    plain, _ = run(run_dir, run_dir / "plain", "--no-activation-checkpointing")
    assert json.loads((run_dir / "plain" / "config.json").read_text())["activation_checkpointing"] is False
    for a, b in zip(straight, plain, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5
    wa, wb = weights(run_dir / "straight"), weights(run_dir / "plain")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_loss_goes_down(straight):
    assert straight[-1]["loss"] < straight[0]["loss"] - 0.3, [m["loss"] for m in straight]
    assert all(0 <= m["padding_waste"] < 0.5 for m in straight)


@pytest.mark.parametrize("batch,epochs,says", [(6, 1, "3 steps of 6 (the last of 4)"),
                                                (6, 2, "6 steps of 6 (each epoch's last of 4)"),
                                                (16, 1, "1 step of 16"),
                                                (32, 1, "1 step of all 16 rows (fewer than --global-batch 32)"),
                                                (32, 2, "2 steps of all 16 rows (fewer than --global-batch 32)")])
def test_the_summary_says_how_the_rows_make_steps(batch, epochs, says):
    """16 rows in steps of 6 are 6, 6, 4 (per epoch); in steps of 16 one step; a --global-batch over the 16 rows
    gives one step of all of them per epoch, and says so, not "1 steps of 32". Checked against the steps'
    own sizes, counted here."""
    steps = sft.step_batches(16, sft.SFTConfig(global_batch=batch, epochs=epochs))
    sizes = [len(s) for s in steps]
    assert sum(sizes) == 16 * epochs and all(0 < n <= batch for n in sizes)
    assert says.startswith(f"{len(steps)} step")  # the count the line gives is the steps' count
    assert sft.describe_steps(steps, batch) == says


def test_the_run_prints_its_steps_and_takes_them(run_dir):
    """The run prints that summary and takes as many steps as it says: 2 epochs of 16 rows under --global-batch 32."""
    metrics, r = run(run_dir, run_dir / "batch32x2", "--global-batch", "32", "--epochs", "2")
    assert "| 2 steps of all 16 rows (fewer than --global-batch 32) |" in r.stdout, r.stdout
    assert len(metrics) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_run_matches_the_cpu_run(run_dir, straight):
    """The same run on a GPU (NCCL, float32 compute): the CPU run's losses, with the GPU's peak memory logged,
    and no warning that a barrier guessed its device (the process group is told it)."""
    on_gpu, r = run(run_dir, run_dir / "gpu", gpu=True)
    assert "barrier()" not in r.stderr, r.stderr[-2000:]
    assert [m["step"] for m in on_gpu] == [1, 2, 3]
    assert all(abs(a["loss"] - b["loss"]) < 1e-4 for a, b in zip(on_gpu, straight, strict=True))
    assert all(m["peak_mem_gib"] > 0 for m in on_gpu)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_two_processes_on_two_gpus_match_the_cpu_run(run_dir, straight):
    """FSDP over two GPUs (NCCL, float32 compute): the one-process CPU run's losses and weights."""
    two, _ = run(run_dir, run_dir / "gpu-two", procs=2, gpu=True)
    assert [m["step"] for m in two] == [1, 2, 3]
    assert all(abs(a["loss"] - b["loss"]) < 1e-4 for a, b in zip(two, straight, strict=True))
    wa, wb = weights(run_dir / "straight"), weights(run_dir / "gpu-two")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-2 * wa[k].abs().max().item() + 1e-6), k  # equal up to bf16 export


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_more_processes_than_gpus_is_a_clear_error(run_dir):
    """torchrun with one process more than the node's GPUs: the rank left without one names its device, the
    count and the fix (CUDA's own error would be "invalid device ordinal")."""
    n = torch.cuda.device_count()
    with pytest.raises(AssertionError, match=rf"device cuda:{n}: this process sees {n} GPUs?; .*--nproc_per_node at"):
        run(run_dir, run_dir / "crowded", procs=n + 1, gpu=True)


def test_long_rows_are_dropped_and_counted(run_dir):
    from data import read_rmr1_training

    tok = Tokenizer.load(run_dir / "model")
    rows = [sft.tokenize_row(tok, r["messages"], r["target"]) for r in read_rmr1_training(run_dir / "rows.jsonl")]
    lengths = [len(ids) for ids, _ in rows]
    cut = sorted(lengths)[len(lengths) // 2]
    _, r = run(run_dir, run_dir / "short", "--max-len", str(cut), "--max-steps", "1")
    counts = json.loads((run_dir / "short" / "data_stats.json").read_text())
    assert counts["rows"] == sum(n <= cut for n in lengths)
    assert counts["dropped_too_long"] + counts["dropped_prompt_too_long"] == sum(n > cut for n in lengths) > 0
    # each dropped row named by its number in the file (from 1), and on stderr
    named = sorted(counts["rows_dropped_too_long"] + counts["rows_dropped_prompt_too_long"])
    assert named == [k + 1 for k, n in enumerate(lengths) if n > cut]
    assert len(counts["rows_dropped_too_long"]) == counts["dropped_too_long"] > 0
    assert f"{counts['dropped_too_long']} row(s) dropped, longer than max_len (rows " in r.stderr
    assert counts["rows_whose_trace_does_not_end_in_the_winner"] == []


def test_traces_that_do_not_end_in_their_winner_are_listed(tmp_path):
    msgs = [{"role": "system", "content": "Judge."}, {"role": "user", "content": "A or B?"}]
    traces = [("model_a", "<eval>ok</eval>\n<answer>[[A]]</answer>"), ("model_b", "<answer>[[B]]</answer>"),
              ("model_a", "<eval>B wins</eval>\n<answer>[[B]]</answer>"),  # the other verdict
              ("model_b", "<eval>no verdict</eval>"),
              ("model_a", "<answer>[[A]]</answer> or <answer>[[B]]</answer>")]  # both: not the winner's alone
    rows = [{"context_messages": msgs, "winner": w, "response": t} for w, t in traces]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, counts = sft.load_rows(sft.SFTConfig(data=str(tmp_path / "rows.jsonl")), Tokenizer.load(QWEN25))
    assert len(kept) == 5 and counts["rows_whose_trace_does_not_end_in_the_winner"] == [3, 4, 5]
    # the rows, encoded in a batch and kept as int32 / bool tensors, are tokenize_row's row by row
    assert all(ids.dtype == torch.int32 and mask.dtype == torch.bool for ids, mask in kept)
    assert [(ids.tolist(), mask.tolist()) for ids, mask in kept] == [
        sft.tokenize_row(Tokenizer.load(QWEN25), msgs, t) for _, t in traces]
    # rows are named by their line, as in errors: blank lines before a row move its number
    lines = [json.dumps(r) for r in rows]
    (tmp_path / "gaps.jsonl").write_text("\n\n".join(lines[:2]) + "\n\n\n" + "\n".join(lines[2:]) + "\n")
    _, counts = sft.load_rows(sft.SFTConfig(data=str(tmp_path / "gaps.jsonl")), Tokenizer.load(QWEN25))
    assert counts["rows_whose_trace_does_not_end_in_the_winner"] == [6, 7, 8]
    (tmp_path / "gaps.jsonl").write_text("\n\n".join(lines[:2] + [json.dumps({**rows[2], "response": None})]) + "\n")
    with pytest.raises(ValueError, match=r"gaps.jsonl:5: SFT rows need the target trace"):
        sft.load_rows(sft.SFTConfig(data=str(tmp_path / "gaps.jsonl")), Tokenizer.load(QWEN25))


def test_non_finite_loss_stops_with_the_step(run_dir):
    with pytest.raises(AssertionError, match="step 2: non-finite"):
        run(run_dir, run_dir / "boom", "--lr", "1e30", "--save-every", "1", "--grad-clip", "1e30")
    assert (run_dir / "boom" / "state" / "progress.json").is_file()  # the last good state is intact


def test_an_empty_data_file_is_an_error(tmp_path):
    (tmp_path / "rows.jsonl").write_text("\n")
    with pytest.raises(M.InputError, match="rows.jsonl: no rows"):
        sft.load_rows(sft.SFTConfig(data=str(tmp_path / "rows.jsonl")), tok=None)


def test_a_damaged_state_is_named_in_one_line(run_dir, straight):
    """A state file cut short (by a disk, or a hand) ends --resume in one line naming the folder and the first
    failing rank's error, not in torch.distributed.checkpoint's traceback; the state and config.json are left as
    they were."""
    out = run_dir / "damaged"
    shutil.copytree(run_dir / "straight", out)
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "out": "elsewhere"}))  # a resume would rewrite it
    before = (out / "config.json").read_bytes()
    for name in ("__0_0.distcp", ".metadata"):  # (EOFError) and (AssertionError: metadata is None; ...) in torch 2.13
        f = out / "state" / name
        whole = f.read_bytes()
        f.write_bytes(whole[:1000])
        with pytest.raises(AssertionError) as e:
            run(run_dir, out, "--resume")
        err = str(e.value).splitlines()
        assert re.match(r"sft.py: \S*damaged/state: the saved training state cannot be read \(\w+(Error|Exception)\b",
                        err[-1]), err[-1]
        assert not any(line.startswith("[rank0]: Traceback") for line in err)  # the traceback a raw error prints
        assert f.read_bytes() == whole[:1000]
        assert (out / "config.json").read_bytes() == before  # the state is read before anything is written
        f.write_bytes(whole)
    (out / "state" / "progress.json").write_text('{"steps": 3}')
    with pytest.raises(AssertionError, match=r"sft.py: \S*progress.json: 'step' should be a whole number >= 0, "
                                             r"got None\n$"):
        run(run_dir, out, "--resume")
    assert (out / "config.json").read_bytes() == before  # refused before anything was written
    (out / "state" / "progress.json").write_text('{"step": 9}')  # the run has 3 steps: the file was edited
    with pytest.raises(AssertionError, match=r"sft.py: \S*progress.json: step 9 is past the run's last, 3\n$"):
        run(run_dir, out, "--resume")
    assert (out / "config.json").read_bytes() == before
    (out / "state" / "progress.json").write_text('{"step": 3}')
    (out / "config.json").write_text(json.dumps({**saved, "data": 5}))  # the checks read it as a path
    with pytest.raises(AssertionError, match=r"sft.py: \S*damaged/config.json: 'data' should be a string, got 5 "):
        run(run_dir, out, "--resume")
