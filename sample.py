"""KV-cached batched sampling on the live model: no second engine, no weight copy.

    generate(model, prompts, max_new_tokens, n=7, temperature=1.0, eos_ids=...) -> [Sample, ...]

How it works (read top to bottom):
  * A fixed number of *slots* share one static KVCache [slots, 2 * kv_heads, max_len, head_dim].
    Every (prompt, sample) pair is a sequence waiting in a queue, shortest prompts first; a free slot
    takes the next one.
  * Admission: the prompt is prefilled once, in place, into one slot; its other samples copy that
    slot's prompt rows (no second prefill). The first new token is sampled from the prefill logits.
  * Decode: one step advances every slot by one token. The step has static shapes and no host
    synchronisation, so on a GPU it is captured once in a CUDA graph and replayed. Finished rows keep
    running (their results are masked, and they attend to one key instead of their whole row) until the
    next sync point, every `sync_every` steps (fewer when every live row reaches its token limit sooner),
    where finished sequences are collected and their slots refilled. Once the queue is empty, the live
    rows are moved to the front of the cache and only the smallest batch size covering them
    (`round_size`) is decoded, so the long tail of a ragged batch (GRPO's 7 samples of very different
    lengths) costs what it needs.
  * Attention: each step is told `attend_len`, a bound on every row's length over the coming chunk (the
    live rows' furthest position, rounded up by `round_size`; a done row, finished or empty, reads one key).
    On a GPU the flash kernel reads each row's own length but sizes its split-KV work from the bound
    (which, with the batch size, also decides how `KVCache.prepare` groups rows into flash calls); the
    CPU path reads the first `attend_len` positions. One graph is captured per (batch, bound) shape and
    per whether the call asks for log-probs (greedy decoding without them skips a logsumexp per step).
  * Randomness is counter-based: the token at position p of sequence s is drawn with a uniform number
    hashed from (seed, s, p) by inverse-CDF sampling. A sample therefore does not depend on which slot
    or batch it ran in, and the CPU and GPU paths draw the same numbers. A sequence's numbers are hashed
    for all its positions when it starts, so a decode step reads one instead of hashing (15 small kernels).
"""

from __future__ import annotations

import numbers
import operator
import re
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from model import Config, KVCache, Transformer

# ----------------------------------------------------------------------------------------------
# Pure sampling functions


_M32 = 0xFFFFFFFF


def _mix(x):
    """A 32-bit avalanche mix (each input bit flips about half the output bits) of int64 values below 2**32.
    Arithmetic stays below 2**63 (32-bit values times constants below 2**31), so int64 never overflows."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def sequence_key(seed: int, seq: torch.Tensor) -> torch.Tensor:
    """The hash state of sequences seq [B] under seed, from which `uniform_at` draws."""
    x = _mix(torch.full_like(seq, seed & 0x7FFFFFFF) ^ 0x2545F491)
    return _mix((x + seq) & _M32)


_U_MAX = 1 - 2**-23  # the largest number uniform_at draws: x * _U_MAX rounds to below x for any normal float32 x


def uniform_at(key: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """A uniform number in [0, _U_MAX] for each (key, pos) pair (broadcast): an integer hash, no RNG state.
    23 random bits: exact in float32, and u * x stays below x after rounding (what `inverse_cdf` relies on)."""
    x = _mix((key + pos) & _M32)
    return (x >> 9).float() / 2**23


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k, then outside the top-p nucleus (as transformers does:
    temperature first, then top-k, then top-p; the most likely token always survives).

    logits [B,V] (already divided by the temperature) -> [B,V].
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B,1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B,V]
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # keep a token while the mass before it is below top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


_RUN = 128  # vocabulary entries per run in `inverse_cdf` (Qwen's vocabularies are multiples of it)


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """For each row of weights [B,V] (non-negative float32, a positive total) the first index whose running
    sum exceeds u [B] times the row's total, u in [0, _U_MAX] as `uniform_at` draws it: a draw from the
    row's distribution.

    In two levels, because a scan over a whole vocabulary is slow on a GPU at the batch sizes sampling
    runs (torch scans a row's last dimension with one thread block per 32 rows: 190 us per step at batch
    2 to 32 on an H100, bench/explore_sampling.py): first the runs of _RUN entries (their sums are one
    parallel reduction), then the entries of the chosen run. The index returned always has a positive
    weight: u * total rounds to below the total, and the running sums stay flat over zeros (`flat_cumsum`).
    """
    B, V = weights.shape
    runs = (F.pad(weights, (0, -V % _RUN)) if V % _RUN else weights).view(B, -1, _RUN)  # [B,R,_RUN], zeros padded
    mass = runs.sum(-1)  # [B,R] each run's weight
    ends = flat_cumsum(mass)  # [B,R] running total at each run's end
    target = u[:, None] * ends[:, -1:]  # [B,1] below the total
    r = torch.searchsorted(ends, target, right=True)  # [B,1] the first run ending above target: its mass is > 0
    # how far into run r target falls, as a fraction of the run (clamped: the run's sum and its end round apart;
    # at most _U_MAX, so that frac x the run's total stays below that total as u x total does)
    frac = (1 - (ends.gather(-1, r) - target) / mass.gather(-1, r)).clamp(0, _U_MAX)
    inside = flat_cumsum(runs.gather(1, r[:, :, None].expand(B, 1, _RUN))[:, 0])  # [B,_RUN] running sums in run r
    return (torch.searchsorted(inside, frac * inside[:, -1:], right=True) + r * _RUN)[:, 0]


def flat_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Running sums of x >= 0 along the last dimension that stay exactly flat over zero entries, so that a
    search for the first sum above a target never lands on a zero. torch's scan does not promise it: a
    parallel scan may add the sums on either side of a zero in different orders, which round apart (none
    did on an H100 for the shapes sampling uses, bench/explore_sampling.py; three small kernels buy the
    guarantee)."""
    return torch.where(x > 0, x.cumsum(-1), 0).cummax(-1).values


