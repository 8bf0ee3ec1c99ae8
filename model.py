"""The Qwen2 / Qwen3 decoder-only transformer, and Hugging Face checkpoint I/O.

A reader can learn the whole architecture from this file:

    ids [B,T] -> embed -> N x Block -> RMSNorm -> lm_head -> logits [B,T,V]
    Block(x) = x + Attention(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))

Attention is grouped-query (n_kv_heads <= n_heads) with rotary position embeddings.
The two families differ only inside Attention:
  * Qwen2 (Qwen2.5, DeepSeek-R1-Distill-Qwen): q/k/v projections carry a bias.
  * Qwen3 (dense): no biases; an RMSNorm over each head of q and k before RoPE; head_dim is explicit
    (Qwen3-0.6B has 16 heads x 128 = 2048 > hidden 1024).

q, k and v are one projection (`attn.qkv`), gate and up another (`mlp.gate_up`): fewer, larger matmuls.
`load(path)` reads an official folder (config.json + one or many .safetensors) through one explicit
key map that places each Hugging Face tensor in its rows; `save(model, path)` splits them back and
writes a folder that transformers and vLLM read. No loss, no
distributed code here: those live in sft.py / grpo.py.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    arch: str  # "qwen2" or "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    dtype: str = "bfloat16"  # the dtype the checkpoint was written in
    hf: dict = field(default_factory=dict, repr=False)  # the original config.json, written back by save

    @property
    def qkv_bias(self) -> bool:  # Qwen2 has biases on q, k, v (not o); Qwen3 has none
        return self.arch == "qwen2"

    @property
    def qk_norm(self) -> bool:  # Qwen3 normalises each q and k head before RoPE
        return self.arch == "qwen3"

    @classmethod
    def from_hf(cls, d: dict, where: str = "config.json") -> "Config":
        """Build from a checkpoint's config.json, refusing anything this model does not implement.

        >>> Config.from_hf({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
        ...   "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
        ...   "num_key_value_heads": 2, "rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        ...   "max_position_embeddings": 32768}).head_dim
        128
        """

        def refuse(name, value, why):
            raise InputError(f"{where}: unsupported {name}={value!r} ({why})")

        archs = d.get("architectures") or []
        known = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
        if not (isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str) and archs[0] in known):
            refuse("architectures", archs, "only Qwen2ForCausalLM and Qwen3ForCausalLM are implemented")
        arch = known[archs[0]]
        if d.get("model_type", arch) != arch:
            refuse("model_type", d.get("model_type"), f"{archs[0]} needs model_type {arch!r}")
        if d.get("hidden_act", "silu") != "silu":
            refuse("hidden_act", d["hidden_act"], "the SwiGLU MLP here uses silu")
        if d.get("use_sliding_window", False):
            refuse("use_sliding_window", d["use_sliding_window"], "sliding-window attention is not implemented")
        if not isinstance(d.get("layer_types") or [], list):
            refuse("layer_types", d["layer_types"], "should be a list of each layer's attention")
        for i, kind in enumerate(d.get("layer_types") or []):
            if kind != "full_attention":
                refuse(f"layer_types[{i}]", kind, "only full attention is implemented")
        if d.get("rope_scaling") is not None:
            refuse("rope_scaling", d["rope_scaling"], "only plain RoPE is implemented")
        # transformers >= 5 writes rope_theta inside rope_parameters; older configs write it at the top.
        rope = d.get("rope_parameters") or {}
        if not isinstance(rope, dict):
            refuse("rope_parameters", rope, "should be an object of RoPE settings")
        if rope.get("rope_type", "default") != "default":
            refuse("rope_parameters.rope_type", rope["rope_type"], "only plain RoPE is implemented")
        extra = set(rope) - {"rope_type", "rope_theta"}
        if extra:
            refuse("rope_parameters", rope, f"keys {sorted(extra)} imply a RoPE variant not implemented")
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        for name in required + ("num_key_value_heads", "head_dim", "max_position_embeddings"):  # (null: the default)
            if name in d and (d[name] is not None or name in required) and (type(d[name]) is not int or d[name] < 1):
                refuse(name, d[name], "should be an integer >= 1")
        for name, v in (("rope_theta", theta), ("rms_norm_eps", d.get("rms_norm_eps", 1.0))):  # (missing: below)
            if type(v) not in (int, float) or not 0 < v < math.inf:
                refuse(name, v, "should be a positive number")
        if type(d.get("tie_word_embeddings", False)) is not bool:
            refuse("tie_word_embeddings", d["tie_word_embeddings"], "should be true or false")
        if arch == "qwen3" and d.get("attention_bias", False):
            refuse("attention_bias", d["attention_bias"], "no official Qwen3 checkpoint uses it")
        if d.get("attention_dropout", 0.0) != 0.0:
            refuse("attention_dropout", d["attention_dropout"], "dropout is not implemented")
        if (q := d.get("quantization_config")) is not None:
            refuse("quantization_config", q.get("quant_method", "?") if isinstance(q, dict) else q, "quantized weights")
        try:
            n_heads = d["num_attention_heads"]
            cfg = cls(
                arch=arch,
                vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"],
                n_layers=d["num_hidden_layers"],
                n_heads=n_heads,
                n_kv_heads=d.get("num_key_value_heads") or n_heads,
                head_dim=d.get("head_dim") or d["hidden_size"] // n_heads,
                rope_theta=float(theta),
                rms_norm_eps=d["rms_norm_eps"],
                tie_word_embeddings=d.get("tie_word_embeddings", False),
                max_position_embeddings=d.get("max_position_embeddings", 32768),
                dtype=d.get("dtype") or d.get("torch_dtype") or "bfloat16",
                hf=dict(d),
            )
        except KeyError as e:
            raise InputError(f"{where}: missing field {e.args[0]!r}") from None
        if cfg.n_heads % cfg.n_kv_heads:
            refuse("num_key_value_heads", cfg.n_kv_heads, f"must divide num_attention_heads={cfg.n_heads}")
        if arch == "qwen2" and cfg.head_dim * n_heads != cfg.hidden_size:
            refuse("head_dim", cfg.head_dim, "Qwen2 needs head_dim * num_attention_heads == hidden_size")
        return cfg

    def to_hf(self) -> dict:
        """The config.json to write: the original fields, with the architecture's own ones made current."""
        d = dict(self.hf)
        d.update(
            architectures=["Qwen2ForCausalLM" if self.arch == "qwen2" else "Qwen3ForCausalLM"],
            model_type=self.arch,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="silu",
            torch_dtype=self.dtype,
        )
        d.pop("dtype", None)
        if "rope_parameters" in d:
            d["rope_parameters"] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        else:
            d["rope_theta"] = self.rope_theta
        if self.arch == "qwen3" or "head_dim" in d:
            d["head_dim"] = self.head_dim
        return d


# ----------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # x * rsqrt(mean(x^2) + eps) * weight, one fused kernel that accumulates in float32. (The reference
        # casts to the input dtype before the weight multiply; in bf16 the two differ by at most one rounding.)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def inv_freq(cfg: Config, device) -> torch.Tensor:
    """[hd/2] float32 angular speeds, computed as Hugging Face computes them: frequency i drives the
    pair of dims (i, i + hd/2) (half-rotation layout, so the official q/k weights load without permuting rows)."""
    hd = cfg.head_dim
    return 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))


