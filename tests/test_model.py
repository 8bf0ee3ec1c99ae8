"""model.py against transformers: logits, checkpoint round trips, and every refusal."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED, hf_model

import model as M

# (arch, heads, kv heads, head_dim, hidden): GQA 1:1, 2:1, 4:1 and 7:1 (Qwen2.5-7B's 28:4); Qwen3 with
# heads*head_dim != hidden (as Qwen3-0.6B: 16 x 128 > 1024).
SHAPES = [
    ("qwen2", 4, 4, 16, None),
    ("qwen2", 14, 2, 8, None),
    ("qwen2", 8, 2, 16, None),
    ("qwen3", 8, 2, 16, 96),
    ("qwen3", 14, 2, 8, None),
    ("qwen3", 4, 1, 32, 64),
]


def logits_hf(ref, ids):
    with torch.no_grad():
        return ref(ids).logits


@pytest.mark.parametrize("arch,heads,kv,hd,hidden", SHAPES)
@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers(tmp_path, arch, heads, kv, hd, hidden, tied):
    ref = hf_model(arch, heads, kv, hd, hidden, tied=tied, seed=heads + kv)
    ref.save_pretrained(tmp_path)
    ours = M.load(tmp_path, dtype=torch.float32)
    assert ours.cfg.n_heads == heads and ours.cfg.n_kv_heads == kv and ours.cfg.tie_word_embeddings == tied
    for T in (1, 7, 13):
        ids = torch.randint(0, 512, (3, T))
        with torch.no_grad():
            diff = (ours(ids) - logits_hf(ref, ids)).abs().max().item()
        assert diff < 1e-4, (T, diff)


def test_sharded_and_bf16_on_disk(tmp_path):
    ref = hf_model("qwen2", 14, 2, 8, tied=False, layers=3, seed=3).to(torch.bfloat16)
    ref.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2  # really sharded
    ours = M.load(tmp_path, dtype=torch.float32)
    ref = ref.float()  # the same bf16 values, computed in float32 on both sides
    ids = torch.randint(0, 512, (2, 11))
    with torch.no_grad():
        assert (ours(ids) - logits_hf(ref, ids)).abs().max().item() < 1e-4
    # dtype=None keeps the checkpoint's bf16
    assert M.load(tmp_path, dtype=None).embed.weight.dtype == torch.bfloat16


def test_row_reads_straddle_fused_parts(tmp_path):
    """An FSDP rank reads only its rows of a fused parameter; row ranges that cut through q|k|v and
    gate|up must come back exactly as the matching rows of the fully loaded parameter."""
    hf_model("qwen2", 4, 2, 16, layers=1, inter=40, seed=4).save_pretrained(tmp_path)
    full = M.load(tmp_path, dtype=torch.float32)
    params = dict(full.named_parameters())
    for start, stop in [(0, 1), (50, 77), (63, 65), (70, 128), (39, 41)]:
        got = {}
        rows = lambda name: (min(start, params[name].shape[0]), min(stop, params[name].shape[0]))  # noqa: E731
        for ours, hf_name, t, row in M.read_tensors(tmp_path, full.cfg, rows=rows):
            a, b = rows(ours)
            assert len(t) == 0 or a <= row and row + len(t) <= b, (hf_name, row, len(t))
            got.setdefault(ours, torch.full((b - a, *params[ours].shape[1:]), float("nan")))
            got[ours][row - a : row - a + len(t)] = t.float()
        for name, p in params.items():
            a, b = rows(name)
            assert torch.equal(got[name], p.detach()[a:b]), (name, a, b)


def test_bf16_compute_matches_transformers_bf16(tmp_path):
    ref = hf_model("qwen3", 8, 2, 16, 96, seed=5).to(torch.bfloat16)
    ref.save_pretrained(tmp_path)
    ours = M.load(tmp_path, dtype=torch.bfloat16)
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        a, b = ours(ids).float(), logits_hf(ref, ids).float()
    # identical op order: bf16 results agree to within one bf16 rounding of the logits
    assert (a - b).abs().max().item() <= 2e-2 * b.abs().max().item()


@pytest.mark.parametrize("tied", [False, True])
def test_matrices_load_column_major_and_row_major_ones_give_the_same_logits(tmp_path, tied):
    """load keeps the model's layout: every nn.Linear weight column-major (its transpose contiguous), the
    embedding and vectors row-major. A row-major model (as sft.py builds one for FSDP2) holding the same values
    gives the same logits."""
    hf_model("qwen2", 8, 2, 16, tied=tied, seed=6).save_pretrained(tmp_path)
    cols = M.load(tmp_path, dtype=torch.float32)
    linear = {n for n, mod in cols.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert len(linear) == 4 * cols.cfg.n_layers + (not tied)  # qkv, o, gate_up, down; the untied lm_head
    for name, p in cols.named_parameters():
        if name.removesuffix(".weight") in linear:
            assert p.t().is_contiguous() and not p.is_contiguous(), name
        else:
            assert p.is_contiguous(), name
    rows = M.Transformer(cols.cfg, column_major=False)
    rows.load_state_dict(cols.state_dict())  # copies the values into its own (row-major) parameters
    assert all(p.is_contiguous() for p in rows.parameters())
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(rows(ids), cols(ids), atol=1e-5, rtol=1e-5)


def test_the_embedding_is_drawn_where_the_model_has_storage(tmp_path):
    """Transformer makes its embedding table itself (nn.Embedding's own init on the meta device first imports
    torch._dynamo): on a real device the table is nn.Embedding's own draw, on the meta device only a shape."""
    hf_model("qwen2", 8, 2, 16, seed=6).save_pretrained(tmp_path)
    cfg = M.load_config(tmp_path)
    torch.manual_seed(0)
    w = M.Transformer(cfg).embed.weight
    torch.manual_seed(0)
    want = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size).weight
    assert torch.equal(w, want) and w.requires_grad and w.std() > 0.5  # the same N(0, 1) draw, trained
    with torch.device("meta"):
        assert M.Transformer(cfg).embed.weight.is_meta
    # what the table is made by hand for: a process that builds the model on the meta device, as `load` does,
    # does not import torch's compiler (about a second of every CLI's start on a CPU)
    code = (f"import sys, torch; before = 'torch._dynamo' in sys.modules; import model; "
            f"model.load({str(tmp_path)!r}, dtype=torch.float32); print(before, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(M.__file__).parent, capture_output=True, text=True,
                         check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}).stdout.split()
    assert out in (["False", "False"], ["True", "True"]), out  # (a torch that imports it itself: nothing to check)