def sample_next(logits, u, temperature=1.0, top_k=0, top_p=1.0, logprobs=True):
    """Pick the next token of each row. logits [B,V] in the model's dtype (the arithmetic is float32);
    u [B] each row's uniform number for this token (`uniform_at`; unused when greedy).

    Returns tokens [B] and their log-probs [B] under softmax(logits / temperature) *before* top-k/top-p
    filtering, which is what GRPO's old_logp recomputes (temperature 0 = greedy, log-probs of softmax(logits)),
    or None for them when logprobs is False (greedy then skips a logsumexp over the vocabulary, and filtered
    sampling the unfiltered softmax).
    """
    if temperature == 0:
        tok = logits.argmax(-1)
        if not logprobs:
            return tok, None
        return tok, logits.gather(-1, tok[:, None])[:, 0].float() - torch.logsumexp(logits.float(), -1)
    scaled = logits if temperature == 1 else logits.float() / temperature
    filtered = top_k or top_p < 1
    # [B,V] the unfiltered distribution: drawn from when nothing is filtered, else only for the log-probs
    probs = scaled.softmax(-1, dtype=torch.float32) if logprobs or not filtered else None
    keep = filter_logits(scaled.float(), top_k, top_p).softmax(-1) if filtered else probs
    tok = inverse_cdf(keep, u)
    if not logprobs:
        return tok, None
    return tok, probs.gather(-1, tok[:, None])[:, 0].log()  # finite: a drawn token has keep > 0, so probs > 0


# ----------------------------------------------------------------------------------------------
# The engine


@dataclass
class Sample:
    prompt_index: int
    sample_index: int
    tokens: list[int]
    finish: str  # "eos" or "length"
    logprobs: list[float] | None = None


@dataclass
class _Slots:
    """Per-slot decode state, all on the device and updated in place (so a CUDA graph can own it)."""

    tok: torch.Tensor  # [S] the last token of the row (not yet in the cache)
    pos: torch.Tensor  # [S] its position
    u: torch.Tensor  # [S, max_new + 1] the uniform number of each new token (uniform_at, drawn at the start)
    n_gen: torch.Tensor  # [S] tokens generated so far
    limit: torch.Tensor  # [S] max new tokens of the row
    done: torch.Tensor  # [S] bool; empty slots are done
    out_tok: torch.Tensor  # [S, max_new + 1] generated tokens; the last column is a scratch sink
    out_lp: torch.Tensor  # [S, max_new + 1] their log-probs


PREFILL_TOKENS = 16384  # default padded tokens per prefill forward (generate's prefill_tokens)
SYNC_EVERY = 16  # default decode steps between host syncs (generate's sync_every)