def rope_cos_sin(pos: torch.Tensor, cfg: Config, dtype: torch.dtype):
    """cos, sin [B,T,N,hd] for integer positions pos [B,T]: the angles in float32, the tables in dtype.

    They have the shape of the fused projection qkv [B,T,N,hd] (N = q heads, then k heads, then v heads),
    so one pass over qkv rotates q and k and passes v through exactly (its cos is 1, sin 0), and its output
    already holds k and v side by side, as one KVCache.write stores them. The tables are computed once per forward
    and shared by every layer. They are stored at full size, not broadcast over heads, because elementwise
    kernels run vectorised only on operands of one contiguous shape (see BENCHMARKS.md for what it saves).
    sin carries the rotation's signs: see apply_rope. (Decode steps of up to ROPE_MATRIX_ROWS rows use
    rope_matrix instead.)
    """
    hd = cfg.head_dim
    n_rot = cfg.n_heads + cfg.n_kv_heads  # the q and k heads are rotated,
    n = n_rot + cfg.n_kv_heads  # the v heads after them pass through
    freqs = pos.float()[..., None] * inv_freq(cfg, pos.device)  # [B,T,hd/2]
    cos = torch.ones(*pos.shape, n, hd, device=pos.device, dtype=dtype)
    sin = torch.zeros(*pos.shape, n, hd, device=pos.device, dtype=dtype)
    cos[..., :n_rot, :] = torch.cat([freqs, freqs], dim=-1).cos().to(dtype)[..., None, :]
    sin[..., :n_rot, :] = torch.cat([-freqs, freqs], dim=-1).sin().to(dtype)[..., None, :]  # sin(-a) = -sin(a)
    return cos, sin


