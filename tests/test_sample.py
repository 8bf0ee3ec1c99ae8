"""sample.py against transformers' generate, a full forward, and the exact filtered distributions."""

import math
import re
import sys

import numpy as np
import pytest
import torch
from conftest import hf_model

import model as M
import sample
from sample import TextStream, filter_logits, generate, sample_next, sequence_key, uniform_at


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def models(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    ref = hf_model(request.param, 8, 2, 16, layers=2, vocab=512, seed=11)
    ref.save_pretrained(d)
    return ref, M.load(d, dtype=torch.float32).eval()


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (L,), generator=g).tolist() for L in lengths]


def record_steps(monkeypatch) -> list[int]:
    """The batch size of every decode step the engine runs from now on (eager steps: cuda_graph=False)."""
    sizes, step = [], sample.Engine._step
    monkeypatch.setattr(sample.Engine, "_step", lambda self, B: sizes.append(B) or step(self, B))
    return sizes


def test_greedy_equals_transformers_generate(models):
    ref, ours = models
    ps = prompts([5, 17, 1, 9, 12])
    # fewer slots than prompts (refills), and prefill batches of at most 20 padded tokens (chunking)
    outs = generate(ours, ps, 40, temperature=0, slots=3, sync_every=5, prefill_tokens=20)
    for p, o in zip(ps, outs, strict=True):
        with torch.no_grad():
            r = ref.generate(torch.tensor([p]), max_new_tokens=40, min_new_tokens=40, do_sample=False)
        assert o.tokens == r[0, len(p):].tolist()
        assert o.finish == "length" and len(o.tokens) == 40


@pytest.mark.parametrize("split", [dict(prefill_tokens=100), dict(slots=2)], ids=["one-wave", "two-admissions"])
def test_prompts_of_similar_lengths_are_prefilled_together(models, monkeypatch, split):
    """Prefill batches are right-padded to their longest prompt, so prompts go in by length, shortest first: 10 and
    12 tokens in one forward, 48 and 50 in the other, 124 padded tokens for 120 (in their own order, 10 with 50 and
    12 with 48: 196). So it goes whether all four are admitted at once into batches of at most 100 tokens, or two
    at a time into 2 slots, the later two as the first two finish. The results come back in prompt order and equal
    prompts generated one by one."""
    _, ours = models
    ps = prompts([10, 50, 12, 48], seed=4)
    shapes, hidden = [], M.Transformer.hidden
    monkeypatch.setattr(M.Transformer, "hidden",
                        lambda self, x, *a: shapes.append(tuple(x.shape)) or hidden(self, x, *a))
    outs = generate(ours, ps, 6, temperature=0, **split)
    assert [s for s in shapes if s[1] > 1] == [(2, 12), (2, 50)]  # (decode steps are [B, 1])
    monkeypatch.undo()
    assert [o.prompt_index for o in outs] == [0, 1, 2, 3]
    assert [o.tokens for o in outs] == [generate(ours, [p], 6, temperature=0)[0].tokens for p in ps]


def test_batched_equals_one_at_a_time(models):
    _, ours = models
    ps = prompts([3, 14, 7, 1], seed=1)
    together = generate(ours, ps, 33, temperature=0)
    for p, o in zip(ps, together, strict=True):
        assert generate(ours, [p], 33, temperature=0)[0].tokens == o.tokens


def test_sampled_tokens_do_not_depend_on_slots_or_sync(models):
    _, ours = models
    ps = prompts([4, 9, 6], seed=2)
    kw = dict(n=3, temperature=0.9, top_p=0.95, seed=7, return_logprobs=True)
    a = generate(ours, ps, 25, slots=9, sync_every=16, **kw)
    b = generate(ours, ps, 25, slots=2, sync_every=3, prefill_tokens=1, **kw)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert len({tuple(x.tokens) for x in a}) == 9  # and the samples do differ
    c = generate(ours, ps, 25, slots=9, **{**kw, "seed": 8})
    assert [x.tokens for x in a] != [x.tokens for x in c]


def test_progress_hears_of_each_sample_once_as_its_row_finishes(models, monkeypatch):
    """progress(sample) is called once per Sample returned (the last rows' too), in the order the rows finish:
    a row of 3 tokens is reported while the 30-token rows still decode."""
    import sample

    _, ours = models
    ps = prompts([9, 4, 6], seed=3)  # the queue takes them shortest first: prompt 1's short rows in the first wave
    heard, chunks, run = [], [], sample.Engine._run

    def counted(self, *a):
        chunks.append(len(heard))  # samples reported before each chunk of decode steps
        return run(self, *a)

    monkeypatch.setattr(sample.Engine, "_run", counted)
    outs = generate(ours, ps, [30, 3, 30], n=2, temperature=0.8, slots=4, sync_every=4, progress=heard.append)
    assert sorted(heard, key=lambda o: (o.prompt_index, o.sample_index)) == outs
    assert [o.prompt_index for o in heard[:2]] == [1, 1]  # the short rows first
    assert 0 < chunks[-1] < len(outs)  # ... while the long ones still decode
    assert all(any(h is o for o in outs) for h in heard)  # the very objects returned


def test_each_token_is_drawn_with_the_number_of_its_sequence_and_position(models):
    """The documented counter: new token t of sample j of prompt i is the draw of sample_next from the
    logits that predict it (a full forward) with uniform_at(sequence_key(seed, i * n + j), len(prompt) + t),
    whatever slot, batch or chunk produced it."""
    _, ours = models
    ps, n, seed = prompts([5, 12, 3], seed=13), 2, 9
    kw = dict(temperature=0.8, top_k=40)
    outs = generate(ours, ps, [9, 14, 6], n=n, seed=seed, slots=4, sync_every=3, **kw)
    for o in outs:
        p = ps[o.prompt_index]
        with torch.no_grad():
            logits = ours(torch.tensor([p + o.tokens]))[0, len(p) - 1:-1]  # [T,V] what predicted each token
        key = sequence_key(seed, torch.tensor([o.prompt_index * n + o.sample_index]))
        u = uniform_at(key, len(p) + torch.arange(len(o.tokens)))  # [T]
        want = [sample_next(logits[t:t + 1], u[t:t + 1], logprobs=False, **kw)[0].item() for t in range(len(u))]
        assert o.tokens == want


def use_rope_matrix(monkeypatch, on: bool) -> list[int]:
    """Decode steps rotate by rope_matrix (on) or by the elementwise tables (off, as steps of many rows do);
    returns the batch sizes of the steps that built matrices."""
    monkeypatch.setattr(M, "ROPE_MATRIX_ROWS", 64 if on else 0)
    built, matrix = [], M.rope_matrix
    monkeypatch.setattr(M, "rope_matrix", lambda pos, *a: built.append(len(pos)) or matrix(pos, *a))
    return built


@pytest.mark.parametrize("matrix", [True, False])
def test_cached_decoding_logits_equal_full_forward(models, monkeypatch, matrix):
    _, ours = models
    built = use_rope_matrix(monkeypatch, matrix)
    seq = prompts([24], seed=3)[0]
    ids = torch.tensor([seq, seq[::-1]])  # [2,24]
    with torch.no_grad():
        full = ours(ids)  # [2,24,V]
        cache = M.KVCache(ours.cfg, 2, 32, dtype=torch.float32)
        pos = torch.arange(10).expand(2, 10)
        got = [ours(ids[:, :10], cache, pos)]
        for t in range(10, 24):  # one token at a time, attending over the cache
            cache.attend_len = 32 if t % 2 else t + 1
            got.append(ours(ids[:, t:t + 1], cache, torch.full((2, 1), t)))
    assert (torch.cat(got, 1) - full).abs().max().item() < 1e-4
    assert built == ([2] * 14 if matrix else [])


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_returned_logprobs_equal_full_forward(models, temperature):
    _, ours = models
    ps = prompts([6, 11], seed=4)
    outs = generate(ours, ps, 20, n=2, temperature=temperature, seed=3, return_logprobs=True, slots=3)
    for o in outs:
        p = ps[o.prompt_index]
        ids = torch.tensor([p + o.tokens])
        with torch.no_grad():
            logits = ours(ids)[0, len(p) - 1:-1]  # the logits that predicted each new token
        scaled = logits / temperature if temperature else logits
        want = scaled.log_softmax(-1).gather(-1, torch.tensor(o.tokens)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(o.logprobs), want, atol=1e-4)