@dataclass
class Engine:
    model: Transformer
    slots: int
    max_len: int
    max_new: int
    eos_ids: tuple = ()
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    sync_every: int = SYNC_EVERY
    cuda_graph: bool = True
    prefill_tokens: int = PREFILL_TOKENS
    graphs: dict = field(default_factory=dict)

    def __post_init__(self):
        p = next(self.model.parameters())
        self.device, dtype = p.device, p.dtype
        S, dev = self.slots, self.device
        self.cache = KVCache(self.model.cfg, S, self.max_len, device=dev, dtype=dtype)
        z = lambda dt=torch.long: torch.zeros(S, dtype=dt, device=dev)  # noqa: E731
        row = lambda dt: torch.zeros(S, self.max_new + 1, dtype=dt, device=dev)  # noqa: E731
        self.s = _Slots(z(), z(), row(torch.float), z(), z(), torch.ones(S, dtype=torch.bool, device=dev),
                        row(torch.long), row(torch.float))
        self.eos = torch.tensor(list(self.eos_ids) or [-1], device=dev)
        self.use_graph = self.cuda_graph and dev.type == "cuda"
        self.pool = self.side = None  # the graphs' memory pool and capture stream, made with the first graph
        self.logprobs = False  # set by each generate call

    def serves(self, model: Transformer, **settings) -> bool:
        """True if a call with these settings can run here: the same ones, except that this engine's cache
        and output buffers may be longer than asked (a longer cache serves shorter sequences)."""
        return (self.model is model and self.max_len >= settings.pop("max_len")
                and self.max_new >= settings.pop("max_new")
                and all(getattr(self, k) == v for k, v in settings.items()))

    # -- one decode step (static shapes, no host sync) --------------------------------------------

    def _step(self, B: int):
        """Advance rows 0..B-1 by one token (generate keeps the live rows within them)."""
        s = _Slots(*(t[:B] for t in vars(self.s).values()))  # views: updated in place
        self.cache.stopped = s.done  # finished rows attend to one key: what they compute is never read
        logits = self.model(s.tok[:, None], self.cache, s.pos[:, None])[:, 0]  # [B,V]
        self.cache.stopped = None
        u = s.u.gather(1, s.n_gen[:, None])[:, 0] if self.temperature else None  # [B] for the new tokens
        nxt, lp = sample_next(logits, u, self.temperature, self.top_k, self.top_p, self.logprobs)
        col = s.n_gen.masked_fill(s.done, self.max_new)[:, None]  # finished rows write to the sink column
        s.out_tok.scatter_(1, col, nxt[:, None])
        if self.logprobs:
            s.out_lp.scatter_(1, col, lp[:, None])
        live = ~s.done
        s.n_gen += live
        s.pos += live
        # A finished row keeps decoding (at its last position, rewriting it) until it is collected; what it
        # draws is never read, and its done flag stays set.
        s.tok.copy_(nxt)
        s.done |= torch.isin(nxt, self.eos) | (s.n_gen >= s.limit)

    def _run(self, steps: int, B: int, attend_len: int):
        self.cache.attend_len = attend_len
        if not self.use_graph:
            for _ in range(steps):
                self._step(B)
            return
        with torch.cuda.device(self.device):  # streams and graphs belong to the current device: the model's
            g = self.graphs.get((B, attend_len, self.logprobs))
            if g is None:
                # The first step of a new shape runs eagerly on the side stream (warm-up), then is captured on
                # it: one stream per engine, so cuBLAS keeps one workspace for it, not one per shape.
                if self.side is None:
                    self.side = torch.cuda.Stream()
                self.side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.side):
                    self._step(B)
                torch.cuda.current_stream().wait_stream(self.side)
                steps -= 1
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=self.pool, stream=self.side):  # (not its default: the first device's)
                    self._step(B)
                self.pool = g.pool()
                self.graphs[(B, attend_len, self.logprobs)] = g
            for _ in range(steps):
                g.replay()

    def _move(self, src: list[int], dst: list[int], length: int):
        """Move live rows (their state and first `length` cache positions) from slots src to free slots dst."""
        src_t, dst_t = torch.tensor(src, device=self.device), torch.tensor(dst, device=self.device)
        for t in vars(self.s).values():
            t[dst_t] = t[src_t]
        self._free(src_t)
        self._copy_rows(src_t, dst_t, length)

    def _free(self, idx: torch.Tensor):
        """Mark slots idx empty (done: while a batch still covers them they read one key, within any bound)."""
        self.s.done[idx] = True

    # -- admission: prefill prompts into slots, share them with the prompts' other samples ---------

    def _prefill(self, fresh: dict[int, int], prompts) -> dict[int, torch.Tensor]:
        """Prefill prompts {prompt index: slot} in right-padded batches of about `prefill_tokens` tokens,
        straight into their slots of the cache (what lands beyond a prompt's length is padding, which
        decoding overwrites before any query can see it).

        Returns each prompt's last-position logits [V] (in the model's dtype); never a [L, V] tensor.
        """
        # fresh comes in queue order, shortest first, so each batch holds prompts of similar lengths (1,024 RM-Bench
        # judge prompts, 801-1,885 tokens, prefilled at once pad to 24% more tokens in their own order, 0.5% sorted)
        out, items = {}, list(fresh.items())
        while items:
            batch, width = [], 0
            # add prompts while the padded batch (rows x longest prompt) fits in prefill_tokens
            while items and (not batch
                             or (len(batch) + 1) * max(width, len(prompts[items[0][0]])) <= self.prefill_tokens):
                batch.append(items.pop(0))
                width = max(width, len(prompts[batch[-1][0]]))
            lens = torch.tensor([len(prompts[i]) for i, _ in batch], device=self.device)
            x = torch.zeros(len(batch), width, dtype=torch.long)  # [k,W], right-padded
            for r, (i, _) in enumerate(batch):
                x[r, : len(prompts[i])] = torch.tensor(prompts[i])
            x = x.to(self.device)
            rows = torch.tensor([slot for _, slot in batch], device=self.device)
            pos = torch.arange(width, device=self.device).expand(len(batch), width)
            h = self.model.hidden(x, self.cache, pos, rows)  # [k,W,H]
            logits = self.model.logits(h[torch.arange(len(batch), device=self.device), lens - 1])  # [k,V]
            out.update({i: logits[r] for r, (i, _) in enumerate(batch)})
        return out

    def _copy_rows(self, src, dst, length: int):
        """Copy the first `length` cache positions of slots src to slots dst (lists or tensors), every layer."""
        src_t, dst_t = torch.as_tensor(src, device=self.device), torch.as_tensor(dst, device=self.device)
        for t in self.cache.kv:  # [slots, 2 * kv heads, max_len, hd]
            t[dst_t, :, :length] = t[src_t, :, :length]

    def _start(self, slots: list[int], seqs: list[int], lens: list[int], logits: torch.Tensor, limits: list[int]):
        """Start sequences seqs in slots: their first token is sampled from the prompts' logits [k,V]."""
        s, dev = self.s, self.device
        idx = torch.tensor(slots, device=dev)
        pos_t, limit_t = torch.tensor(lens, device=dev), torch.tensor(limits, device=dev)
        if self.temperature:  # the uniform number of every token the sequences may draw, new token j at pos + j
            key = sequence_key(self.seed, torch.tensor(seqs, device=dev))
            s.u[idx] = uniform_at(key[:, None], pos_t[:, None] + torch.arange(self.max_new + 1, device=dev))
        u = s.u[idx, 0] if self.temperature else None  # the first new token's numbers (greedy needs none)
        tok, lp = sample_next(logits, u, self.temperature, self.top_k, self.top_p, self.logprobs)
        s.tok[idx], s.pos[idx] = tok, pos_t
        s.n_gen[idx], s.limit[idx] = 1, limit_t
        s.out_tok[idx, 0] = tok
        if self.logprobs:
            s.out_lp[idx, 0] = lp
        s.done[idx] = torch.isin(tok, self.eos) | (limit_t <= 1)

    @torch.no_grad()
    def generate(self, prompts, n=1, limits=None, return_logprobs=False, on_tokens=None, progress=None):
        """prompts: lists of ids; limits[i]: max new tokens of prompt i. See the module docstring."""
        self.logprobs = return_logprobs  # computed only when asked for; the step's graphs are keyed by it
        limits = limits or [self.max_new] * len(prompts)
        # Prompts wait shortest first (ties in their own order), so those admitted together have similar lengths:
        # the first wave, and after it the few whose slots freed at each sync, are prefilled in batches padded to
        # their longest prompt. Judging 1,024 RM-Bench pairs, the prefills ran 12-13% more tokens than the prompts
        # hold in their own order and 0.4% sorted; the run took 4.5-5.1% less time (BENCHMARKS.md). The longest
        # prompts also decode last, in the tail of few rows, where reading their keys costs little: longest first,
        # the full-batch steps read 6% more keys and ran 7.5% slower each (bench/explore_chunk_times.py).
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        queue = [(i, j) for i in order for j in range(n)]
        queue.reverse()  # pop() from the end takes them in order
        owner = [None] * self.slots  # slot -> (prompt, sample)
        upper = [0] * self.slots  # host-side upper bound of each live slot's position (exact while it runs)
        resident = {}  # prompt -> a slot currently holding its prefilled prompt rows
        first_logits = {}  # prompt -> last prompt logits, until all its samples are admitted
        admitted = [0] * len(prompts)
        results, streamed = {}, [0] * (len(prompts) * n)
        reported = []  # samples collected at the last sync, for progress()
        s = self.s
        while queue or any(o is not None for o in owner):
            # progress() hears of the samples collected at the last sync only now, once the chunk after it is
            # launched: the caller's work on them (eval writes judgments) runs while the GPU decodes
            for sample in reported:
                progress(sample)
            reported = []
            # Collect finished rows: one host sync per `sync_every` steps for the state, one for the
            # tokens (and log-probs) of every row that finished.
            done, n_gen = torch.stack([s.done.long(), s.n_gen]).tolist()
            # a running row has made one token per step (a decode step that did nothing would loop forever)
            stalled = [k for k, o in enumerate(owner)
                       if o is not None and not done[k] and n_gen[k] != upper[k] - len(prompts[o[0]]) + 1]
            if stalled:
                raise RuntimeError(f"generate: the decode steps did not advance slots {stalled} (internal error)")
            if on_tokens is not None:
                for slot, o in enumerate(owner):
                    if o is not None and n_gen[slot] > streamed[o[0] * n + o[1]]:
                        q = o[0] * n + o[1]
                        on_tokens(q, s.out_tok[slot, streamed[q]:n_gen[slot]].tolist())
                        streamed[q] = n_gen[slot]
            finished = [slot for slot, o in enumerate(owner) if o is not None and done[slot]]
            if finished:
                idx = torch.tensor(finished, device=self.device)
                width = max(n_gen[slot] for slot in finished)
                toks_all = s.out_tok[idx, :width].tolist()
                lps_all = s.out_lp[idx, :width].tolist() if return_logprobs else None
                self._free(idx)
            for r, slot in enumerate(finished):
                (i, j), k = owner[slot], n_gen[slot]
                toks = toks_all[r][:k]
                finish = "eos" if toks[-1] in self.eos_ids else "length"
                results[(i, j)] = Sample(i, j, toks, finish, lps_all[r][:k] if return_logprobs else None)
                owner[slot] = None
                if resident.get(i) == slot:
                    del resident[i]
                if progress is not None:
                    reported.append(results[(i, j)])
            # Refill free slots: choose the sequences, prefill their new prompts together, start them.
            new = []
            for slot in range(self.slots):
                if owner[slot] is None and queue:
                    new.append((slot, *queue.pop()))
            fresh = {}  # prompt -> the slot its prefill goes to
            for slot, i, _ in new:
                if i not in resident and i not in fresh:
                    fresh[i] = slot
            if fresh:
                first_logits.update(self._prefill(fresh, prompts))
                resident.update(fresh)
            # A sample whose prompt another slot holds copies those rows (up to the longest such prompt:
            # anything copied beyond a row's own prompt is overwritten before it is visible).
            copies = [(resident[i], slot, len(prompts[i])) for slot, i, _ in new if resident[i] != slot]
            if copies:
                src, dst, lens = zip(*copies)
                self._copy_rows(list(src), list(dst), max(lens))
            if new:
                logits = torch.stack([first_logits[i] for _, i, _ in new])  # [k,V]
                self._start([slot for slot, _, _ in new], [i * n + j for _, i, j in new],
                            [len(prompts[i]) for _, i, _ in new], logits, [limits[i] for _, i, _ in new])
            for slot, i, j in new:
                owner[slot], upper[slot] = (i, j), len(prompts[i])
                admitted[i] += 1
                if admitted[i] == n:  # no later sample needs the prompt rows or logits
                    del first_logits[i]
                    resident.pop(i, None)
            if all(o is None for o in owner):
                continue
            # Once nothing waits, pack the live rows to the front so that steps cost what the live rows
            # need: the smallest decode batch size >= live rows, not all slots (the ragged tail).
            # Rows from the back fill the holes at the front, so each finished row costs at most one move.
            live = [k for k, o in enumerate(owner) if o is not None]
            cover = lambda k: min(self.slots, round_size(k + 1))  # noqa: E731  (a batch holding slot k)
            if not queue and cover(len(live) - 1) < cover(live[-1]):
                holes = [k for k in range(len(live)) if owner[k] is None]
                movers = [k for k in live if k >= len(live)]
                self._move(movers, holes, min(max(upper[k] for k in movers) + 1, self.max_len))
                for src, dst in zip(movers, holes):
                    owner[dst], upper[dst], owner[src] = owner[src], upper[src], None
                live = list(range(len(live)))
            # Decode a chunk of steps, no more than the furthest live row still needs to reach its limit
            # (none if every live row is already there: a limit of 1 costs no decode step). attend_len
            # bounds every row's length during the chunk: the masked (CPU) attention reads that many
            # positions, and the flash kernel's split-KV choice follows it: it splits the bound, not the
            # rows, so the bound stays close above the longest row (with the cache length as the bound,
            # attention at small batches was up to 2.5x slower; with a power of two, up to 1.3x: BENCHMARKS.md).
            last = lambda k: len(prompts[owner[k][0]]) + limits[owner[k][0]] - 1  # noqa: E731  (position at its limit)
            steps = min(self.sync_every, max(last(k) - upper[k] for k in live))
            if steps <= 0:
                continue
            longest = max(upper[k] for k in live) + steps + 1
            attend = min(self.max_len, max(256, round_size(longest)))
            self._run(steps, cover(live[-1]), attend)
            for slot in live:
                upper[slot] += steps
        for sample in reported:  # the last rows' samples
            progress(sample)
        return [results[(i, j)] for i in range(len(prompts)) for j in range(n)]