def apply_rope(x, cos, sin):
    """x [B,T,N,hd] (qkv), cos/sin from rope_cos_sin. Returns a new tensor.

    Rotating the pair (x1, x2) = (x[i], x[i + hd/2]) by angle a gives (x1 cos a - x2 sin a, x2 cos a + x1 sin a),
    which is x * cos + [x2, x1] * [-sin, sin], and [x2, x1] is x rolled by hd/2: three kernels.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


ROPE_MATRIX_ROWS = 64  # decode steps of up to this many rows rotate by rope_matrix


def rope_matrix(pos: torch.Tensor, cfg: Config, dtype: torch.dtype):
    """[B,hd,2hd] for one token per row, pos [B,1]: a head h [hd] of row b times it is [h rotated | h].

    With one token per row, all of a row's heads sit at one position, so its rotation is one [hd,hd]
    matrix (apply_rope's x * cos + [x2, x1] * [-sin, sin] written as a product), and one batched matmul
    rotates q and k and copies v: one kernel where apply_rope takes three (bench/explore_rope_matmul.py).
    The matrix is zero but for three diagonals: cos on the main one; -sin(a_i) at (i + hd/2, i) and
    +sin(a_i) at (i, i + hd/2), which bring in the other dim of each pair; and the identity [.., hd:].
    """
    hd, h = cfg.head_dim, cfg.head_dim // 2
    freqs = pos.float() * inv_freq(cfg, pos.device)  # [B,hd/2]
    m = torch.zeros(pos.shape[0], hd, 2 * hd, device=pos.device, dtype=dtype)
    torch.cos(torch.cat([freqs, freqs], dim=-1), out=m.diagonal(0, 1, 2))  # out= views: written in place
    torch.sin(-freqs, out=m.diagonal(-h, 1, 2))  # sin(-a) = -sin(a)
    torch.sin(freqs, out=m.diagonal(h, 1, 2)[:, :h])
    m.diagonal(hd, 1, 2).fill_(1)
    return m


def apply_rope_matrix(qkv, m, n_heads: int):
    """qkv [B,1,N,hd] of a decode step, m from rope_matrix -> q [B,1,H,hd] and kv [B,1,2,Hkv,hd] (k heads
    rotated, v heads as they were), both views of one product [B,N,2hd] that holds each head rotated | as it
    was. In it v starts Hkv heads and hd columns after k, so k and v are one strided view: one cache scatter."""
    B, _, N, hd = qkv.shape
    H, Hkv = n_heads, (N - n_heads) // 2
    y = torch.matmul(qkv.view(B, N, hd), m)  # [B,N,2hd]
    row, head = y.stride(0), y.stride(1)  # N * 2hd, 2hd
    kv = y.as_strided((B, 1, 2, Hkv, hd), (row, row, Hkv * head + hd, head, 1), y.storage_offset() + H * head)
    return y[:, None, :H, :hd], kv


class Attention(nn.Module):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # q, k and v in one matrix: rows [q heads | k heads | v heads], one matmul instead of three.
        self.qkv = nn.Linear(cfg.hidden_size, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(self, x, rope, cache=None):
        """x [B,T,hidden] -> [B,T,H*hd]. rope: the tables (cos, sin) of rope_cos_sin, or the matrices of
        rope_matrix (a decode step of a few rows: cache given, T == 1)."""
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x).view(B, T, H + 2 * Hkv, hd)  # [B,T,H+2Hkv,hd]
        if hasattr(self, "q_norm"):  # Qwen3 normalises each q and k head before the rotation
            q, k, v = qkv.split([H, Hkv, Hkv], dim=2)
            qkv = torch.cat([self.q_norm(q), self.k_norm(k), v], dim=2)
        if isinstance(rope, torch.Tensor):  # a decode step of a few rows: one matmul rotates (rope_matrix)
            q, kv = apply_rope_matrix(qkv, rope, H)
        else:
            qkv = apply_rope(qkv, *rope)  # q and k rotated, v unchanged
            q, kv = qkv[:, :, :H], qkv[:, :, H:].unflatten(2, (2, Hkv))  # views; kv [B,T,2,Hkv,hd]: k, v heads
        if cache is not None and T == 1:
            # One new token per row: store its k/v, attend over its row of the cache.
            cache.write(self.layer, kv)
            y = cache.attend(self.layer, q)  # [B,1,H,hd]
        else:
            # Whole sequences (training, scoring, and the sampler's prefill, whose rows start empty):
            # causal attention over these T tokens. A prefill also stores k and v for the decode steps.
            q, k, v = qkv.split([H, Hkv, Hkv], dim=2)  # one split (not the views above): one concatenation in backward
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=True).transpose(1, 2)  # [B,T,H,hd]
            if cache is not None:
                cache.write(self.layer, kv)
        return y.reshape(B, T, H * hd)  # the block applies self.o (see add_linear)


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        # gate and up in one matrix: rows [gate | up], one matmul instead of two.
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        if x.shape[0] * x.shape[1] > 1:
            # Several tokens (training, scoring, prefill, batched decoding): one GEMM per row half of the
            # fused weight gives contiguous gate and up, whose elementwise kernels run vectorised (on
            # strided views of one GEMM's output, SFT steps were about 5% slower, and prefills and
            # batch-64 decode steps slower too: BENCHMARKS.md).
            n = self.gate_up.weight.shape[0] // 2
            gate, up = F.linear(x, self.gate_up.weight[:n]), F.linear(x, self.gate_up.weight[n:])
        else:
            # Decoding one token at batch 1: one GEMM, where launches dominate; gate and up are views of it.
            gate, up = self.gate_up(x).chunk(2, dim=-1)
        return F.silu(gate) * up  # SwiGLU; the block applies self.down (see add_linear)


class Block(nn.Module):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, cache=None):
        x = add_linear(x, self.attn(self.attn_norm(x), rope, cache), self.attn.o)
        return add_linear(x, self.mlp(self.mlp_norm(x)), self.mlp.down)


def add_linear(x, h, proj: nn.Linear):
    """The residual update x + proj(h). Without autograd (sampling, scoring) the GEMM accumulates into x
    in place (beta = 1): one kernel instead of a GEMM and an add, which counts when decoding one token."""
    if torch.is_grad_enabled():
        return x + proj(h)
    return x.view(-1, x.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), proj.weight.t()).view(x.shape)


class KVCache:
    """A static, preallocated key/value cache, passed into `forward` (never stored on modules, so it
    stays out of state_dict and FSDP).

    kv[l]: [batch, 2 * n_kv_heads, max_len, head_dim]: row b holds one sequence, as its k heads then its
    v heads, each a run of max_len positions; its token at position p is stored at index p of each head.
    (Head-major, so that each head's keys are one contiguous run: see `attend`.)

    Two kinds of forward use it (`prepare` is called by the model with each forward's positions):
      * prefill, T > 1: rows `rows` start empty, the tokens sit at positions 0..T-1 (right-padded rows
        are fine: what lies beyond a row's length is never read before decoding overwrites it);
      * decode, T == 1: each row adds one token at its own position p and attends to indices 0..p of
        its row, so rows of different lengths share a batch with no padding logic (a row marked in
        `stopped`, whose output the caller discards, attends to index 0 only).

    Decode attention on a GPU (bf16/fp16) is the flash kernel over each row's first p + 1 entries only
    (`seqused_k`): a short row costs what it holds, not what the longest row holds. Elsewhere (CPU,
    float32) it is masked SDPA over the first `attend_len` indices. Either way every row in the batch
    must hold at most `attend_len` entries (the flash kernel sizes its work from it); the sampler keeps
    it just above the longest row.
    """

    def __init__(self, cfg: Config, batch: int, max_len: int, device=None, dtype=torch.bfloat16):
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        shape = (batch, 2 * cfg.n_kv_heads, max_len, cfg.head_dim)
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.max_len = max_len
        self.attend_len = max_len
        self.stopped = None  # [B] bool, set by the sampler for a decode step: rows whose output it discards
        self.flash = _flash_attention_usable(self.kv[0])
        if self.flash:
            # From this many (row, kv head) sequences on, one flash call no longer splits keys (its heuristic
            # splits them only while sequences < 0.8 x 2 x SMs). There, short rows fold their query heads
            # (see attend; bench/explore_fold.py), and rows that may be `split_from` keys long or longer go
            # in calls of about SMs sequences each, small enough for the kernel to split them again.
            props = torch.cuda.get_device_properties(self.kv[0].device)
            self.sms = props.multi_processor_count
            self.fold_from = flash_unsplit_from(self.sms)  # the kernel's own line: 212 on 132 SMs
            # The folded call is bound by tensor-core work on its mostly empty query tiles and reads keys at
            # about 2.4 TB/s on an H100 and an H200 alike; the calls read closer to the memory's peak but
            # pay a fixed cost per call, so the more bandwidth the memory has, the shorter the rows from
            # which they win (bench/explore_chunks.py: from about 1,000 positions on an H200, 4.8 TB/s,
            # up to 1.5x faster at 6,000; from about 3,000 on an H100, 3.35 TB/s, up to 1.17x).
            peak = 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8  # bytes/s (clock in kHz)
            self.split_from = 1024 if peak >= 4e12 else 3072

    @staticmethod
    def bytes_per_token(cfg: Config, dtype=torch.bfloat16) -> int:
        """What one cached position costs: its k and v heads in every layer."""
        return cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * dtype.itemsize

    def prepare(self, pos: torch.Tensor, rows: torch.Tensor | None = None):
        """Once per forward, shared by every layer: where the new k/v go and what each query may see.

        pos [B,T] positions; rows [B] the cache rows (default 0..B-1).
        """
        B, T = pos.shape
        N, L = 2 * self.n_kv_heads, self.max_len
        self.rows = rows  # None: rows 0..B-1, read as a view by the masked path
        if rows is None:
            rows = torch.arange(B, device=pos.device)
        # where write puts each new token's heads: [B,T,2,Hkv] indices (k heads, v heads) into kv[l] seen as
        # [rows*N*L, hd] (computed once here, in full, so the scatter itself broadcasts nothing)
        self.index = ((rows[:, None, None] * N + torch.arange(N, device=pos.device)) * L
                      + pos[:, :, None]).unflatten(2, (2, self.n_kv_heads))
        if T > 1:
            return
        # [B] keys each query attends to, written as int32 by the add itself (one kernel, not an add and a cast).
        # A row the sampler has stopped (finished, decoding on until it is collected) reads one key, not its row.
        last = pos[:, 0] if self.stopped is None else pos[:, 0].masked_fill(self.stopped, 0)
        self.lens = torch.add(last, 1, out=torch.empty_like(last, dtype=torch.int32))
        if not self.flash:
            self.mask = (torch.arange(self.attend_len, device=pos.device) < self.lens[:, None])[:, None, None]
            return
        # The flash kernel's variable-length form, one sequence per (row, kv head): sequence s reads keys
        # starting at row cu_k[s] of the cache seen as rows of head_dim (its head's run), lens[s] of them.
        Hkv = self.n_kv_heads
        heads = (rows[:, None] * N + torch.arange(Hkv, device=pos.device)).flatten()  # [B*Hkv]
        self.cu_k = (torch.cat([heads, heads[-1:] + 1]) * L).to(torch.int32)
        self.lens = self.lens.repeat_interleave(Hkv)
        # Its queries (see attend): the G query heads sharing the kv head, as G query tokens when folded,
        # else as G heads of one query token. The calls: ranges of sequences, [start, end) each.
        S = B * Hkv
        many, long = S >= self.fold_from, self.attend_len >= self.split_from
        self.plan_calls(self.call_sizes(S) if many and long else [S], fold=many and not long)

    def plan_calls(self, sizes: list[int], fold: bool):
        """The flash calls `attend` makes: consecutive ranges of `sizes` sequences, `fold`ed or not."""
        starts = [0, *itertools.accumulate(sizes)]
        self.fold, self.calls = fold, list(zip(starts[:-1], starts[1:]))
        G = self.n_heads // self.n_kv_heads if fold else 1  # query tokens per sequence
        self.cu_q = torch.arange(max(sizes) + 1, device=self.kv[0].device, dtype=torch.int32) * G

    def call_sizes(self, S: int) -> list[int]:
        """How many sequences each flash call takes when S long sequences are past the folding point.

        Calls of SMs sequences, which the kernel cuts in two pieces each (one wave of 2 x SMs thread
        blocks), the rest in a last call; unless the kernel would spread that rest over more than one wave
        (it cuts 92 sequences into 5 to 8 pieces) while n equal calls each fit in one: then those. 224
        sequences (7B at 56 rows) run as 2 x 112 rather than 132 + 92: per call 3-9% faster on an H200,
        2-3% on an H100 (bench/explore_chunks.py --rules).
        """
        n = -(-S // self.sms)
        rest, equal = S - (n - 1) * self.sms, [S // n + (i < S % n) for i in range(n)]

        def one_wave(size):
            return size * flash_splits(size, self.sms, self.attend_len, self.head_dim) <= 2 * self.sms

        if not one_wave(rest) and all(map(one_wave, equal)):
            return equal
        return [self.sms] * (n - 1) + [rest]

    def write(self, layer: int, kv: torch.Tensor):
        """Store kv [B,T,2,Hkv,hd] (k heads, v heads) where `prepare` said: one scatter for k and v together."""
        self.kv[layer].view(-1, kv.shape[-1]).index_put_((self.index,), kv)

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """Decode attention: q [B,1,H,hd] -> [B,1,H,hd], each row up to its own position."""
        B, _, H, D = q.shape
        Hkv, G = self.n_kv_heads, H // self.n_kv_heads
        if self.flash:
            # One sequence per (row, kv head): its keys are one contiguous run of the head-major cache, its
            # values Hkv heads further on; its queries are the G query heads sharing the kv head, q [B,H,hd]
            # in its own order (one copy out of the fused qkv from 2 rows on, none at batch 1).
            runs, shift = self.kv[layer].view(-1, 1, D), Hkv * self.max_len
            k, v = runs[:-shift], runs[shift:]
            q = q.reshape(B * Hkv, G, D)
            if self.fold:  # G query tokens of one head: nothing to regroup, and no split at these batch sizes
                y = torch.ops.aten._flash_attention_forward(q.view(B * H, 1, D), k, v, self.cu_q, self.cu_k, G,
                                                            self.attend_len, 0.0, False, False, seqused_k=self.lens)[0]
                return y.view(B, 1, H, D)
            # One query token with G heads: the kernel's decoding path, which splits long rows' keys across
            # thread blocks when the call's sequences alone cannot fill the GPU. It regroups the G heads into
            # G query rows itself; with one kv head per sequence that is a reshape, not a copy (with one
            # sequence per row and Hkv kv heads it cost three copies per layer: explore_kv_head_sequences.py).
            ys = [torch.ops.aten._flash_attention_forward(
                q[a:b], k, v, self.cu_q[: b - a + 1], self.cu_k[a:b + 1], 1, self.attend_len, 0.0, False, False,
                seqused_k=self.lens[a:b])[0] for a, b in self.calls]
            return (ys[0] if len(ys) == 1 else torch.cat(ys)).view(B, 1, H, D)
        # The G query heads that share a kv head are folded into the query length, [B,H,hd] -> [B,Hkv,G,hd],
        # so each cached head is read once instead of being expanded G times.
        kv = self.kv[layer][:, :, : self.attend_len]
        kv = kv[:B] if self.rows is None else kv[self.rows]  # [B,2Hkv,S,hd]
        y = F.scaled_dot_product_attention(q.reshape(B, Hkv, G, D), kv[:, :Hkv], kv[:, Hkv:], attn_mask=self.mask)
        return y.reshape(B, 1, H, D)


def flash_splits(sequences: int, sms: int, max_keys: int, head_dim: int) -> int:
    """Into how many pieces the flash kernel cuts each sequence's keys in a decoding call (one query token
    per sequence, its heads regrouped into query rows, as in KVCache's unfolded calls): the heuristic of
    the FlashAttention-2 code in torch, restated. Each piece is a thread block, and the kernel wants whole
    waves of 2 x SMs of them: none from 0.8 waves of sequences on; else the fewest pieces whose last wave
    is at least 85% as full as the fullest any count gives, among counts that change the key blocks (of
    128 keys at head_dim 128) per piece. tests/test_sample.py checks it against the kernel's launches."""
    if sequences >= flash_unsplit_from(sms):
        return 1
    slots = 2 * sms
    block = 256 if head_dim <= 64 else 128 if head_dim <= 128 else 64
    blocks = -(-max_keys // block)
    counts = [s for s in range(1, min(128, slots, blocks) + 1)
              if s == 1 or -(-blocks // s) != -(-blocks // (s - 1))]

    def fullness(s):  # of the last wave
        waves = sequences * s / slots
        return waves / math.ceil(waves)

    best = max(map(fullness, counts))
    return next(s for s in counts if fullness(s) >= 0.85 * best)


def flash_unsplit_from(sms: int) -> int:
    """The fewest sequences from which one decoding call of the flash kernel no longer splits keys: 0.8
    waves of 2 x SMs thread blocks (212 on 132 SMs). KVCache folds from there; flash_splits returns 1."""
    return math.ceil(0.8 * 2 * sms)


def _flash_attention_usable(t: torch.Tensor) -> bool:
    """The flash kernel runs on Ampere or newer GPUs in half precision."""
    return (t.is_cuda and t.dtype in (torch.float16, torch.bfloat16)
            and torch.backends.cuda.is_flash_attention_available()
            and torch.cuda.get_device_capability(t.device) >= (8, 0))


class Transformer(nn.Module):
    def __init__(self, cfg: Config, column_major: bool = True):
        super().__init__()
        self.cfg = cfg
        # nn.Embedding's own init (normal_) on the meta device, where `load` and sft.py build the model, first
        # imports torch._dynamo in torch 2.13: about a second of every CPU process that loads a model
        # (BENCHMARKS.md). So the table is made here, and drawn (as nn.Embedding draws it) only where it has storage.
        table = torch.empty(cfg.vocab_size, cfg.hidden_size)
        if not table.is_meta:
            nn.init.normal_(table)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=table)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # Tied checkpoints (Qwen2.5 <= 3B, Qwen3 <= 4B) reuse the embedding as the output projection.
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.checkpoint_blocks = False  # training: recompute each block in backward instead of storing it
        # Every matrix column-major: the same [out, in] shape and values, but W.t() is the contiguous one, so
        # cuBLAS multiplies x @ W.t() with its untransposed kernels. A 7B batch-1 decode step runs 2.7-4.2% faster
        # on an H100 and the same on an H200 (BENCHMARKS.md, "Why column-major matrices"). `load` keeps each
        # parameter's layout. FSDP2 shards only contiguous parameters, so sft.py passes column_major=False.
        linears = [mod for mod in self.modules() if isinstance(mod, nn.Linear)] if column_major else []
        for mod in linears:
            mod.weight = nn.Parameter(mod.weight.detach().t().contiguous().t())

    @property
    def output_weight(self) -> torch.Tensor:  # [V, H]
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def hidden(self, ids, cache: KVCache | None = None, pos=None, rows=None):
        """Final normalised hidden states [B,T,H], before the lm_head.

        ids [B,T]. Without a cache, positions are 0..T-1. With a cache, pos [B,T] gives each token's
        position in its row and rows [B] the cache rows a prefill fills (the sampler's business; see KVCache).
        """
        B, T = ids.shape
        if pos is None:
            pos = torch.arange(T, device=ids.device).expand(B, T)
        x = self.embed(ids)  # [B,T,H]
        # The rotation, computed once per forward and shared by every layer: for a decode step of a few rows,
        # a matrix per row (one matmul per layer instead of three elementwise kernels); else the tables, which
        # move less memory per row (bench/explore_rope_matmul.py: the matmul wins up to 64 rows, loses from 128).
        if cache is not None and T == 1 and B <= ROPE_MATRIX_ROWS:
            rope = rope_matrix(pos, self.cfg, x.dtype)
        else:
            rope = rope_cos_sin(pos, self.cfg, x.dtype)
        if cache is not None:
            cache.prepare(pos, rows)
        for block in self.layers:
            if self.checkpoint_blocks and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope, cache)
        return self.norm(x)

    def logits(self, h):
        return F.linear(h, self.output_weight)  # [.., H] -> [.., V]

    def forward(self, ids, cache: KVCache | None = None, pos=None, rows=None):
        """ids [B,T] -> logits [B,T,V]."""
        return self.logits(self.hidden(ids, cache, pos, rows))


# ----------------------------------------------------------------------------------------------
# Checkpoint I/O: official Hugging Face folders

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def key_map(cfg: Config) -> dict[str, tuple[str, int, int]]:
    """Hugging Face tensor name -> (our parameter, first row, end row). The one place the namings meet.

    q_proj, k_proj and v_proj fill consecutive rows of our attn.qkv, gate_proj and up_proj those of
    mlp.gate_up (one matmul each); every other tensor fills a whole parameter.
    """
    q, kv, inter = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.intermediate_size
    m = {"model.embed_tokens.weight": ("embed.weight", 0, cfg.vocab_size),
         "model.norm.weight": ("norm.weight", 0, cfg.hidden_size)}
    if not cfg.tie_word_embeddings:
        m["lm_head.weight"] = ("lm_head.weight", 0, cfg.vocab_size)
    for i in range(cfg.n_layers):
        hf, me = f"model.layers.{i}.", f"layers.{i}."
        m[hf + "input_layernorm.weight"] = (me + "attn_norm.weight", 0, cfg.hidden_size)
        m[hf + "post_attention_layernorm.weight"] = (me + "mlp_norm.weight", 0, cfg.hidden_size)
        parts = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
        for p, (start, stop) in parts.items():
            m[hf + f"self_attn.{p}_proj.weight"] = (me + "attn.qkv.weight", start, stop)
            if cfg.qkv_bias:
                m[hf + f"self_attn.{p}_proj.bias"] = (me + "attn.qkv.bias", start, stop)
        m[hf + "self_attn.o_proj.weight"] = (me + "attn.o.weight", 0, cfg.hidden_size)
        if cfg.qk_norm:
            m[hf + "self_attn.q_norm.weight"] = (me + "attn.q_norm.weight", 0, cfg.head_dim)
            m[hf + "self_attn.k_norm.weight"] = (me + "attn.k_norm.weight", 0, cfg.head_dim)
        m[hf + "mlp.gate_proj.weight"] = (me + "mlp.gate_up.weight", 0, inter)
        m[hf + "mlp.up_proj.weight"] = (me + "mlp.gate_up.weight", inter, 2 * inter)
        m[hf + "mlp.down_proj.weight"] = (me + "mlp.down.weight", 0, cfg.hidden_size)
    return m


class InputError(ValueError):
    """Something the user gave is wrong (a file, a row, a field of either); the message names it and says why.
    The command lines end on it with that one line (`data.run_cli`), as argparse ends on a bad flag; any other
    exception is a bug and keeps its traceback. Raised here and in data, sft and eval; a ValueError to callers."""


class MissingInput(InputError, FileNotFoundError):
    """An input file or folder that is not there (a FileNotFoundError too)."""


def read_text(path) -> str:
    """The UTF-8 text of file `path` (a checkpoint's, a run's or a data file: data.py reads through it too); no file
    there, a folder, or bytes that are not UTF-8 are errors naming the path."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise MissingInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not a file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte offset {e.start}: {e.reason})") from None


class DuplicateKey(ValueError):
    """A JSON object that names a key twice (json.loads alone keeps the last value and drops the others unsaid)."""


def _one_value_per_key(pairs: list) -> dict:
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(f"key {key!r} appears twice in one object; which value was meant is unclear")
        obj[key] = value
    return obj


def json_loads(text):
    """json.loads, with a key given twice in one object an error (DuplicateKey) instead of a silent last-one-wins."""
    return json.loads(text, object_pairs_hook=_one_value_per_key)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _duplicate_row(text: str) -> str:
    """The ":k" of "file:k" when the key json_loads(text) found twice lies in the k-th element (from 1) of a
    top-level array, as in a .json file of rows; "" when the top level is an object. The hook that finds the key
    cannot see which element it is in, so this parses the elements one by one again (only on that error).

    >>> _duplicate_row('[{"a": 1},\\n {"b": [{"c": 2, "c": 3}]}]'), _duplicate_row('{"a": 1, "a": 2}')
    (':2', '')
    """
    i = _JSON_SPACE.match(text).end()
    if not text.startswith("[", i):
        return ""
    decoder = json.JSONDecoder(object_pairs_hook=_one_value_per_key)
    for k in itertools.count(1):
        i = _JSON_SPACE.match(text, i + 1).end()  # past the "[" or the "," before element k
        try:
            _, i = decoder.raw_decode(text, i)
        except DuplicateKey:
            return f":{k}"
        i = _JSON_SPACE.match(text, i).end()


def read_json(path, kind: type = dict):
    """The JSON value of file `path`, which must be a `kind` (dict: an object, list: an array); a file that is
    not UTF-8, not JSON or not a `kind` is an error naming it (json's own errors name no file).

    Example: a config.json cut short -> InputError("MODEL/config.json: not valid JSON (Expecting value: line 2 ...)")
    """
    return parse_json(read_text(path), path, kind)


def parse_json(text: str, path, kind: type = dict):
    """read_json of `text`, the contents of file `path` as read_text read them (or of one JSONL line, `path` then
    naming the line; kind=object takes any JSON value)."""
    try:
        value = json_loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    except DuplicateKey as e:  # in an array of rows, named by its row as read_rows names rows
        raise InputError(f"{path}{_duplicate_row(text)}: {e}") from None
    if not isinstance(value, kind):
        raise InputError(f"{path}: expected a JSON {_JSON_TYPES[kind]}, got a JSON {_JSON_TYPES[type(value)]}")
    return value


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def read_generation_config(path) -> dict | None:
    """A model folder's generation_config.json (stop ids, sampling defaults), None if it has none."""
    gen = Path(path) / "generation_config.json"
    return read_json(gen) if gen.is_file() else None


def load_config(path) -> Config:
    path = Path(path)
    f = path / "config.json"
    if not f.is_file():
        raise MissingInput(f"{path}: no config.json (expected a Hugging Face model folder){run_folder_hint(path)}")
    try:
        return Config.from_hf(read_json(f), where=str(f))
    except InputError as e:
        if hint := run_folder_hint(path):
            raise InputError(f"{e}{hint}") from None
        raise


def run_folder_hint(path) -> str:
    """For an error about a folder that is not a model: where the model is, when the folder is an sft run's (its
    Hugging Face export is in hf/), else ''."""
    export = Path(path) / "hf"
    return f"; {path} is a training run's folder, whose model is {export}" if (export / "config.json").is_file() else ""


def checkpoint_files(path) -> dict[str, Path]:
    """HF tensor name -> the .safetensors file holding it (single file, or sharded with an index)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index}: no 'weight_map'")
        if bad := [k for k, v in weight_map.items() if not (isinstance(v, str) and v)]:
            raise InputError(f"{index}: weight_map should give each tensor a shard file name, got "
                             f"{weight_map[bad[0]]!r} for {bad[0]!r}")
        files = {name: path / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise MissingInput(f"{index} names shard {shard.name}, which is missing from {path}")
        return files
    single = path / "model.safetensors"
    if not single.is_file():
        raise MissingInput(f"{path}: neither model.safetensors nor model.safetensors.index.json")
    with _open_safetensors(single) as f:
        return {name: single for name in f.keys()}


def _open_safetensors(file: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt")  # memory-mapped: tensors are read one at a time
    except Exception as e:  # safetensors raises its own error types for a bad header or short file
        raise InputError(f"{file}: not a readable safetensors file ({e})") from None


def read_tensors(path, cfg: Config, rows=None):
    """Yield (our_name, hf_name, tensor, row) for every checkpoint tensor: `tensor` fills rows
    row .. row + len(tensor) of our parameter `our_name`. Names and shapes are checked.

    Every tensor in the checkpoint must map to a parameter and every parameter must be present.
    `rows(our_name) -> (start, stop)` makes a caller (an FSDP rank) read only the part of each tensor
    that falls in those rows of the parameter, from the memory-mapped file; the completeness, dtype and
    shape checks still cover the whole checkpoint. A tied checkpoint's extra lm_head.weight comes with
    our_name None.
    """
    path = Path(path)
    files = checkpoint_files(path)
    kmap = key_map(cfg)
    params = expected_shapes(cfg)
    tied_extra = cfg.tie_word_embeddings and "lm_head.weight" in files
    unknown = [n for n in files if n not in kmap and not (tied_extra and n == "lm_head.weight")]
    if unknown:
        raise InputError(f"{path}: checkpoint tensor {unknown[0]!r} has no place in a {cfg.arch} model"
                         f" ({len(unknown)} unused tensors: {unknown[:5]})")
    missing = [n for n in kmap if n not in files]
    if missing:
        raise InputError(f"{path}: checkpoint lacks tensor {missing[0]!r} ({len(missing)} missing: {missing[:5]})")
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with _open_safetensors(file) as f:
            present = set(f.keys())
            for hf_name in names:
                if hf_name not in present:
                    raise InputError(f"{file}: the index places {hf_name!r} here but the file lacks it")
                # (a tied checkpoint's extra lm_head.weight is checked as the embedding it must equal)
                ours, start, stop = kmap.get(hf_name, ("embed.weight", 0, cfg.vocab_size))
                expected = (stop - start, *params[ours][1:])
                sl = f.get_slice(hf_name)
                dtype, shape = sl.get_dtype(), tuple(sl.get_shape())
                if dtype not in ("F32", "BF16", "F16"):
                    raise InputError(f"{file}: tensor {hf_name!r} has dtype {dtype}; only F32, BF16, F16 load")
                if shape != expected:
                    raise InputError(f"{file}: tensor {hf_name!r} has shape {shape}, expected {expected}")
                lo, hi = start, stop  # the rows of our parameter to read, within this tensor's
                if rows is not None and hf_name in kmap:
                    a, b = rows(ours)
                    lo = min(max(start, a), stop)
                    hi = max(min(stop, b), lo)
                try:
                    t = f.get_tensor(hf_name) if (lo, hi) == (start, stop) else sl[lo - start : hi - start]
                except Exception as e:
                    raise InputError(f"{file}: cannot read tensor {hf_name!r} ({e})") from None
                yield (ours if hf_name in kmap else None), hf_name, t, lo


def expected_shapes(cfg: Config) -> dict[str, tuple]:
    with torch.device("meta"):
        model = Transformer(cfg)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def default_device() -> str:
    """What a script runs on when no --device is given: the current GPU if there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def checked_device(device, hint: str = "") -> torch.device:
    """torch.device(device), or, for a GPU this process cannot see, an error naming it and how many it sees
    (CUDA's own is "invalid device ordinal", raised by the first tensor placed there), then `hint`. Devices
    other than the CPU and CUDA GPUs, which this code is written and tested for, are refused by name."""
    try:
        checked = torch.device(device)
    except RuntimeError:  # torch's own message lists its twenty device types
        checked = None
    if checked is None or checked.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device}: expected cuda, cuda:N or cpu")
    device = checked
    if device.type != "cuda":
        return device
    n = torch.cuda.device_count()
    if (device.index or 0) >= n:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ValueError(f"device {device}: this process sees {n} GPU{'' if n == 1 else 's'}"
                         + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
                         + (f"; {hint}" if hint else ""))
    return device


def local_gpu(local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK, the GPU of one torchrun process on its node, checked like any device."""
    return checked_device(f"cuda:{local_rank}", "torchrun starts one process per GPU (--nproc_per_node at most "
                                                "the GPUs of a node)")


def load(path, device="cpu", dtype: torch.dtype | None = torch.bfloat16) -> Transformer:
    """Load a Hugging Face Qwen2/Qwen3 folder. dtype None keeps the checkpoint's own dtype.

    The model is built on the meta device (no memory), then each tensor is copied from the memory-mapped file
    into one laid out as its parameter is (matrices column-major), converting its dtype on the way: peak memory
    is one copy of the weights plus one tensor.
    """
    device = checked_device(device)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"load: dtype must be a floating-point torch.dtype (torch.bfloat16, torch.float32, ...) or "
                        f"None for the checkpoint's own, got {dtype!r}")
    cfg = load_config(path)
    with torch.device("meta"):
        model = Transformer(cfg)
    params = dict(model.named_parameters())
    state, tied = {}, None
    for ours, _, t, row in read_tensors(path, cfg):
        if ours is None:  # tied checkpoint that also stores lm_head.weight: it must be the embedding
            tied = t.to(device=device, dtype=dtype or t.dtype)
            continue
        if ours not in state:  # laid out as the parameter is (matrices column-major: Transformer)
            state[ours] = torch.empty_like(params[ours], device=device, dtype=dtype or t.dtype)
        state[ours][row : row + len(t)] = t  # the whole tensor, or one part of a fused one (q of qkv, ...)
    if tied is not None and not torch.equal(tied, state["embed.weight"]):
        raise InputError(f"{path}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
    assert state.keys() == params.keys(), set(state) ^ set(params)
    model.load_state_dict(state, assign=True, strict=True)
    if dtype is not None:
        cfg.dtype = {v: k for k, v in _DTYPES.items()}.get(dtype, cfg.dtype)
    model.generation_config = read_generation_config(path)
    return model


def save(model: Transformer, path, max_shard_bytes: int = 5 * 2**30, state_dict=None,
         generation_config: dict | None = None, copy_files_from=None):
    """Write a Hugging Face folder: config.json, model-0000i-of-0000n.safetensors + index,
    generation_config.json (when known), and tokenizer files copied from `copy_files_from`.

    Atomic: everything is written into a temporary sibling folder that is renamed into place at the
    end, so an interrupted save never leaves a half-written checkpoint under `path`. `state_dict`
    (our names, full tensors) lets a distributed caller pass tensors it has gathered.
    """
    from safetensors.torch import save_file

    if not isinstance(max_shard_bytes, int) or isinstance(max_shard_bytes, bool) or max_shard_bytes < 1:
        raise ValueError(f"save: max_shard_bytes must be an integer >= 1, got {max_shard_bytes!r}")
    path = Path(path)
    if path.exists():  # replaced whole below: only ever a checkpoint folder, never one holding other work
        if not path.is_dir():
            raise FileExistsError(f"save: {path} is a file, not a checkpoint folder")
        other = sorted(f.name for f in path.iterdir() if not _checkpoint_file(f))
        if other:
            raise FileExistsError(f"save: {path} holds {other[:5]}, which are not checkpoint files; saving would "
                                  f"replace the folder, so choose a new or empty one")
    if copy_files_from is not None:  # a folder without them would leave the checkpoint without its tokenizer
        src = Path(copy_files_from)
        if not src.is_dir() or not any((src / name).is_file() for name in TOKENIZER_FILES):
            raise FileNotFoundError(f"save: copy_files_from {src} is not a folder holding tokenizer files "
                                    f"({', '.join(TOKENIZER_FILES)})")
    cfg = model.cfg
    sd = state_dict if state_dict is not None else model.state_dict()
    kmap = key_map(cfg)
    unknown = sorted(set(sd) - {ours for ours, _, _ in kmap.values()})
    if unknown:
        raise ValueError(f"save: parameter {unknown[0]!r} has no Hugging Face name")
    lacking = sorted({ours for ours, _, _ in kmap.values()} - set(sd))
    if lacking:
        raise ValueError(f"save: state_dict lacks {lacking[:5]}")
    tensors = {hf: sd[ours][start:stop].detach().to("cpu").contiguous() for hf, (ours, start, stop) in kmap.items()}
    dtype = {t.dtype for t in tensors.values()}
    dtype_name = {v: k for k, v in _DTYPES.items()}[dtype.pop()] if len(dtype) == 1 else cfg.dtype

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        # Greedy sharding in key order, as the official writer does.
        shards, current, size = [], {}, 0
        for name in sorted(tensors, key=_hf_order):
            nbytes = tensors[name].numel() * tensors[name].element_size()
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name] = tensors[name]
            size += nbytes
        shards.append(current)
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
            for name, t in shard.items():
                weight_map[name] = fname
                total += t.numel() * t.element_size()
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        hf = cfg.to_hf()
        hf["torch_dtype"] = dtype_name
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        gen = generation_config if generation_config is not None else getattr(model, "generation_config", None)
        if gen:
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if copy_files_from is not None:
            for name in TOKENIZER_FILES:
                src = Path(copy_files_from) / name
                if src.is_file():
                    shutil.copy2(src, tmp / name)
        for f in tmp.iterdir():  # make the data durable before the rename publishes it
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "vocab.json", "merges.txt",
                   "special_tokens_map.json")


def _checkpoint_file(f: Path) -> bool:
    """A file that `save` writes (so replacing a folder of only these loses nothing but a checkpoint)."""
    return f.is_file() and (f.name in ("config.json", "generation_config.json", "model.safetensors.index.json")
                            or f.name in TOKENIZER_FILES or re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors", f.name))


def _hf_order(name: str):
    """Sort key: embeddings, layers in numeric order, final norm, lm_head."""
    parts = name.split(".")
    if parts[:2] == ["model", "layers"]:
        return (1, int(parts[2]), name)
    return (0 if "embed" in name else 2, 0, name)


def _replace_dir(new: Path, path: Path):
    """Publish folder `new` under `path`. An existing `path` is moved aside first and removed only after."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.rename(path, old)
    os.rename(new, path)
    if old is not None:
        shutil.rmtree(old)