def test_hidden_is_logits_before_head(tmp_path):
    hf_model("qwen2", tied=True).save_pretrained(tmp_path)
    m = M.load(tmp_path, dtype=torch.float32)
    ids = torch.randint(0, 512, (2, 5))
    with torch.no_grad():
        h = m.hidden(ids)
        assert h.shape == (2, 5, m.cfg.hidden_size)
        torch.testing.assert_close(m.logits(h), m(ids))


@pytest.mark.parametrize("arch,tied,shard", [("qwen2", False, None), ("qwen3", True, 30_000), ("qwen2", True, 20_000)])
def test_save_loads_in_transformers(tmp_path, arch, tied, shard):
    from transformers import AutoModelForCausalLM

    ref = hf_model(arch, 8, 2, 16, tied=tied, seed=7)
    ref.save_pretrained(tmp_path / "src")
    ours = M.load(tmp_path / "src", dtype=torch.float32)
    kw = {"max_shard_bytes": shard} if shard else {}
    M.save(ours, tmp_path / "out", **kw)
    if shard:
        assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        assert (logits_hf(back, ids) - ours(ids)).abs().max().item() < 1e-5
    # load -> save -> load: bit-identical parameters
    again = M.load(tmp_path / "out", dtype=torch.float32)
    for (n, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] == tied


def test_save_bf16_and_generation_config(tmp_path):
    ref = hf_model("qwen2", seed=9)
    ref.generation_config.eos_token_id = [5, 6]
    ref.save_pretrained(tmp_path / "src")
    ours = M.load(tmp_path / "src", dtype=torch.bfloat16)
    M.save(ours, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text())["eos_token_id"] == [5, 6]
    again = M.load(tmp_path / "out", dtype=None)
    assert again.embed.weight.dtype == torch.bfloat16
    assert torch.equal(again.embed.weight, ours.embed.weight)