def test_logprobs_only_when_asked(models):
    """Without return_logprobs the same tokens come back, with no log-probs; an engine that ran without
    them returns them again on the next call that asks (greedy and sampled)."""
    _, ours = models
    ps = prompts([5, 9, 3], seed=12)
    for kw in (dict(temperature=0), dict(temperature=1.0, seed=2)):
        without = generate(ours, ps, 12, **kw)
        asked = generate(ours, ps, 12, return_logprobs=True, **kw)
        again = generate(ours, ps, 12, **kw)
        assert all(o.logprobs is None for o in without + again)
        assert [o.tokens for o in without] == [o.tokens for o in asked] == [o.tokens for o in again]
        assert all(len(o.logprobs) == 12 and all(lp < 0 for lp in o.logprobs) for o in asked)
        sample._engine = None  # a fresh engine, whose log-prob buffer no earlier call has written
        assert [o.logprobs for o in asked] == [o.logprobs for o in generate(ours, ps, 12, return_logprobs=True, **kw)]


def test_engine_with_a_long_enough_cache_is_reused(models):
    """A call whose sequences fit the last engine's cache reuses it (and its graphs); results are those of
    a fresh engine."""
    _, ours = models
    ps = prompts([5, 9], seed=12)
    long = generate(ours, ps, 60, temperature=0)
    engine = sample._engine
    short = generate(ours, ps, 10, temperature=0)
    assert sample._engine is engine
    assert [o.tokens for o in short] == [o.tokens[:10] for o in long]
    generate(ours, ps, 10, temperature=0, slots=1)  # other settings: a new engine
    assert sample._engine is not engine


def stopped_calls_leave_the_engine_as_new(model):
    """A call ended by an exception from its callback (a KeyboardInterrupt in on_tokens, eval's writer failing in
    progress on a full disk) leaves the kept engine as good as new: the next calls give what a fresh engine gives."""
    ps = prompts([5, 17, 1, 9], seed=21)
    kw = dict(max_new_tokens=30, temperature=0.8, seed=1, slots=2, sync_every=4)
    sample.release()
    fresh = [o.tokens for o in generate(model, ps, **kw)]
    fresh_tail = [o.tokens for o in generate(model, ps[2:], **kw)]  # (draws follow the sequence's number)
    syncs = []

    def interrupt(q, ids):
        syncs.append(q)
        if len(syncs) == 3:  # mid-call: rows decoding, others waiting for a slot
            raise KeyboardInterrupt

    def disk_full(sample):
        raise OSError("disk full")

    engine = sample._engine
    with pytest.raises(KeyboardInterrupt):
        generate(model, ps, on_tokens=interrupt, **kw)
    with pytest.raises(OSError, match="disk full"):
        generate(model, ps, progress=disk_full, **kw)
    assert sample._engine is engine  # kept through both, not rebuilt
    assert [o.tokens for o in generate(model, ps, **kw)] == fresh
    assert [o.tokens for o in generate(model, ps[2:], **kw)] == fresh_tail