def round_size(n: int) -> int:
    """n rounded up to a power of two up to 16, above that to one of four sizes per doubling (20, 24, 28, 32,
    40, 48, ...): at most a fifth of the result is padding, while few distinct sizes occur. Decode batch
    sizes and attention bounds are rounded so; each (size, bound) pair is one CUDA graph."""
    if n <= 16:
        return 1 << (n - 1).bit_length()
    step = 1 << ((n - 1).bit_length() - 3)
    return -(-n // step) * step


def round_len(n: int) -> int:
    """n rounded up to a multiple of 256: the cache and output lengths `generate` sizes an engine with, so that
    consecutive calls of similar lengths reuse one engine and its graphs."""
    return -(-n // 256) * 256


def round_size_down(n: int) -> int:
    """The largest `round_size` value <= n."""
    if n <= 16:
        return 1 << (n.bit_length() - 1)
    step = 1 << (n.bit_length() - 3)
    return n // step * step


def check_prompts(cfg: Config, prompts, max_new_tokens):
    """Reject bad input before any work: empty prompts, ids that are not integers or outside the model's
    vocabulary, too long for it. Returns the prompts as lists of ints, and one max_new_tokens per prompt."""
    if hasattr(prompts, "ndim"):  # a torch or numpy array: one prompt per row
        if prompts.ndim != 2:
            raise TypeError(f"generate: prompts is a {prompts.ndim}-d array; give a 2-d [prompts, length] array or a "
                            "list of token-id lists")
        prompts = prompts.tolist()
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"generate: prompts is {prompts!r}; give a list of token-id lists or a 2-d array")
    if not prompts:
        raise ValueError("generate: no prompts")
    limits = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
    if len(limits) != len(prompts):
        raise ValueError(f"generate: {len(limits)} max_new_tokens values for {len(prompts)} prompts")
    checked = []
    for i, (p, m) in enumerate(zip(prompts, limits)):
        if _is_index(p) or isinstance(p, str):
            raise TypeError(f"generate: prompt {i} is {p!r}, not a list of token ids (one prompt is [ids])")
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty")
        if not _is_count(m):
            raise ValueError(f"generate: prompt {i}: max_new_tokens must be an integer >= 1, got {m!r}")
        ids = _token_ids(i, p)
        if min(ids) < 0 or max(ids) >= cfg.vocab_size:
            bad = next(t for t in ids if not 0 <= t < cfg.vocab_size)
            raise ValueError(f"generate: prompt {i} has token id {bad} outside the vocabulary [0, {cfg.vocab_size})")
        if len(p) + m > cfg.max_position_embeddings:
            raise ValueError(f"generate: prompt {i} has {len(p)} tokens + max_new_tokens {m} = {len(p) + m}, over the "
                             f"model's limit of {cfg.max_position_embeddings} (max_position_embeddings)")
        checked.append(ids)
    return checked, [operator.index(m) for m in limits]  # numpy or torch integers as ints


def _token_ids(i: int, p) -> list[int]:
    """Prompt i's ids as ints: ints, numpy or 0-d integer tensors. A float is an error, never truncated, and so is
    a boolean (a mask passed for the ids), which Python would read as 0 or 1."""
    if hasattr(p, "dtype"):  # a tensor or array: its dtype says what its elements are
        if _is_bool(p):
            raise TypeError(f"generate: prompt {i} is a {p.dtype} array, not token ids")
        if p.ndim == 1:
            p = p.tolist()
    types = set(map(type, p))
    if types == {int}:  # the usual case, as the tokenizer writes it
        return list(p)
    if (j := next((j for j, t in enumerate(p) if _is_bool(t)), None)) is not None:  # bool, numpy or torch
        raise TypeError(f"generate: prompt {i} has a boolean at {j}, not a token id: {p[j]!r}")
    try:
        return list(map(operator.index, p))
    except TypeError:
        j = next(j for j, t in enumerate(p) if not _is_index(t))
        raise TypeError(f"generate: prompt {i} has a token id that is not an integer at {j}: {p[j]!r}") from None


def _is_bool(x) -> bool:
    """A Python, numpy or torch boolean, or an array of them."""
    return isinstance(x, bool) or str(getattr(x, "dtype", "")).endswith("bool")


def _is_index(t) -> bool:
    try:
        operator.index(t)
        return True
    except TypeError:
        return False


def _is_int(x) -> bool:
    """An integer setting: an int, numpy or 0-d tensor integer, not a bool."""
    return _is_index(x) and not isinstance(x, bool)


def _is_count(x) -> bool:
    return _is_int(x) and x >= 1


def check_settings(cfg: Config, n, temperature, top_k, top_p, eos_ids, seed, slots, sync_every,
                   prefill_tokens, return_logprobs=False, cuda_graph=True, on_tokens=None, progress=None) -> tuple:
    """Reject bad generate() settings by name before any work (a sync interval of 0 would never return, an eos id
    outside the vocabulary never stop a row, a switch given as the string "False" turn on). Returns eos_ids as a
    tuple (read once: a generator of ids is not silently used up)."""
    for name, v in dict(return_logprobs=return_logprobs, cuda_graph=cuda_graph).items():
        if not isinstance(v, bool):
            raise TypeError(f"generate: {name} must be True or False, got {v!r}")
    for name, v in dict(on_tokens=on_tokens, progress=progress).items():
        if v is not None and not callable(v):
            raise TypeError(f"generate: {name} must be a function or None, got {v!r}")
    counts = dict(n=n, sync_every=sync_every, prefill_tokens=prefill_tokens)
    if slots is not None:  # None: the default count
        counts["slots"] = slots
    for name, v in counts.items():
        if not _is_count(v):
            raise ValueError(f"generate: {name} must be an integer >= 1, got {v!r}")
    if not (isinstance(temperature, numbers.Real) and 0 <= temperature < float("inf")):
        raise ValueError(f"generate: temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not (_is_int(top_k) and top_k >= 0):
        raise ValueError(f"generate: top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1):
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p!r}")
    if temperature == 0 and (top_k or top_p < 1):  # greedy takes the most likely token, which both filters keep
        raise ValueError(f"generate: top_k and top_p filter sampling and greedy decoding (temperature 0) ignores "
                         f"them: set temperature > 0 to sample, got top_k={top_k}, top_p={top_p}")
    if not (_is_int(seed) and 0 <= seed < 2**31):  # sequence_key reads 31 bits: 2**31 would draw what 0 draws
        raise ValueError(f"generate: seed must be an integer in [0, 2**31), got {seed!r}")
    if _is_index(eos_ids) or isinstance(eos_ids, (str, bytes)):
        raise TypeError(f"generate: eos_ids must be a collection of token ids, got {eos_ids!r}")
    eos = tuple(eos_ids)
    if not all(map(_is_int, eos)):
        raise TypeError(f"generate: eos_ids must be integer token ids, got {eos!r}")
    eos = tuple(map(operator.index, eos))
    if outside := [t for t in eos if not 0 <= t < cfg.vocab_size]:
        raise ValueError(f"generate: eos id {outside[0]} is outside the vocabulary [0, {cfg.vocab_size})")
    return eos


@torch.no_grad()
def generate(model: Transformer, prompts, max_new_tokens, n: int = 1, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, eos_ids=(), seed: int = 0, return_logprobs: bool = False, slots: int | None = None,
             sync_every: int = SYNC_EVERY, cuda_graph: bool = True, prefill_tokens: int = PREFILL_TOKENS,
             on_tokens=None, progress=None) -> list[Sample]:
    """Sample `n` continuations of each prompt (lists of token ids, any lengths; or a 2-d tensor or numpy array,
    one prompt per row).

    max_new_tokens: an int, or one int per prompt. eos_ids: a row stops after emitting any of them.
    temperature 0 is greedy. Returns len(prompts) * n Samples, prompt-major, each with its new tokens,
    finish reason ("eos" / "length") and, if asked, each token's log-prob (see `sample_next`).
    slots: how many sequences decode at once (default: all of them, up to what 90% of the free GPU memory holds
    once a prefill's activations are set aside: `_slots_that_fit`; 256 on a CPU).
    prefill_tokens: padded tokens per prefill forward (new prompts are prefilled together).
    on_tokens(q, ids): called at each sync with sequence q's (= prompt * n + sample) tokens since the last call.
    progress(sample): called once per Sample as soon as its sequence is collected, before the call returns
    (eval writes each judgment in it); it runs while the GPU decodes the next chunk of steps.
    The engine (KV cache, CUDA graphs) is kept for the next call that fits it; `release()` frees it.
    """
    global _engine
    prompts, limits = check_prompts(model.cfg, prompts, max_new_tokens)
    eos_ids = check_settings(model.cfg, n, temperature, top_k, top_p, eos_ids, seed, slots, sync_every, prefill_tokens,
                             return_logprobs, cuda_graph, on_tokens, progress)
    # integer settings given as numpy or torch integers (the checks accept them) as ints: round_size and the
    # engine's schedule do Python integer arithmetic on them
    n, top_k, seed, sync_every, prefill_tokens = map(operator.index, (n, top_k, seed, sync_every, prefill_tokens))
    slots = None if slots is None else operator.index(slots)
    longest = max(len(p) + m for p, m in zip(prompts, limits))
    max_len, max_new = round_len(longest), round_len(max(limits))
    slots = min(slots or _slots_that_fit(model, max_len, max_new, prefill_tokens), len(prompts) * n)
    settings = dict(slots=slots, max_len=max_len, max_new=max_new, eos_ids=eos_ids,
                    temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, sync_every=sync_every,
                    cuda_graph=cuda_graph, prefill_tokens=prefill_tokens)
    if _engine is None or not _engine.serves(model, **settings):
        _engine = None  # free the old cache before allocating the new one
        _engine = Engine(model, **settings)
    return _engine.generate(prompts, n, limits, return_logprobs, on_tokens, progress)


def _slots_that_fit(model: Transformer, max_len: int, max_new: int, prefill_tokens: int) -> int:
    """Default slot count: on a GPU, as many rows as 90% of the memory available to PyTorch holds once a
    prefill forward's activations are set aside (the last engine's cache counts as available: it is freed
    first). A row is its KV cache of `max_len` positions, its output buffers of `max_new` and its part of a
    decode step's logits. Rounded down by `round_size_down` (452 rows give 448 slots) so that the count, and
    with it the engine and its graphs, stays stable across calls. All sequences at once avoid refill waves;
    more rows share each read of the weights. 256 on a CPU."""
    p = next(model.parameters())
    if p.device.type != "cuda":
        return 256
    # free device memory plus what PyTorch's allocator holds in reserve but has not handed out
    free = (torch.cuda.mem_get_info(p.device)[0]
            + torch.cuda.memory_reserved(p.device) - torch.cuda.memory_allocated(p.device))
    cfg, size, kv = model.cfg, p.dtype.itemsize, KVCache.bytes_per_token(model.cfg, p.dtype)
    if _engine is not None and _engine.model is model:
        free += _engine.slots * _engine.max_len * kv
    # a prefill forward's activations: about five [prefill_tokens, intermediate] tensors (gate | up counts two,
    # SiLU(gate), its product with up, and slack); 2.9 GiB for a 7B model at 16,384 tokens, where 2.97 with the
    # rows' buffers was measured (BENCHMARKS.md)
    work = 5 * prefill_tokens * cfg.intermediate_size * size
    # a row: its cache, its uniform numbers, tokens and log-probs (16 bytes a new token), its logits row in the
    # model's dtype and two float32 copies (softmax, sampling)
    row = max_len * kv + 16 * (max_new + 1) + cfg.vocab_size * (size + 8)
    return round_size_down(max(1, int(0.9 * (free - work) / row)))


_engine: Engine | None = None  # the last engine, kept while calls keep the same shapes and settings


def release():
    """Free the engine `generate` keeps between calls: its KV cache (by default most of the GPU memory that was
    free when it was built), output buffers, CUDA graphs and its reference to the model (deleting the model
    alone frees nothing while the engine holds it). Call it before training in the same process or loading
    another model; the next generate() builds a new engine."""
    global _engine
    _engine = None


# ----------------------------------------------------------------------------------------------
# CLI: python sample.py --model DIR --prompt "..."


class TextStream:
    """An `on_tokens` callback that writes one sample's text as it is generated.

    A character whose UTF-8 bytes are split over tokens decodes to a trailing U+FFFD until its last byte
    arrives; that text is held back, and `close()` writes whatever is still held. Once the text decoded so
    far ends on a whole character it is written and its tokens dropped, so each token is decoded about once
    (decoding everything at every sync would cost O(length^2): 3 ms per sync at 8,192 tokens).

    Example: chunks [Hi] [half of 🦜] [rest of 🦜] [half of 𝔘], then close(): writes "Hi", "🦜", "\ufffd"
    """

    def __init__(self, tok, out=None):
        self.tok, self.out, self.pending = tok, out or sys.stdout, []

    def __call__(self, _sequence, new: list[int]):
        self.pending += new
        text = self.tok.decode(self.pending, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # byte-level BPE: text ending on a whole character ends on a byte
            self._write(text)             # boundary, so what follows decodes the same on its own

    def close(self):
        self._write(self.tok.decode(self.pending, skip_special_tokens=True))

    def _write(self, text: str):
        self.out.write(text)
        self.out.flush()
        self.pending = []


@dataclass
class ChatConfig:
    model: str = ""  # Hugging Face model folder (required)
    prompt: str = ""  # the user message (required)
    system: str = ""  # an optional system message
    max_new_tokens: int = 512  # longest reply
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass kept (1 = off)
    top_k: int = 0  # most likely tokens kept (0 = off)
    seed: int = 0  # the draws are a function of seed and position
    device: str = ""  # cuda, cuda:N or cpu (empty: cuda if there is one)


def main(argv=None):
    from data import Tokenizer, config_parser
    from model import checked_device, default_device, load, load_config

    cfg = ChatConfig(**vars(config_parser(ChatConfig, "Chat with a checkpoint (its chat template applied), "
                                                       "streaming text.").parse_args(argv)))
    missing = [f"--{name}" for name in ("model", "prompt") if not getattr(cfg, name)]
    if missing:  # not given, or given as an empty string
        verb = "is" if len(missing) == 1 else "are"
        raise SystemExit(f"sample.py: {' and '.join(missing)} {verb} required, not empty")
    if cfg.temperature == 0 and cfg.seed != ChatConfig.seed:  # generate takes any seed; a flag given in vain
        raise SystemExit("sample.py: --seed picks the draws of sampling, and greedy decoding (--temperature 0, the "
                         "default) draws nothing: set --temperature > 0 to sample")
    device = cfg.device or default_device()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tok = Tokenizer.load(cfg.model)
    msgs = [{"role": "system", "content": cfg.system}] if cfg.system else []
    msgs.append({"role": "user", "content": cfg.prompt})
    ids = tok.encode_chat(msgs, add_generation_prompt=True)
    # the prompt and settings checked as generate checks them, before the weights load
    settings = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, eos_ids=tok.eos_ids,
                    seed=cfg.seed, sync_every=4)
    try:
        checked_device(device)  # cuda:N that this process cannot see
        model_cfg = load_config(cfg.model)
        check_prompts(model_cfg, [ids], cfg.max_new_tokens)
        check_settings(model_cfg, n=1, slots=None, prefill_tokens=PREFILL_TOKENS, **settings)  # generate's defaults
    except ValueError as e:  # a flag out of range: one line, as argparse reports a bad flag, not a traceback
        raise SystemExit(f"sample.py: {_as_flags(str(e))}") from None
    model = load(cfg.model, device=device, dtype=dtype).eval()
    stream = TextStream(tok)

    t0 = time.time()
    out = generate(model, [ids], cfg.max_new_tokens, on_tokens=stream, **settings)[0]
    dt = time.time() - t0
    stream.close()
    print(f"\n[{len(out.tokens)} tokens, stopped by {out.finish}, {len(out.tokens) / dt:.1f} tok/s]", file=sys.stderr)


def _as_flags(message: str) -> str:
    """generate's message about its one prompt and its arguments, in the CLI's words: the prompt and the flags.

    >>> _as_flags("generate: prompt 0: max_new_tokens must be an integer >= 1, got 0")
    '--max-new-tokens must be an integer >= 1, got 0'
    """
    message = message.removeprefix("generate: ").replace("prompt 0: ", "").replace("prompt 0 ", "the prompt ")
    return re.sub(r"\b(max_new_tokens|temperature|top_k|top_p|seed)\b", lambda m: "--" + m[1].replace("_", "-"),
                  message)


if __name__ == "__main__":
    from data import run_cli

    run_cli(main)