def test_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    ref = hf_model("qwen2", seed=1)
    ref.save_pretrained(tmp_path / "src")
    m = M.load(tmp_path / "src", dtype=torch.float32)
    M.save(m, tmp_path / "ckpt")
    before = {f.name: f.read_bytes() for f in (tmp_path / "ckpt").iterdir()}

    calls = []
    real = safetensors.torch.save_file

    def crash_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-save")
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", crash_on_second)
    with torch.no_grad():
        m.embed.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        M.save(m, tmp_path / "ckpt", max_shard_bytes=20_000)
    after = {f.name: f.read_bytes() for f in (tmp_path / "ckpt").iterdir()}
    assert after == before  # the previous checkpoint is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "src"]  # no temp folder left behind
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        M.save(m, tmp_path / "new", max_shard_bytes=20_000)
    assert not (tmp_path / "new").exists()


def test_save_replaces_a_checkpoint_but_never_a_folder_holding_other_files(tmp_path):
    ref = hf_model("qwen2", seed=1)
    ref.save_pretrained(tmp_path / "src")
    m = M.load(tmp_path / "src", dtype=torch.float32)
    tok_dir = SHARED / "hf" / "qwen2.5-7b-instruct"
    M.save(m, tmp_path / "ckpt", max_shard_bytes=20_000, copy_files_from=tok_dir)  # sharded, tokenizer files
    with torch.no_grad():
        m.embed.weight.add_(1.0)
    M.save(m, tmp_path / "ckpt")  # one of ours is replaced whole: one shard now, no stale index or shards
    assert sorted(f.name for f in (tmp_path / "ckpt").iterdir()) == ["config.json", "generation_config.json",
                                                                    "model.safetensors"]
    assert torch.equal(M.load(tmp_path / "ckpt", dtype=torch.float32).embed.weight, m.embed.weight)
    runs = tmp_path / "runs"
    (runs / "sft").mkdir(parents=True)
    (runs / "notes.txt").write_text("a week of work")
    with pytest.raises(FileExistsError, match=r"runs holds \['notes.txt', 'sft'\], which are not checkpoint files"):
        M.save(m, runs)
    assert (runs / "notes.txt").read_text() == "a week of work" and (runs / "sft").is_dir()
    with pytest.raises(FileExistsError, match="notes.txt is a file"):
        M.save(m, runs / "notes.txt")
    # a tokenizer source without tokenizer files (a typo, a weights-only folder) would give a checkpoint none
    for src in (tmp_path / "typo", tmp_path / "src", runs / "notes.txt"):
        with pytest.raises(FileNotFoundError, match=rf"^save: copy_files_from {re.escape(str(src))} is not a folder "
                                                    r"holding tokenizer files \(tokenizer.json, "):
            M.save(m, tmp_path / "new", copy_files_from=src)
    for size in (0, -5, 2.5, None):  # 0 and below gave a shard per tensor, None a TypeError from a comparison
        with pytest.raises(ValueError, match=rf"^save: max_shard_bytes must be an integer >= 1, got {size}$"):
            M.save(m, tmp_path / "new", max_shard_bytes=size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "runs", "src"]  # no temp folder left behind


def test_load_refuses_a_dtype_that_is_not_a_float(tmp_path):
    """An integer dtype would fail deep in the copy of the first tensor, a string at the first .to()."""
    _saved(tmp_path)
    for dtype in (torch.int8, "bfloat16"):
        with pytest.raises(TypeError, match=rf"^load: dtype must be a floating-point torch.dtype .*, got {dtype!r}$"):
            M.load(tmp_path, dtype=dtype)


# -- refusals ----------------------------------------------------------------------------------


def base_config(**over):
    d = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
         "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
         "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
    d.update(over)
    return d