def test_a_call_stopped_by_its_callback_leaves_the_engine_as_new(models):
    stopped_calls_leave_the_engine_as_new(models[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_a_call_stopped_by_its_callback_leaves_the_graphs_as_new(models):
    import copy

    stopped_calls_leave_the_engine_as_new(copy.deepcopy(models[1]).cuda())


def test_release_frees_the_engine_and_its_cache(models):
    """release() drops the kept engine: nothing holds its cache any more, and the next call builds a new one
    with the same results."""
    import gc
    import weakref

    _, ours = models
    ps = prompts([6, 3], seed=13)
    before = generate(ours, ps, 12, temperature=0)
    cache = weakref.ref(sample._engine.cache.kv[0])
    sample.release()
    gc.collect()
    assert sample._engine is None and cache() is None
    assert [o.tokens for o in generate(ours, ps, 12, temperature=0)] == [o.tokens for o in before]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_release_frees_cache_buffers_and_graphs(models):
    """On a GPU, after graph-captured decoding, release() leaves no engine tensor or graph alive, and the
    allocator's count drops by at least their bytes. (Not to where it was before the first call: cuBLAS
    keeps a workspace per stream it has run on, which is the library's, not the engine's.)"""
    import copy
    import gc
    import weakref

    _, ours = models
    gpu = copy.deepcopy(ours).cuda()
    generate(gpu, prompts([9, 4, 7], seed=14), 20, n=2, temperature=1.0, slots=4, sync_every=3)
    e = sample._engine
    tensors = [*e.cache.kv, *vars(e.s).values()]
    assert e.graphs and all(t.is_cuda for t in tensors)
    held = sum(t.untyped_storage().nbytes() for t in tensors)
    refs = [weakref.ref(x) for x in (*tensors, *e.graphs.values())]
    del e, tensors
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    sample.release()
    gc.collect()
    assert all(r() is None for r in refs)
    assert before - torch.cuda.memory_allocated() >= held


def test_decode_steps_that_do_nothing_are_an_error_not_a_hang(models, monkeypatch):
    """If the decode steps left the rows where they were (as a CUDA graph captured on the wrong device's stream
    does), generate would wait for them forever; it raises instead."""
    _, ours = models
    monkeypatch.setattr(sample.Engine, "_run", lambda self, steps, B, attend_len: None)
    with pytest.raises(RuntimeError, match=r"did not advance slots \[0, 1\]"):
        generate(ours, prompts([5, 3], seed=16), 10, temperature=0)


def test_stops_at_its_own_eos(models):
    _, ours = models
    ps = prompts([5, 8], seed=5)
    free = generate(ours, ps, 30, temperature=0)
    eos = free[0].tokens[6]  # a token prompt 0 emits at step 7
    outs = generate(ours, ps, 30, temperature=0, eos_ids=[eos])
    k = free[0].tokens.index(eos)
    assert outs[0].tokens == free[0].tokens[:k + 1] and outs[0].finish == "eos"
    other = free[1].tokens
    want = other[:other.index(eos) + 1] if eos in other else other
    assert outs[1].tokens == want and outs[1].finish == ("eos" if eos in other else "length")
    # eos ids given as a generator (read once) or numpy ints stop the same way
    for ids in ((e for e in [eos]), np.array([eos])):
        assert [o.tokens for o in generate(ours, ps, 30, temperature=0, eos_ids=ids)] == [o.tokens for o in outs]


def test_per_prompt_lengths(models):
    _, ours = models
    outs = generate(ours, prompts([3, 3, 3], seed=6), [5, 1, 12], temperature=1.0, slots=2)
    assert [len(o.tokens) for o in outs] == [5, 1, 12]


def test_decodes_no_step_beyond_the_longest_limit(models, monkeypatch):
    """The first token comes from the prefill, so limits [1, 1] need no decode step and [20, 3] need 19
    (one chunk of 16, then 3), although chunks are 16 steps long."""
    _, ours = models
    calls = record_steps(monkeypatch)
    outs = generate(ours, prompts([4, 6], seed=9), 1, temperature=0, cuda_graph=False)
    assert [len(o.tokens) for o in outs] == [1, 1] and calls == []
    outs = generate(ours, prompts([4, 6], seed=9), [20, 3], temperature=0, sync_every=16, cuda_graph=False)
    assert [len(o.tokens) for o in outs] == [20, 3] and len(calls) == 19


def test_every_row_fits_the_attention_bound(models, monkeypatch):
    """Each decode step's attend_len must bound the length of every row in the batch, also of a finished
    row still inside it (the flash kernel sizes its work from the bound). Here a 600-token prompt finishes
    in slot 3 while three short rows decode on with a bound of 256."""
    import copy

    ours = copy.deepcopy(models[1])
    ours.cfg.max_position_embeddings = 1024  # rotary positions have no table: only the input check reads it
    seen = []
    attend = M.KVCache.attend

    def checked(self, layer, q):
        seen.append((int(self.lens.max()), self.attend_len))
        return attend(self, layer, q)

    monkeypatch.setattr(M.KVCache, "attend", checked)
    ps = prompts([5, 4, 6, 600], seed=12)
    outs = generate(ours, ps, [40, 30, 35, 2], temperature=0, slots=4, sync_every=4)
    assert [len(o.tokens) for o in outs] == [40, 30, 35, 2]
    assert all(n <= bound for n, bound in seen)
    assert any(bound == 256 for _, bound in seen) and seen[0][1] == 640  # 605 rounded up; it did drop below 601


def test_finished_rows_attend_to_one_key(models, monkeypatch):
    """A row that finished decodes on until the next sync (its output discarded); it reads one key then,
    not its whole row, and its batch-mates' tokens stay those they get alone. Row 0 stops after 3 tokens
    at position 7; row 1 runs to 24 tokens, all in one 16-step chunk and then 7 more steps."""
    _, ours = models
    steps, prepare = [], M.KVCache.prepare

    def recorded(self, pos, rows=None):
        prepare(self, pos, rows)
        if pos.shape[1] == 1:
            steps.append((pos[:, 0].tolist(), self.lens.tolist(), self.stopped.tolist()))

    ps = prompts([5, 7], seed=4)
    alone = generate(ours, ps[1:], 24, temperature=0, cuda_graph=False)[0].tokens
    monkeypatch.setattr(M.KVCache, "prepare", recorded)
    outs = generate(ours, ps, [3, 24], temperature=0, slots=2, sync_every=16, cuda_graph=False)
    assert [len(o.tokens) for o in outs] == [3, 24] and outs[1].tokens == alone
    for pos, lens, stopped in steps:
        assert lens == [1 if stop else p + 1 for p, stop in zip(pos, stopped, strict=True)]
    # row 0 is stopped at position 7 from the third step to the end of the first chunk (steps 3-16)
    assert [st[2][0] and st[0][0] == 7 for st in steps[:16]] == [False] * 2 + [True] * 14


def test_bad_input_is_refused_before_work(models):
    _, ours = models
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(ours, [[1, 2], []], 4)
    with pytest.raises(ValueError, match="generate: no prompts"):
        generate(ours, [], 4)
    with pytest.raises(ValueError, match="generate: 3 max_new_tokens values for 2 prompts"):
        generate(ours, [[1], [2]], [4, 4, 4])
    with pytest.raises(ValueError, match="token id 512 outside the vocabulary"):
        generate(ours, [[1, 512]], 4)
    with pytest.raises(ValueError, match="over the model's limit of 256"):
        generate(ours, [[1] * 200], 57)
    with pytest.raises(ValueError, match="token id -1"):
        generate(ours, [[-1]], 4)
    with pytest.raises(TypeError, match="prompt 0 has a token id that is not an integer at 1: 2.5"):
        generate(ours, [[1, 2.5]], 4)  # never truncated to 2
    with pytest.raises(TypeError, match="prompt 1 has a token id that is not an integer at 0: tensor"):
        generate(ours, [[1], torch.ones(1, 3, dtype=torch.long)], 4)  # a [1, L] tensor: its rows are not ids
    # booleans would read as ids 0 and 1: a mask passed for the ids
    with pytest.raises(TypeError, match="prompt 0 has a boolean at 1, not a token id: True"):
        generate(ours, [[5, True]], 4)
    with pytest.raises(TypeError, match="prompt 0 has a boolean at 0, not a token id: tensor"):
        generate(ours, [[torch.tensor(True), torch.tensor(3)]], 4)
    with pytest.raises(TypeError, match="prompt 0 has a boolean at 1, not a token id: "):
        generate(ours, [[5, np.bool_(True)]], 4)  # numpy's boolean too
    with pytest.raises(TypeError, match="prompt 0 has a boolean at 0, not a token id: True"):
        generate(ours, torch.tensor([[1, 1], [0, 1]]).bool(), 4)  # a 2-d bool mask: its rows are lists of bools
    with pytest.raises(TypeError, match="prompt 0 is a torch.bool array, not token ids"):
        generate(ours, [torch.ones(3, dtype=torch.bool)], 4)
    with pytest.raises(TypeError, match="prompt 0 is a bool array, not token ids"):
        generate(ours, [np.ones(3, dtype=bool)], 4)
    assert generate(ours, [np.array([3, 4]), [np.int64(3), torch.tensor(4)]], 2, temperature=0, cuda_graph=False)[1] \
        .tokens == generate(ours, [[3, 4]], 2, temperature=0, cuda_graph=False)[0].tokens  # integer types all read
    with pytest.raises(TypeError, match=r"prompt 0 is 1, not a list of token ids \(one prompt is \[ids\]\)"):
        generate(ours, [1, 2], 4)
    with pytest.raises(TypeError, match="prompt 0 is 'hi', not a list of token ids"):
        generate(ours, ["hi"], 4)
    with pytest.raises(TypeError, match="generate: prompts is 5; give a list of token-id lists or a 2-d array"):
        generate(ours, 5, 4)
    # integer settings of numpy or torch types run as their ints do
    want = [o.tokens for o in generate(ours, [[1, 2], [3]], [3, 4], n=2, sync_every=3, slots=3, temperature=0)]
    assert [o.tokens for o in generate(ours, [[1, 2], [3]], [np.int64(3), torch.tensor(4)], n=np.int32(2),
                                       sync_every=np.int64(3), slots=torch.tensor(3), temperature=0)] == want
    for kw, msg in [(dict(max_new_tokens=4.0), "prompt 0: max_new_tokens must be an integer >= 1, got 4.0"),
                    (dict(max_new_tokens=[4, True]), "prompt 1: max_new_tokens must be an integer >= 1, got True"),
                    (dict(n=0), "n must be an integer >= 1, got 0"),
                    (dict(slots=0), "slots must be an integer >= 1, got 0"),
                    (dict(sync_every=0), "sync_every must be an integer >= 1, got 0"),  # it would never return
                    (dict(prefill_tokens=-1), "prefill_tokens must be an integer >= 1"),
                    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
                    (dict(top_k=2.5), "top_k must be an integer >= 0"),
                    (dict(top_p=0), r"top_p must be in \(0, 1\]"),
                    # filters that greedy decoding would ignore (the CLI's temperature defaults to 0)
                    (dict(temperature=0, top_k=5), r"top_k and top_p filter sampling and greedy decoding"),
                    (dict(temperature=0, top_p=0.9), r"ignores them: set temperature > 0 to sample, got top_k=0, "
                                                     r"top_p=0.9"),
                    (dict(seed=1.5), r"seed must be an integer in \[0, 2\*\*31\), got 1.5"),
                    (dict(seed=True), "seed must be an integer in .*, got True"),
                    # the hash reads 31 bits of the seed: these would draw what 2**31 - 1 and 0 draw
                    (dict(seed=-1, temperature=1), r"seed must be an integer in \[0, 2\*\*31\), got -1"),
                    (dict(seed=2**31, temperature=1), r"seed must be an integer in \[0, 2\*\*31\), got 2147483648"),
                    (dict(eos_ids="7"), "eos_ids must be a collection of token ids, got '7'"),
                    (dict(eos_ids=7), "eos_ids must be a collection of token ids, got 7"),
                    (dict(eos_ids=[7, 2.0]), r"eos_ids must be integer token ids, got \(7, 2.0\)"),
                    # an eos id the model cannot emit would never stop a row (a tokenizer of another model's)
                    (dict(eos_ids=[7, 512]), r"eos id 512 is outside the vocabulary \[0, 512\)"),
                    # switches: the string "False" is truthy, and a 0/1 flag is as likely a slip as a choice
                    (dict(return_logprobs="False"), "return_logprobs must be True or False, got 'False'"),
                    (dict(cuda_graph=0), "cuda_graph must be True or False, got 0"),
                    (dict(on_tokens=print, progress=[]), r"progress must be a function or None, got \[\]")]:
        kw = {"max_new_tokens": 4} | kw
        with pytest.raises((ValueError, TypeError), match=msg):
            generate(ours, [[1, 2], [3]], **kw)


def test_prompts_of_numpy_or_tensor_ids_decode_as_lists(models):
    _, ours = models
    ids = [3, 17, 99, 4]
    want = generate(ours, [ids], 6, temperature=0)[0].tokens
    assert generate(ours, [torch.tensor(ids)], 6, temperature=0)[0].tokens == want
    assert generate(ours, [np.array(ids)], 6, temperature=0)[0].tokens == want
    # a 2-d array holds one prompt per row (prompts of one length); any other shape is refused by name
    rows = [ids, [5, 6, 7, 8]]
    want = [o.tokens for o in generate(ours, rows, 6, temperature=0)]
    assert [o.tokens for o in generate(ours, torch.tensor(rows), 6, temperature=0)] == want
    assert [o.tokens for o in generate(ours, np.array(rows), 6, temperature=0)] == want
    for flat in (torch.tensor(ids), np.array(ids), torch.tensor(3)):
        with pytest.raises(TypeError, match=rf"^generate: prompts is a {flat.ndim}-d array; give a 2-d"):
            generate(ours, flat, 6)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny random Qwen2 with the real Qwen2.5 tokenizer, chat template and generation config beside it."""
    import shutil

    from conftest import SHARED

    d, src = tmp_path_factory.mktemp("chat"), SHARED / "hf" / "qwen2.5-7b-instruct"
    ref = hf_model("qwen2", 4, 2, 8, layers=2, vocab=151936, seed=5, inter=32)
    ref.save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(src / f, d)
    return ref, d


def run_cli(monkeypatch, capsys, argv):
    """sample.main(argv): (stdout, stderr, each write to stdout, the prompts passed to generate)."""
    writes, write = [], sys.stdout.write  # sys.stdout is capsys's stream here
    monkeypatch.setattr(sys.stdout, "write", lambda s: writes.append(s) or write(s))
    seen, real_generate = [], sample.generate
    monkeypatch.setattr(sample, "generate", lambda model, prompts, *a, **kw: seen.append(prompts) or
                        real_generate(model, prompts, *a, **kw))
    sample.main(argv)
    out, err = capsys.readouterr()
    return out, err, [w for w in writes if w], seen


@pytest.mark.parametrize("system", [None, "Answer in one word."])
def test_cli_streams_the_reply_to_the_chat_template(chat_model, monkeypatch, capsys, system):
    """`python sample.py --model DIR --prompt TEXT` against transformers: its tokenizer applies the checkpoint's
    chat template, its greedy generate stops at the generation config's EOS ids, its tokenizer decodes."""
    import json

    from transformers import AutoTokenizer

    ref, d = chat_model
    prompt = "Which is larger, 9.11 or 9.9? Ünïcode too: 数字"
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    hf_tok = AutoTokenizer.from_pretrained(d)
    ids = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    eos = json.loads((d / "generation_config.json").read_text())["eos_token_id"]
    with torch.no_grad():
        r = ref.generate(torch.tensor([ids]), max_new_tokens=13, do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
    want = hf_tok.decode(r[0, len(ids):], skip_special_tokens=True)

    argv = ["--model", str(d), "--prompt", prompt, "--max-new-tokens", "13", "--device", "cpu"]
    out, err, writes, seen = run_cli(monkeypatch, capsys, argv + (["--system", system] if system else []))
    assert seen == [[ids]]  # the prompt as transformers renders and tokenizes it, assistant turn opened
    assert out == "".join(writes) == want
    assert len(writes) >= 3  # streamed: 13 tokens, shown every 4 decode steps
    n, finish = len(r[0]) - len(ids), "eos" if r[0, -1].item() in eos else "length"
    assert f"[{n} tokens, stopped by {finish}," in err


def test_cli_samples_with_its_flags(chat_model, monkeypatch, capsys):
    """--temperature, --top-p, --top-k and --seed reach generate: the CLI prints what generate samples with those
    settings for the chat-templated prompt; the same seed gives the same text, another seed another."""
    import data

    _, d = chat_model
    tok = data.Tokenizer.load(d)
    ids = tok.encode_chat([{"role": "user", "content": "Pick a word."}], add_generation_prompt=True)
    model = M.load(d, dtype=torch.float32)
    argv = ["--model", str(d), "--prompt", "Pick a word.", "--max-new-tokens", "12", "--device", "cpu",
            "--temperature", "1.5", "--top-p", "0.9", "--top-k", "5000"]
    texts = {}
    for seed in (3, 3, 4):
        out, *_ = run_cli(monkeypatch, capsys, argv + ["--seed", str(seed)])
        want = sample.generate(model, [ids], 12, temperature=1.5, top_p=0.9, top_k=5000, eos_ids=tok.eos_ids,
                               seed=seed)[0]
        assert out == tok.decode(want.tokens, skip_special_tokens=True)
        texts.setdefault(seed, set()).add(out)
    assert len(texts[3]) == 1 and texts[3] != texts[4]


def test_cli_holds_back_half_characters_and_prints_them_at_the_end(chat_model, monkeypatch, capsys):
    """A character split over two streamed chunks is written once whole; one cut off by the length limit is
    still written at the end, as the decoded output has it (a replacement character)."""
    from transformers import AutoTokenizer

    _, d = chat_model
    hf_tok = AutoTokenizer.from_pretrained(d)
    hi, parrot, fraktur_u = (hf_tok.encode(s) for s in ("Hi", "\U0001f99c", "\U0001d518"))
    assert len(parrot) == 2 and len(fraktur_u) == 2  # each is two byte-level tokens
    chunks = [hi, parrot[:1], parrot[1:], fraktur_u[:1]]
    tokens = [t for c in chunks for t in c]

    def fake_generate(model, prompts, max_new_tokens, on_tokens, **kw):
        for c in chunks:
            on_tokens(0, c)
        return [sample.Sample(0, 0, tokens, "length")]

    monkeypatch.setattr(sample, "generate", fake_generate)
    out, err, writes, _ = run_cli(monkeypatch, capsys, ["--model", str(d), "--prompt", "x", "--device", "cpu",
                                                        "--max-new-tokens", "8"])
    assert out == hf_tok.decode(tokens) == "Hi\U0001f99c\ufffd"
    assert writes == ["Hi", "\U0001f99c", "\ufffd"]
    assert f"[{len(tokens)} tokens, stopped by length," in err


@pytest.mark.parametrize("flags,error,match", [
    (["--top-p", "0"], SystemExit, r"^sample.py: --top-p must be in \(0, 1\], got 0.0"),
    (["--max-new-tokens", "0"], SystemExit, r"^sample.py: --max-new-tokens must be an integer >= 1, got 0$"),
    (["--max-new-tokens", "250"], SystemExit, r"^sample.py: the prompt has \d+ tokens \+ --max-new-tokens 250 = \d+, "
                                              r"over the model's limit of 256"),
    (["--top-k", "-1"], SystemExit, r"^sample.py: --top-k must be an integer >= 0"),
    (["--device", "cuda:99"], SystemExit, r"^sample.py: device cuda:99: this process sees \d GPUs?"),
    (["--device", "tpu"], SystemExit, r"^sample.py: device tpu: expected cuda, cuda:N or cpu$"),
    (["--top-p", "0.9"], SystemExit, r"^sample.py: --top-k and --top-p filter sampling and greedy decoding "
                                     r"\(--temperature 0\) ignores them: set --temperature > 0 to sample, "
                                     r"got --top-k=0, --top-p=0.9$"),
    (["--temperature", "-1"], SystemExit, r"^sample.py: --temperature must be a finite number >= 0 \(0 = greedy\), "
                                          r"got -1.0$"),
    (["--seed", "3"], SystemExit, r"^sample.py: --seed picks the draws of sampling, and greedy decoding "
                                  r"\(--temperature 0, the default\) draws nothing: set --temperature > 0 to sample$"),
])
def test_cli_bad_settings_stop_before_the_weights_load(chat_model, monkeypatch, flags, error, match):
    """The CLI checks its prompt and settings as generate does, against the folder's config.json, before
    loading the weights (seconds to minutes for a large checkpoint), and exits with a one-line message."""
    _, d = chat_model
    monkeypatch.setattr(M, "load", lambda *a, **k: pytest.fail("the weights were loaded"))
    with pytest.raises(error, match=match):
        sample.main(["--model", str(d), "--prompt", "hi", "--device", "cpu", "--max-new-tokens", "8", *flags])


def test_cli_names_a_broken_config_json(chat_model, tmp_path):
    """A config.json that is not JSON is a one-line error naming the file (json's own message names none)."""
    import shutil

    _, d = chat_model
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(d / f, tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"], ')
    with pytest.raises(SystemExit, match=rf"^sample.py: {re.escape(str(tmp_path / 'config.json'))}: not valid JSON "
                                         r"\(Expecting property name"):
        sample.main(["--model", str(tmp_path), "--prompt", "hi", "--device", "cpu"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_cli_without_device_runs_on_the_gpu_in_bf16(chat_model, monkeypatch, capsys):
    """No --device on a GPU machine: the weights load in bf16 on the current GPU, and the reply streams."""
    _, d = chat_model
    weights, real_generate = [], sample.generate
    monkeypatch.setattr(sample, "generate", lambda model, *a, **kw: weights.append(next(model.parameters())) or
                        real_generate(model, *a, **kw))
    sample.main(["--model", str(d), "--prompt", "hi", "--max-new-tokens", "8"])
    assert weights[0].device == torch.device("cuda", torch.cuda.current_device())
    assert weights[0].dtype == torch.bfloat16
    assert "tokens, stopped by" in capsys.readouterr().err


def test_cli_flags_come_from_its_dataclass_with_defaults_in_the_help(capsys):
    """As in sft.py and eval.py, the chat CLI's settings are one dataclass: every field a flag, its default and
    comment in --help; --model or --prompt missing or empty is a one-line error naming it."""
    from dataclasses import fields

    with pytest.raises(SystemExit) as e:
        sample.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(sample.ChatConfig):
        assert f"--{f.name.replace('_', '-')}" in text
    assert "longest reply (default: 512)" in text and "0 = greedy (default: 0.0)" in text
    for argv, named in [([], "--model and --prompt are"), (["--model", "m"], "--prompt is"),
                        (["--model", "m", "--prompt", ""], "--prompt is"), (["--prompt", "hi"], "--model is")]:
        with pytest.raises(SystemExit, match=f"^sample.py: {named} required, not empty$"):
            sample.main(argv)


@pytest.mark.parametrize("name", ["qwen2.5-7b-instruct", "qwen3-0.6b"])
def test_text_stream_writes_what_the_whole_output_decodes_to(name):
    """Random outputs (words, characters split over byte-level tokens, lone halves, control tokens) in random
    chunks: the streamed pieces join to transformers' decoding of the whole, and only close() may write text
    that ends in half a character."""
    import random

    from conftest import SHARED
    from transformers import AutoTokenizer

    from data import Tokenizer

    ref, tok = AutoTokenizer.from_pretrained(SHARED / "hf" / name), Tokenizer.load(SHARED / "hf" / name)
    split = [hf for s in ("\U0001f99c", "\U0001d518", "\u00e9", "\u8a9e") if len(hf := ref.encode(s)) > 1]
    assert len(split) >= 2  # the case the stream holds back
    control = [151643, 151644, 151645]  # <|endoftext|>, <|im_start|>, <|im_end|>
    for seed in range(30):
        rng = random.Random(seed)
        ids = []
        for _ in range(rng.randint(1, 40)):
            kind = rng.random()
            ids += (rng.choice(split) if kind < 0.3 else rng.choice(split)[:1] if kind < 0.4 else
                    [rng.choice(control)] if kind < 0.5 else [rng.randrange(151643)])
        out = Recorder()
        stream, i = TextStream(tok, out), 0
        while i < len(ids):
            k = rng.randint(1, 5)
            stream(0, ids[i:i + k])
            i += k
        streamed = len(out.writes)
        stream.close()
        assert "".join(out.writes) == ref.decode(ids, skip_special_tokens=True)
        assert not any(w.endswith("\ufffd") for w in out.writes[:streamed])  # only close() flushes a half


class Recorder:
    """A text stream that keeps each write."""

    def __init__(self):
        self.writes = []

    def write(self, s):
        self.writes.append(s)

    def flush(self):
        pass


# -- the sampling distribution ---------------------------------------------------------------------


def reference_distribution(logits, temperature, top_k, top_p):
    """Slow and obvious: the filtered, renormalised distribution, token by token."""
    z = [x / temperature for x in logits]
    order = sorted(range(len(z)), key=lambda i: -z[i])
    keep = set(order[:top_k] if top_k else order)
    mx = max(z)
    p = {i: math.exp(z[i] - mx) for i in keep}
    total = sum(p.values())
    p = {i: v / total for i, v in p.items()}
    if top_p < 1:
        kept, mass = set(), 0.0
        for i in sorted(p, key=lambda i: -p[i]):
            if mass >= top_p:
                break
            kept.add(i)
            mass += p[i]
        p = {i: p[i] for i in kept}
        total = sum(p.values())
        p = {i: v / total for i, v in p.items()}
    return [p.get(i, 0.0) for i in range(len(logits))]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.3, 4, 1.0), (1.0, 0, 0.8),
                                                     (0.8, 6, 0.9)])
def test_empirical_frequencies_match_filtered_distribution(temperature, top_k, top_p):
    torch.manual_seed(0)
    V, N = 10, 200_000
    logits = torch.randn(V) * 1.5
    want = torch.tensor(reference_distribution(logits.tolist(), temperature, top_k, top_p))
    u = uniform_at(sequence_key(123, torch.arange(N)), torch.full((N,), 7))
    tok, _ = sample_next(logits.expand(N, V), u, temperature=temperature, top_k=top_k, top_p=top_p, logprobs=False)
    freq = torch.bincount(tok, minlength=V).double() / N
    # Each frequency is a binomial proportion: allow 5 standard deviations (a false alarm ~1e-6 per cell).
    tol = 5 * torch.sqrt(want * (1 - want) / N) + 1e-9
    assert torch.all((freq - want).abs() <= tol), (freq, want)
    assert torch.all(freq[want == 0] == 0)  # filtered tokens are never drawn


@pytest.mark.parametrize("V", [10, 300, 512, 1000])
def test_inverse_cdf_matches_a_float64_scan(V):
    """The two-level draw picks the first index whose running sum exceeds u x total, as one float64 scan
    over the row does (up to rounding right at a boundary), and never an index of zero weight: rows with
    zero runs, zeros at the end of a row (also past the last full run of 128), and u next to 0 and 1."""
    g = torch.Generator().manual_seed(V)
    B, draws = 6, 400
    w = torch.rand(B, V, generator=g) ** 4
    w[w < 0.3] = 0  # scattered zeros
    w[:, 0] = w[:, -1] = 0.5  # every row has some weight
    w[1, : V // 2] = 0  # all of the first half (whole runs) empty
    w[2, -V // 3:] = 0  # the end of the row empty
    w[3, 1:] = 0  # one token
    w[4] *= 1e-30  # tiny weights
    u = torch.rand(draws, B, generator=g)
    u[0], u[1] = 0.0, 1 - 2**-23  # the smallest and largest numbers uniform_at draws
    got = torch.stack([sample.inverse_cdf(w, u[i]) for i in range(draws)])  # [draws, B]
    cdf = w.double().cumsum(-1)
    target = u.double()[:, :, None] * cdf[:, -1][None, :, None]  # [draws, B, 1]
    want = (cdf[None] <= target).sum(-1).clamp(max=V - 1)  # first index whose running sum exceeds target
    assert torch.all(w.gather(1, got.T) > 0)
    near = (cdf[None] - target).abs().min(-1).values <= 1e-5 * cdf[:, -1][None]  # rounding may go either way
    assert torch.equal(got[~near], want[~near]) and near.float().mean() < 0.01
    assert got[1, 2] == torch.nonzero(w[2]).max()  # u just below 1: the last token of positive weight
    assert torch.all(got[:, 3] == 0)


def test_inverse_cdf_never_draws_a_zero_when_the_scan_rounds(monkeypatch):
    """torch does not promise that a GPU scan keeps the running sum flat over a zero weight (a parallel scan
    may add the two sides in different orders); a search could then land on the zero. Simulated here by a
    cumsum that drifts up at every entry: the draws must still only pick positive weights, and
    u = 1 - 2**-23 (the largest uniform_at draws) the last."""
    g = torch.Generator().manual_seed(0)
    B, V = 4, 1024
    w = torch.rand(B, V, generator=g)
    w[w < 0.7] = 0  # most entries zero
    w[0, 128:512] = 0  # whole empty runs
    w[1, -300:] = 0  # an empty end
    real = torch.Tensor.cumsum
    drift = lambda x, dim: real(x, dim) * (1 + 1e-6 * torch.arange(1, x.shape[-1] + 1))  # noqa: E731
    monkeypatch.setattr(torch.Tensor, "cumsum", drift)
    u = torch.cat([torch.rand(2000, B, generator=g), torch.full((1, B), 1 - 2**-23), torch.zeros(1, B)])
    got = torch.stack([sample.inverse_cdf(w, u[i]) for i in range(len(u))])  # [draws, B]
    assert torch.all((got >= 0) & (got < V)) and torch.all(w.gather(1, got.T) > 0)
    assert got[-2].tolist() == [int(torch.nonzero(w[b]).max()) for b in range(B)]  # u at its largest: the last
    assert got[-1].tolist() == [int(torch.nonzero(w[b]).min()) for b in range(B)]  # u = 0: the first


def test_uniform_numbers_stay_below_one_by_a_float32_step():
    """inverse_cdf needs u * total < total after float32 rounding: u <= 1 - 2**-23 guarantees it."""
    u = uniform_at(sequence_key(0, torch.arange(1)), torch.arange(1 << 20))
    assert u.max() <= 1 - 2**-23 and u.min() >= 0 and (u * 2**23 == (u * 2**23).round()).all()
    totals = torch.rand(100_000) * 10 + 1e-3
    assert torch.all(torch.tensor(1 - 2**-23) * totals < totals)


def test_filter_keeps_the_top_token_and_same_seed_same_draws():
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0]])
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).tolist() == [[True, False, False, False]]
    draw = lambda seed: uniform_at(sequence_key(seed, torch.arange(1000)), torch.full((1000,), 5))  # noqa: E731
    u1, u2 = draw(3), draw(3)
    assert torch.equal(u1, u2) and 0 <= u1.min() and u1.max() < 1
    assert abs(u1.mean().item() - 0.5) < 0.03 and not torch.equal(u1, draw(4))


def test_ragged_lengths_with_compaction_match_one_at_a_time(models):
    """Rows of very different lengths: as rows finish, the live ones are moved to the front of the cache
    and decoded in a smaller batch. Every row must come out as if it had run alone."""
    _, ours = models
    ps = prompts([4, 9, 2, 13, 6, 3, 8], seed=8)
    limits = [3, 41, 7, 26, 1, 35, 12]
    outs = generate(ours, ps, limits, temperature=0, slots=7, sync_every=2)
    for p, m, o in zip(ps, limits, outs, strict=True):
        assert o.tokens == generate(ours, [p], m, temperature=0)[0].tokens
    kw = dict(n=2, temperature=1.0, seed=4, return_logprobs=True)
    batched = generate(ours, ps, limits, slots=14, sync_every=3, **kw)
    serial = generate(ours, ps, limits, slots=1, **kw)  # every row alone in a batch of one
    assert [o.tokens for o in batched] == [o.tokens for o in serial]
    assert [len(o.tokens) for o in batched] == [m for m in limits for _ in range(2)]


def test_round_sizes():
    """The smallest allowed size >= n (decode batches, attention bounds), and the largest <= n (the default
    slot count): powers of two up to 16, then m * 2**e with m in 5..8."""
    allowed = sorted({1, 2, 4, 8, 16} | {m << e for m in range(5, 9) for e in range(2, 12)})
    for n in range(1, 4097):
        assert sample.round_size(n) == min(a for a in allowed if a >= n), n
        assert sample.round_size_down(n) == max(a for a in allowed if a <= n), n


def test_shrinking_batches_of_every_size_match_one_at_a_time(models, monkeypatch):
    """40 rows finishing at different steps: the decoded batch shrinks through sizes that are not powers of
    two (40, 28, 20, ...), moving rows to the front each time; every row is what it is alone."""
    _, ours = models
    sizes = record_steps(monkeypatch)
    ps = prompts([3 + i % 5 for i in range(40)], seed=21)
    limits = [2 + 3 * i for i in range(40)]
    kw = dict(temperature=1.0, seed=5, return_logprobs=True, cuda_graph=False)
    batched = generate(ours, ps, limits, slots=40, sync_every=1, **kw)
    assert {40, 28, 20} <= set(sizes) and sizes == sorted(sizes, reverse=True)
    serial = generate(ours, ps, limits, slots=1, **kw)
    assert [o.tokens for o in batched] == [o.tokens for o in serial]
    assert all(torch.allclose(torch.tensor(b.logprobs), torch.tensor(s.logprobs), atol=1e-5)
               for b, s in zip(batched, serial, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_graph_path_matches_eager_and_cpu(models):
    """On a GPU: CUDA-graph decode == eager decode == the CPU path (float32), greedy and sampled,
    with refills and compaction (ragged lengths, fewer slots than sequences)."""
    import copy

    _, ours = models
    gpu = copy.deepcopy(ours).cuda()
    ps = prompts([5, 17, 1, 9, 12, 30, 3], seed=9)
    limits = [40, 7, 33, 2, 25, 40, 12]
    for kw in (dict(temperature=0), dict(temperature=1.0, top_p=0.9, n=2, seed=3)):
        cpu = generate(ours, ps, limits, slots=4, sync_every=3, **kw)
        graph = generate(gpu, ps, limits, slots=4, sync_every=3, **kw)
        eager = generate(gpu, ps, limits, slots=4, sync_every=3, cuda_graph=False, **kw)
        assert [o.tokens for o in graph] == [o.tokens for o in eager] == [o.tokens for o in cpu]
        # the same engine, now asked for log-probs: graphs captured with them, equal to the CPU's
        cpu = generate(ours, ps, limits, slots=4, sync_every=3, return_logprobs=True, **kw)
        graph = generate(gpu, ps, limits, slots=4, sync_every=3, return_logprobs=True, **kw)
        assert [o.tokens for o in graph] == [o.tokens for o in cpu]
        assert all(torch.allclose(torch.tensor(g.logprobs), torch.tensor(c.logprobs), atol=1e-4)
                   for g, c in zip(graph, cpu, strict=True))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_graphs_follow_a_model_on_the_second_gpu(models):
    """A model on cuda:1 while cuda:0 is the current device (as under torchrun without set_device): the
    engine's streams and graphs are made on the model's device, and the tokens are the CPU path's."""
    import copy

    _, ours = models
    gpu = copy.deepcopy(ours).to("cuda:1")
    assert torch.cuda.current_device() == 0
    ps, limits = prompts([5, 17, 1, 9], seed=15), [30, 7, 20, 12]
    for kw in (dict(temperature=0), dict(temperature=1.0, top_p=0.9, n=2, seed=3)):
        cpu = generate(ours, ps, limits, slots=3, sync_every=3, **kw)
        graph = generate(gpu, ps, limits, slots=3, sync_every=3, **kw)
        assert [o.tokens for o in graph] == [o.tokens for o in cpu]
        assert sample._engine.use_graph and sample._engine.graphs
    sample.release()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("matrix", [True, False])
def test_gpu_flash_decode_matches_masked_decode_and_full_forward(models, monkeypatch, matrix):
    """bf16 on a GPU: decode attention through the flash kernel (each row reads only its own length, one
    sequence per (row, kv head)), with the query heads as heads of one query token (the kernel's decoding
    path, which may split keys) in one call or in calls over ranges of the sequences, and folded into query
    tokens, gives the logits of the masked-SDPA path and of a full forward, for rows placed in scattered
    cache rows (the last one among them) at different positions; rotated by matrices or by tables."""
    import copy

    _, ours = models
    built = use_rope_matrix(monkeypatch, matrix)
    gpu = copy.deepcopy(ours).to("cuda", torch.bfloat16)
    ids = torch.tensor(prompts([40, 40, 40], seed=10), device="cuda")
    lens, rows = [5, 12, 21], torch.tensor([3, 0, 2], device="cuda")
    got = {}
    with torch.no_grad():
        full = gpu(ids).float()  # [3,40,V]
        for mode in ("heads", "fold", "chunks", "masked"):
            cache = M.KVCache(gpu.cfg, 4, 64, device="cuda", dtype=torch.bfloat16)
            assert cache.flash  # bf16 on an Ampere-or-newer GPU
            cache.flash = mode != "masked"
            cache.fold_from = 0 if mode in ("fold", "chunks") else 10**9
            # chunks: 3 rows x 2 kv heads as calls over sequences [0, 4) and [4, 6)
            cache.split_from, cache.sms = (0, 4) if mode == "chunks" else (10**9, 4)
            W = max(lens)  # right-padded prefill; what lies beyond each row's length is overwritten
            gpu(ids[:, :W], cache, torch.arange(W, device="cuda").expand(3, W), rows)
            steps = []
            for t in range(12):
                pos = torch.tensor(lens, device="cuda")[:, None] + t  # [3,1]: rows at different positions
                steps.append(gpu(ids.gather(1, pos), cache, pos, rows)[:, 0].float())
            if mode != "masked":
                assert cache.fold == (mode == "fold")
                assert cache.calls == ([(0, 4), (4, 6)] if mode == "chunks" else [(0, 6)])
            got[mode] = torch.stack(steps, 1)  # [3,12,V]
    assert built == ([3] * 48 if matrix else [])
    want = torch.stack([full[b, lens[b]:lens[b] + 12] for b in range(3)])
    scale = want.abs().max().item()
    for mode in ("heads", "fold", "chunks"):
        assert (got[mode] - got["masked"]).abs().max().item() < 0.02 * scale
        assert (got[mode] - want).abs().max().item() < 0.05 * scale


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("batch", [1, 3, 24, 120])
def test_gpu_flash_attend_on_long_rows_matches_an_explicit_softmax(batch):
    """KVCache.attend on rows long enough that the flash kernel splits their keys across thread blocks
    (Qwen2.5-1.5B's heads: 12 query heads on 2 kv heads of 128), unfolded in one call, unfolded in calls of
    5 sequences (the last one shorter), and folded, in scattered cache rows at positions up to 3,000, against
    softmax(q k^T / sqrt(hd)) v computed per row and head in float32 from the same cache."""
    cfg = M.Config("qwen2", 512, 1536, 8960, 1, 12, 2, 128, 1e6, 1e-6, True, 4096)
    g = torch.Generator(device="cuda").manual_seed(batch)
    cache = M.KVCache(cfg, batch + 2, 3072, device="cuda", dtype=torch.bfloat16)
    cache.kv[0].normal_(generator=g)
    rows = torch.randperm(batch + 2, device="cuda", generator=g)[:batch]
    pos = torch.randint(0, 3000, (batch, 1), device="cuda", generator=g)
    # q a view of a fused qkv tensor (12 q, 2 k, 2 v heads), as the model passes it
    q = torch.randn(batch, 1, 16, 128, device="cuda", dtype=torch.bfloat16, generator=g)[:, :, :12]
    want = torch.empty(batch, 12, 128, device="cuda")
    for b in range(batch):
        kv = cache.kv[0][rows[b], :, : pos[b, 0] + 1].float()  # [2*Hkv, len, hd]: k heads, then v heads
        for h in range(12):
            w = (kv[h // 6] @ q[b, 0, h].float() / 128**0.5).softmax(0)
            want[b, h] = w @ kv[2 + h // 6]
    cache.sms = 5
    for mode, fold_from, split_from in (("one call", 10**9, 0), ("chunks", 0, 0), ("fold", 0, 10**9)):
        cache.fold_from, cache.split_from = fold_from, split_from
        cache.prepare(pos, rows)
        assert len(cache.calls) == (-(-2 * batch // 5) if mode == "chunks" else 1)
        got = cache.attend(0, q)[:, 0].float()
        torch.testing.assert_close(got, want, atol=4e-3, rtol=1.6e-2, msg=mode)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_flash_splits_are_the_kernels(tmp_path):
    """flash_splits, on which KVCache.call_sizes rests, is the kernel's own choice: for unfolded calls of 1 to
    past flash_unsplit_from(SMs) sequences (7 query heads on one kv head of 128, as the 7B's) at bounds of 256 to 8,192
    keys, the pieces each sequence's keys were cut into, read from the launch grid of the kernel that ran
    (a profiler trace: the split-KV kernel's blocks / sequences, or the unsplit kernel: 1)."""
    import json

    from torch.profiler import ProfilerActivity, profile

    cfg = M.Config("qwen2", 512, 896, 1024, 1, 7, 1, 128, 1e6, 1e-6, True, 8192)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    unsplit = M.flash_unsplit_from(sms)  # the first size the kernel leaves whole, and the one below it
    sizes = sorted({*range(1, 2 * sms, 7), unsplit - 1, unsplit, 92, 108, 112})
    cache = M.KVCache(cfg, max(sizes), 8192, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(max(sizes), 1, 7, 128, device="cuda", dtype=torch.bfloat16)
    cache.fold_from = 10**9  # one unfolded call, whatever the size
    seen = {}
    for S in sizes:
        for bound in (256, 1024, 2048, 3072, 4096, 8192):
            cache.attend_len = bound
            cache.prepare(torch.full((S, 1), bound - 1, device="cuda"))
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                cache.attend(0, q[:S])
                torch.cuda.synchronize()
            prof.export_chrome_trace(str(tmp_path / "trace.json"))
            events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
            kernels = [(e["name"], e["args"]["grid"]) for e in events
                       if e.get("cat") == "kernel" and "flash_fwd" in e["name"]]
            split = [math.prod(grid) // S for name, grid in kernels if "splitkv_kernel" in name]
            assert len(kernels) == (2 if split else 1), kernels  # split-KV and its combine, or one kernel
            seen[S, bound] = (split[0] if split else 1, M.flash_splits(S, sms, bound, 128))
    wrong = {k: v for k, v in seen.items() if v[0] != v[1]}
    assert not wrong, f"(sequences, bound): (kernel, flash_splits): {wrong}"
    assert {v[0] for v in seen.values()} >= {1, 2, 8}  # the sizes above reach the unsplit, paired and many-piece cases


def test_flash_call_plan_by_batch_and_bound():
    """Which flash calls KVCache.prepare plans for a decode step (CPU: the plan is plain tensor bookkeeping):
    one unfolded call below fold_from (row, kv head) sequences; from there, one folded call while the bound
    is under split_from keys, else unfolded calls sized by `call_sizes` (here SMs sequences each, the rest in
    a last one; its equal-calls case is in the test below). Each call's key offsets and lengths are its
    sequences' own, checked against the cache's layout by hand."""
    cfg = M.Config("qwen2", 512, 64, 128, 1, 6, 2, 16, 1e6, 1e-6, True, 4096)  # 2 kv heads, G = 3
    cache = M.KVCache(cfg, 8, 40, dtype=torch.bfloat16)
    cache.flash, cache.fold_from, cache.split_from, cache.sms = True, 10, 32, 4
    rows = torch.tensor([7, 0, 3, 5, 1])
    pos = torch.tensor([[3], [0], [9], [20], [31]])
    for B, bound, fold, calls in ((4, 40, False, [(0, 8)]),             # 8 sequences < fold_from
                                  (5, 24, True, [(0, 10)]),             # 10 >= fold_from, bound < split_from
                                  (5, 32, False, [(0, 4), (4, 8), (8, 10)])):
        cache.attend_len = bound
        cache.prepare(pos[:B], rows[:B])
        assert (cache.fold, cache.calls) == (fold, calls)
        # sequence s = (row b, kv head h): keys from the start of head h's run in cache row rows[b] (runs of
        # max_len positions, k heads then v heads), as many as the row's position + 1
        want_k = [(int(rows[b]) * 4 + h) * 40 for b in range(B) for h in range(2)]
        assert cache.cu_k[:-1].tolist() == want_k and cache.cu_k[-1] == want_k[-1] + 40
        assert cache.lens.tolist() == [int(pos[b, 0]) + 1 for b in range(B) for h in range(2)]
        step = calls[0][1] - calls[0][0]
        assert cache.cu_q.tolist() == [i * (3 if fold else 1) for i in range(step + 1)]


def test_flash_splits_and_call_sizes_on_an_h200_by_hand():
    """The kernel's key-split heuristic as restated in flash_splits, and the call sizes it leads to, on an
    H200's numbers (132 SMs: waves of 264 thread blocks; head_dim 128: key blocks of 128), worked by hand.
    (test_gpu_flash_splits_are_the_kernels checks flash_splits against the kernel itself.)"""
    # 92 sequences, 2,048 keys = 16 blocks. Counts that change the blocks per piece: 1 2 3 4 6 8 16 (5 gives
    # 4 blocks per piece, as 4 does). Last wave's fullness, 92 s / 264 waves: .35 .70 .52 .70 .70 .93 .93;
    # the fewest pieces within 85% of .93 (>= .79): 8, which takes 736 blocks, 2.8 waves.
    assert M.flash_splits(92, 132, 2048, 128) == 8
    # at 4,096 keys (32 blocks) 5 pieces are a count of their own: 460 / 264 = 1.74 waves, .87 full
    assert M.flash_splits(92, 132, 4096, 128) == 5
    assert M.flash_splits(132, 132, 2048, 128) == 2  # exactly one wave
    assert M.flash_splits(112, 132, 2048, 128) == 2  # .85 full; the best, 16 pieces, .97 (85% of it: .82)
    assert M.flash_splits(52, 132, 2048, 128) == 4  # .20 .39 .59 .79 .59 .79 .79: 4 is the first >= .67
    assert M.flash_unsplit_from(132) == 212  # 0.8 x 264 = 211.2
    assert M.flash_splits(212, 132, 2048, 128) == 1  # 212 >= 0.8 x 264: no split (KVCache.fold_from)
    assert M.flash_splits(211, 132, 2048, 128) == 6
    cfg = M.Config("qwen2", 512, 64, 128, 1, 28, 4, 128, 1e6, 1e-6, True, 4096)  # 7B heads: 28 on 4 kv, hd 128
    cache = M.KVCache(cfg, 1, 8, dtype=torch.bfloat16)
    cache.sms, cache.attend_len = 132, 2048
    # 224 sequences (7B at 56 rows): the rest, 92, would take 2.8 waves; two calls of 112 take one each
    assert cache.call_sizes(224) == [112, 112]
    # 448: the rest 52 fits one wave (4 pieces, 208 blocks), so SMs each; the equal 4 x 112 was 2-4% slower
    assert cache.call_sizes(448) == [132, 132, 132, 52]
    assert cache.call_sizes(320) == [132, 132, 56]  # the rest: 4 pieces, 224 blocks, one wave
    assert cache.call_sizes(264) == [132, 132]
    assert cache.call_sizes(220) == [132, 88]  # the rest's 3 pieces, 264 blocks, fill one wave exactly


@pytest.mark.parametrize("name,free_gib", [("qwen2.5-1.5b-instruct", 75.7), ("qwen2.5-7b-instruct", 64.3),
                                           ("deepseek-r1-distill-qwen-32b", 17.6),
                                           ("deepseek-r1-distill-qwen-32b", 6.0)])
def test_default_slots_leave_a_prefill_room_and_fill_the_rest(shared, monkeypatch, name, free_gib):
    """On a GPU with `free_gib` free (an H100 after the weights of each model; the last, a smaller GPU), the
    default slot count's rows, at their full length (eval's: a 1,885-token prompt + 4,096 new), leave room for a
    prefill forward's activations (five [16,384, intermediate] bf16 tensors: 2.89 GiB for the 7B model, where
    2.97 GiB with the rows' buffers was measured, BENCHMARKS.md) and a tenth of the memory, and take at least 70%
    of what is left. (Half the free memory, the rule before, used 45-52% of that room on the H100s, and on the
    smaller GPU left the 32B model 1.2 GiB short of its prefill.)"""
    import json
    from types import SimpleNamespace

    cfg = M.Config.from_hf(json.loads((shared / "hf" / name / "config.json").read_text()))
    param = SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16)
    model = SimpleNamespace(cfg=cfg, parameters=lambda: iter([param]))
    free = int(free_gib * 2**30)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(sample, "_engine", None)
    max_len, max_new = 6144, 4096
    slots = sample._slots_that_fit(model, max_len, max_new, sample.PREFILL_TOKENS)
    row = max_len * M.KVCache.bytes_per_token(cfg) + 16 * (max_new + 1) + cfg.vocab_size * 10  # cache, buffers, logits
    activations = 5 * 16384 * cfg.intermediate_size * 2
    room = free - activations
    assert slots * row <= 0.9 * room and slots * row >= 0.7 * room


def test_kv_bytes_per_token_is_what_the_cache_allocates(models):
    """The per-token cost the memory statement and the default slot count use is the cache's real size."""
    cfg = models[1].cfg
    for dtype in (torch.float32, torch.bfloat16):
        cache = M.KVCache(cfg, 3, 32, dtype=dtype)
        allocated = sum(t.numel() * t.element_size() for t in cache.kv)
        assert allocated == 3 * 32 * M.KVCache.bytes_per_token(cfg, dtype) > 0