@pytest.mark.parametrize("over,field", [
    ({"architectures": ["LlamaForCausalLM"]}, "architectures"),
    ({"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe"}, "architectures"),
    ({"model_type": "qwen3"}, "model_type"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "rope_parameters.rope_type"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"layer_types": ["sliding_attention"]}, "layer_types[0]"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"attention_dropout": 0.1}, "attention_dropout"),
    ({"quantization_config": {"quant_method": "awq"}}, "quantization_config"),
    ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 8, "attention_bias": True},
     "attention_bias"),
    ({"hidden_size": "32"}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"num_key_value_heads": 2.0}, "num_key_value_heads"),
    ({"vocab_size": True}, "vocab_size"),
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps"),
    ({"rope_theta": 0}, "rope_theta"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": None}}, "rope_theta"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings"),
    # shapes json allows and the checks once indexed, divided or called .get on (a traceback before)
    ({"architectures": "Qwen2ForCausalLM"}, "architectures"),
    ({"architectures": [["Qwen2ForCausalLM"]]}, "architectures"),
    ({"hidden_size": None}, "hidden_size"),
    ({"num_attention_heads": None}, "num_attention_heads"),
    ({"layer_types": "full_attention"}, "layer_types"),
    ({"quantization_config": "awq"}, "quantization_config"),
    ({"rope_parameters": 1e6}, "rope_parameters"),
])
def test_config_refusals_name_the_field(tmp_path, over, field):
    (tmp_path / "config.json").write_text(json.dumps(base_config(**over)))
    with pytest.raises(M.InputError) as e:
        M.load(tmp_path)
    assert f"unsupported {field}=" in str(e.value) and "config.json" in str(e.value)


def test_missing_config_field(tmp_path):
    d = base_config()
    del d["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="missing field 'intermediate_size'"):
        M.load(tmp_path)


def test_accepts_official_configs(shared):
    for name in ("qwen2.5-7b-instruct", "qwen2.5-1.5b-instruct", "qwen3-0.6b", "qwen3-32b",
                 "deepseek-r1-distill-qwen-32b"):
        cfg = M.load_config(shared / "hf" / name)
        hf = json.loads((shared / "hf" / name / "config.json").read_text())
        assert cfg.n_kv_heads == hf["num_key_value_heads"] and cfg.tie_word_embeddings == hf["tie_word_embeddings"]
    assert M.load_config(shared / "hf" / "qwen3-0.6b").head_dim == 128  # explicit, != 1024 / 16


def test_a_gpu_this_process_cannot_see_is_an_error_naming_it(tmp_path, monkeypatch):
    """load on a GPU index past what this process sees stops before reading any tensor, naming the device and
    the count (CUDA's own error, at the first tensor placed there, is "invalid device ordinal"). The count is
    faked, so this runs on a CPU build too."""
    _saved(tmp_path)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(ValueError, match=r"^device cuda:1: this process sees 1 GPU \(CUDA_VISIBLE_DEVICES='3'\)$"):
        M.load(tmp_path, device="cuda:1")
    fine = ("cuda:0", "cuda", "cpu")
    assert [M.checked_device(d) for d in fine] == [torch.device(d) for d in fine]
    with pytest.raises(ValueError, match=r"^device cuda:1: .*; torchrun starts one process per GPU \(--nproc_per_node"):
        M.local_gpu(1)  # a torchrun process past its node's GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(ValueError, match=r"^device cuda: this process sees 0 GPUs$"):
        M.checked_device("cuda")
    for other in ("tpu", "cuda:x", "meta", "mps"):  # torch refuses the first two itself, with a traceback
        with pytest.raises(ValueError, match=rf"^device {other}: expected cuda, cuda:N or cpu$"):
            M.checked_device(other)


def _saved(tmp_path, **kw):
    ref = hf_model("qwen2", seed=2, **kw)
    ref.save_pretrained(tmp_path)
    return ref


def test_missing_shard(tmp_path):
    _saved(tmp_path)
    ref = hf_model("qwen2", seed=2)
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=shards[1].name):
        M.load(tmp_path)


def test_broken_index_or_folder(tmp_path):
    """The index of a sharded checkpoint must map every tensor to the shard that holds it; a folder needs a
    config.json. Each error names the file."""
    ref = hf_model("qwen2", seed=2)
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    index = tmp_path / "model.safetensors.index.json"
    good = json.loads(index.read_text())
    wm = good["weight_map"]
    name = "model.norm.weight"
    other = next(f for f in sorted(set(wm.values())) if f != wm[name])
    index.write_text(json.dumps({**good, "weight_map": {**wm, name: other}}))
    with pytest.raises(ValueError, match=f"{other}: the index places 'model.norm.weight' here but the file lacks it"):
        M.load(tmp_path)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match="model.safetensors.index.json: no 'weight_map'"):
        M.load(tmp_path)
    index.write_text(json.dumps(good))
    M.load(tmp_path)  # restored: loads
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no config.json"):
        M.load(tmp_path)


@pytest.mark.parametrize("name,content,match", [
    ("config.json", '{"architectures": ["Qwen2ForCausalLM"], ', r"config.json: not valid JSON \(Expecting"),
    ("config.json", '["Qwen2ForCausalLM"]', r"config.json: expected a JSON object, got a JSON array"),
    ("generation_config.json", '{"eos_token_id": 1, "eos_token_id": 2}',
     r"generation_config.json: key 'eos_token_id' appears twice in one object"),
    ("generation_config.json", '{"eos_token_id": [1, 2', r"generation_config.json: not valid JSON"),
    ("model.safetensors.index.json", "", r"model.safetensors.index.json: not valid JSON"),
    ("model.safetensors.index.json", '{"weight_map": {"lm_head.weight": 5}}',
     r"model.safetensors.index.json: weight_map should give each tensor a shard file name, got 5 for 'lm_head.weight'"),
])
def test_a_json_file_of_the_folder_that_is_not_json_is_named(tmp_path, name, content, match):
    ref = hf_model("qwen2", seed=2)
    ref.save_pretrained(tmp_path, max_shard_size="20KB")  # sharded: it has an index
    (tmp_path / "generation_config.json").write_text("{}")
    M.load(tmp_path)  # loads as written
    (tmp_path / name).write_text(content)
    with pytest.raises(M.InputError, match=match):
        M.load(tmp_path)


def test_truncated_file(tmp_path):
    _saved(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="model.safetensors"):
        M.load(tmp_path)


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(base_config()))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        M.load(tmp_path)


def _rewrite(tmp_path, fn):
    from safetensors.torch import load_file, save_file

    f = tmp_path / "model.safetensors"
    sd = load_file(f)
    fn(sd)
    save_file(sd, f)


def test_unsupported_dtype(tmp_path):
    _saved(tmp_path)
    _rewrite(tmp_path, lambda sd: sd.__setitem__("model.norm.weight", sd["model.norm.weight"].to(torch.float64)))
    with pytest.raises(ValueError, match="'model.norm.weight' has dtype F64"):
        M.load(tmp_path)


def test_extra_missing_and_misshaped_tensors(tmp_path):
    _saved(tmp_path)
    _rewrite(tmp_path, lambda sd: sd.__setitem__("model.layers.0.self_attn.rotary.inv_freq", torch.ones(8)))
    with pytest.raises(ValueError, match="'model.layers.0.self_attn.rotary.inv_freq' has no place"):
        M.load(tmp_path)
    _saved(tmp_path)
    _rewrite(tmp_path, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match="lacks tensor 'model.layers.1.mlp.up_proj.weight'"):
        M.load(tmp_path)
    _saved(tmp_path)
    _rewrite(tmp_path, lambda sd: sd.__setitem__("model.norm.weight", torch.ones(7)))
    with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(7,\), expected \(64,\)"):
        M.load(tmp_path)


def test_tied_checkpoint_with_lm_head(tmp_path):
    """Some tied checkpoints also store lm_head.weight: accepted if equal to the embedding, else refused."""
    _saved(tmp_path, tied=True)
    _rewrite(tmp_path, lambda sd: sd.__setitem__("lm_head.weight", sd["model.embed_tokens.weight"].clone()))
    M.load(tmp_path, dtype=torch.float32)
    _rewrite(tmp_path, lambda sd: sd.__setitem__("lm_head.weight", sd["lm_head.weight"] + 1))
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        M.load(tmp_path, dtype=torch.float32)
