"""Stage 1 of RM-R1: supervised fine-tuning on distilled judge traces, with FSDP2.

    torchrun --nproc_per_node=8 sft.py --model Qwen2.5-7B-Instruct --data sft.jsonl --out runs/sft
    python sft.py --model DIR --data sft.jsonl --out runs/sft          # one process: GPU or CPU
    python sft.py ... --resume                                          # continue from runs/sft/state

Each optimizer step takes `global_batch` sequences (in a seeded shuffled order), deals them to the ranks,
packs each rank's share into length-grouped micro-batches under a token budget, and accumulates

    loss = mean over the global batch of (each sequence's token-mean NLL on its assistant tokens)

exactly, for any number of ranks and micro-batches (SPEC section 4). FSDP2 shards every block and the
root; parameters and optimizer state stay float32, compute runs in bf16, gradients reduce in float32.
Outputs in --out: config.json, metrics.jsonl, hf/ (a Hugging Face folder), state/ (resumable, DCP).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import model as M
from rubrics import judge_messages, reward

# ----------------------------------------------------------------------------------------------
# Defaults (each field is a command-line flag)


@dataclass
class SFTConfig:
    model: str = ""  # Hugging Face folder to start from
    data: str = ""  # JSONL/JSON/Parquet rows: context_messages, winner, and the target trace ("response")
    out: str = "runs/sft"  # run folder: config.json, metrics.jsonl, hf/, state/
    max_len: int = 12288  # rows whose prompt or whole sequence is longer are dropped (counted), never cut
    global_batch: int = 128  # sequences per optimizer step
    micro_tokens: int = 16384  # padded tokens per micro-batch on one rank (a longer row runs alone, never cut)
    epochs: int = 1  # passes over the data
    lr: float = 5e-6  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_ratio: float = 0.03  # warmup steps = ceil(ratio * total steps)
    beta1: float = 0.9  # AdamW betas
    beta2: float = 0.95  # AdamW betas
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # clip the global gradient norm to this
    activation_checkpointing: bool = True  # recompute each block in backward (less memory, ~1/3 more compute)
    compute_dtype: str = "bfloat16"  # float32 for exact CPU tests
    loss_chunk: int = 1024  # tokens per chunk of the log-prob computation
    seed: int = 0  # order of the rows
    save_every: int = 0  # optimizer steps between training-state saves (0: only at the end)
    max_steps: int = 0  # stop after this many steps (0: all epochs)
    resume: bool = False  # continue the run saved in --out
    peak_tflops: float = 989.0  # per device, for MFU (bf16 dense H100/H200 datasheet)


def parse_args(argv=None) -> SFTConfig:
    return SFTConfig(**vars(data.config_parser(SFTConfig, __doc__).parse_args(argv)))


def check_config(cfg: SFTConfig):
    """Each setting in its range, --max-len within the model's positions (its config.json) and the model's weight
    files present, before any work."""
    bounds = {"max_len": (1, None), "global_batch": (1, None), "micro_tokens": (1, None), "epochs": (1, None),
              "loss_chunk": (1, None), "save_every": (0, None), "max_steps": (0, None), "min_lr_ratio": (0, 1),
              "warmup_ratio": (0, 1), "weight_decay": (0, None), "seed": (0, 2**63 - 1)}  # (torch.manual_seed's)
    for name, (lo, hi) in bounds.items():
        v = getattr(cfg, name)
        if not math.isfinite(v) or v < lo or (hi is not None and v > hi):
            allowed = (f"in [{lo}, {hi}]" if hi is not None else f"a finite number >= {lo}" if isinstance(v, float)
                       else f">= {lo}")
            raise SystemExit(f"--{name.replace('_', '-')} must be {allowed}, got {v}")
    for name in ("lr", "grad_clip", "peak_tflops"):
        if not math.isfinite(getattr(cfg, name)) or getattr(cfg, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(cfg, name)}")
    for name in ("beta1", "beta2"):  # AdamW's own range: a beta of 1 never forgets the first gradient
        if not 0 <= getattr(cfg, name) < 1:
            raise SystemExit(f"--{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.compute_dtype not in ("bfloat16", "float32"):
        raise SystemExit(f"--compute-dtype must be bfloat16 or float32, got {cfg.compute_dtype!r}")
    limit = M.load_config(cfg.model).max_position_embeddings  # config.json only, before any weights or rows
    if cfg.max_len > limit:  # sequences that long would run past the positions the model was trained on
        raise SystemExit(f"--max-len {cfg.max_len} is over the model's max_position_embeddings, {limit} "
                         f"({Path(cfg.model) / 'config.json'}): pass --max-len {limit} or less")
    M.checkpoint_files(cfg.model)  # the weight files are there (headers only), before anything is written


# settings that decide a run's trajectory: --resume must keep them (max_steps, save_every, micro_tokens,
# loss_chunk and activation_checkpointing may change: they decide where it stops, or memory and speed)
SAME_ON_RESUME = ("model", "data", "max_len", "global_batch", "epochs", "lr", "min_lr_ratio", "warmup_ratio",
                  "beta1", "beta2", "weight_decay", "grad_clip", "compute_dtype", "seed")


def check_out(cfg: SFTConfig, data_sha256: str) -> int:
    """A new run needs a folder without one; --resume needs the settings (and data) the run was started with, and
    its saved state. Returns the step to start from (0 for a new run)."""
    out = data.run_folder(cfg.out)
    saved = data.run_config(out, {"global_batch"}, "an SFT run", {"model": str, "data": str, "data_sha256": str})
    there = [p.name for p in (out / "state", out / "metrics.jsonl") if p.exists()]
    if not cfg.resume:
        if there:
            raise SystemExit(f"{out} holds a run ({', '.join(there)}): pass --resume to continue it, "
                             f"or use another --out")
        return 0
    if saved is not None:
        now = {**asdict(cfg), "data_sha256": data_sha256}  # the rows too, not only their path
        keys = SAME_ON_RESUME + ("data_sha256",) if "data_sha256" in saved else SAME_ON_RESUME  # older runs lack it
        diff = data.changed_settings(saved, now, keys)
        if diff:
            raise SystemExit(f"{out / 'config.json'}: the run was started with other settings ({'; '.join(diff)}); "
                             f"resume with those, or start a new run in another --out")
    return saved_step(out)  # before anything is written: a --resume with nothing to resume leaves the folder alone


def saved_step(out: Path) -> int:
    """The step of the training state saved in out/state (its progress.json, written last), or an error saying
    what is wrong, or where the state may be: a save cut off between setting the old state aside and renaming the
    new one leaves it aside."""
    path = out / "state"
    if not (path / "progress.json").is_file():
        aside = sorted(out.glob(".state.old-*"))
        hint = (f"; {aside[0]} is the previous state, set aside by a save that was cut off: rename it to {path}"
                if aside else "")
        raise M.MissingInput(f"{path}: no training state to resume from{hint}")
    step = M.read_json(path / "progress.json").get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise M.InputError(f"{path / 'progress.json'}: 'step' should be a whole number >= 0, got {step!r}")
    return step


def file_sha256(path) -> str:
    """The data file's fingerprint, saved with the run: a resumed run must read the same rows."""
    h = hashlib.sha256()
    with open(data.data_file(path), "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Data: tokenize, mask, batch


def training_rows(pairs: list[data.Pair], variant: str = "instruct") -> list[dict]:
    """Pairs -> RM-R1 training rows {"context_messages", "winner"} with alternating positions (pair k has the
    chosen answer at A iff k is even), the rows `load_rows` reads once a trace is added as "response".

    >>> q = [{"role": "user", "content": "2+2?"}]
    >>> rows = training_rows([data.Pair("1", q, "4", "5"), data.Pair("2", q, "4", "5")])
    >>> [r["winner"] for r in rows], [m["role"] for m in rows[0]["context_messages"]]
    (['model_a', 'model_b'], ['system', 'user'])
    >>> [user["content"].index("4") < user["content"].index("5") for _, user in (r["context_messages"] for r in rows)]
    [True, False]
    """
    rows = []
    for p, at in data.place(pairs, "alternate"):
        a, b = p.conversations(at)
        rows.append({"context_messages": judge_messages(a, b, variant),
                     "winner": "model_a" if at == "A" else "model_b"})
    return rows


def tokenize_row(tok: data.Tokenizer, messages: list[dict], target: str) -> tuple[list[int], list[int]]:
    """ids and loss mask of chat_template(messages + [assistant: target]).

    The mask is 1 on every token after the prompt up to and including the assistant's closing EOS: the
    header "<|im_start|>assistant\\n", the trace, and "<|im_end|>" (not the template's trailing "\\n").

    Example: [..system.., ..user.., <|im_start|> assistant \\n  <type> ... </answer> <|im_end|> \\n]
             [    0    ..     0   ,      1        1       1       1   ...     1          1      0 ]
    """
    return tokenize_rows(tok, [(messages, target)])[0]


def tokenize_rows(tok: data.Tokenizer, rows: list[tuple[list[dict], str]],
                  names: list[str] | None = None) -> list[tuple[list[int], list[int]]]:
    """tokenize_row of each (messages, target), all encoded by one Tokenizer.encode_chats call (the prompt and the
    prompt + target of every row). names: what an error calls each row."""
    conversations = [c for messages, target in rows
                     for c in (messages, [*messages, {"role": "assistant", "content": target}])]
    encoded = tok.encode_chats(conversations, names=None if names is None else [n for n in names for _ in range(2)])
    out = []
    for k in range(len(rows)):
        try:
            out.append(mask_row(tok, encoded[2 * k], encoded[2 * k + 1]))
        except ValueError as e:
            raise M.InputError(f"{names[k]}: {e}" if names else str(e)) from None
    return out


def mask_row(tok: data.Tokenizer, prompt: list[int], ids: list[int]) -> tuple[list[int], list[int]]:
    """tokenize_row's ids and mask from the encoded prompt and the encoded prompt + answer."""
    if ids[: len(prompt)] != prompt:
        raise M.InputError("the chat template renders the prompt differently once the answer is appended")
    ends = [k for k in range(len(prompt), len(ids)) if ids[k] in tok.eos_ids]
    if not ends:
        raise M.InputError("the rendered answer has no EOS token")
    mask = [0] * len(ids)
    for k in range(len(prompt), ends[-1] + 1):
        mask[k] = 1
    return ids, mask


def load_rows(cfg: SFTConfig, tok: data.Tokenizer) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict]:
    """Tokenized (ids, mask) rows as int32 and bool tensors, and what was dropped for length: counts and row
    numbers (as in errors: from 1, a JSONL row's line). Rows whose trace does not end in its winner's verdict (the
    GRPO reward's rule) are trained on as given, and their row numbers listed."""
    rows, too_long_prompt, too_long, off_winner = [], [], [], []
    read = data.read_rmr1_training(cfg.data)
    if not read:
        raise M.InputError(f"{cfg.data}: no rows")
    for r in read:
        if r["target"] is None:
            raise M.InputError(f"{r['where']}: SFT rows need the target trace ('response' or 'completion')")
    for start in range(0, len(read), 512):  # encoded in batches; each row's prompt ids are dropped once it is masked
        chunk = read[start:start + 512]
        for r, (ids, mask) in zip(chunk, tokenize_rows(tok, [(r["messages"], r["target"]) for r in chunk],
                                                       [r["where"] for r in chunk])):
            number = int(r["where"].rpartition(":")[2])  # "rows.jsonl:7" -> 7
            if reward(r["target"], r["label"]) != 1:  # its last 80 characters hold no verdict, or the other one
                off_winner.append(number)
            if len(ids) - sum(mask) >= cfg.max_len:
                too_long_prompt.append(number)
            elif len(ids) > cfg.max_len:
                too_long.append(number)
            else:  # int32 and bool: 5 bytes a token on every rank (as Python lists, about 44)
                rows.append((torch.tensor(ids, dtype=torch.int32), torch.tensor(mask, dtype=torch.bool)))
    if not rows:
        raise M.InputError(f"{cfg.data}: no rows left within max_len={cfg.max_len}")
    return rows, {"rows": len(rows), "dropped_prompt_too_long": len(too_long_prompt), "dropped_too_long": len(too_long),
                  "rows_dropped_prompt_too_long": too_long_prompt, "rows_dropped_too_long": too_long,
                  "rows_whose_trace_does_not_end_in_the_winner": off_winner}


def step_batches(n_rows: int, cfg: SFTConfig) -> list[list[int]]:
    """Row indices of every optimizer step: each epoch a seeded shuffle cut into global batches (a last
    short batch is kept; nothing is dropped)."""
    steps = []
    for epoch in range(cfg.epochs):
        order = list(range(n_rows))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        steps += [order[k:k + cfg.global_batch] for k in range(0, n_rows, cfg.global_batch)]
    return steps


def describe_steps(steps: list[list[int]], global_batch: int) -> str:
    """How many optimizer steps `step_batches` made, and of what size, for the run's summary line.

    >>> describe_steps(step_batches(16, SFTConfig(global_batch=6)), 6)
    '3 steps of 6 (the last of 4)'
    >>> describe_steps(step_batches(16, SFTConfig(global_batch=6, epochs=2)), 6)
    "6 steps of 6 (each epoch's last of 4)"
    >>> describe_steps(step_batches(16, SFTConfig(global_batch=16)), 16)
    '1 step of 16'
    >>> describe_steps(step_batches(16, SFTConfig(global_batch=32, epochs=2)), 32)
    '2 steps of all 16 rows (fewer than --global-batch 32)'
    """
    short = [len(b) for b in steps if len(b) < global_batch]  # each epoch's last step takes the rest
    says = f"{len(steps)} step{'s' if len(steps) > 1 else ''} of"
    if len(short) == len(steps):  # fewer rows than --global-batch: each epoch is one step of all of them
        return says + f" all {short[0]} rows (fewer than --global-batch {global_batch})"
    which = "the" if len(short) == 1 else "each epoch's"
    return says + f" {global_batch}" + (f" ({which} last of {short[0]})" if short else "")


def micro_batches(idx: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Pack rows into micro-batches of similar length whose padded size (rows x longest) fits the budget.

    >>> micro_batches([0, 1, 2, 3], [10, 300, 12, 290], budget=600)
    [[1, 3], [2, 0]]
    >>> micro_batches([0, 1], [700, 10], budget=600)  # a row over the budget runs alone
    [[0], [1]]
    """
    order = sorted(idx, key=lambda i: -lengths[i])
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[cur[0]] > budget:
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


def collate(rows, idx, device):
    """Right-padded ids, next-token targets and loss mask, each [B, T-1]."""
    T = max(len(rows[i][0]) for i in idx)
    ids = torch.zeros(len(idx), T, dtype=torch.long)
    mask = torch.zeros(len(idx), T, dtype=torch.bool)
    for r, i in enumerate(idx):
        ids[r, : len(rows[i][0])] = rows[i][0]
        mask[r, : len(rows[i][1])] = rows[i][1]
    # position t predicts token t+1; the loss mask belongs to the predicted token
    return ids[:, :-1].to(device), ids[:, 1:].to(device), mask[:, 1:].to(device)


# ----------------------------------------------------------------------------------------------
# The loss: pure functions


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   chunk: int = 1024) -> torch.Tensor:
    """log p(targets) [B,T] from final hidden states [B,T,H] and the output projection [V,H].

    Computed `chunk` tokens at a time, each chunk's [chunk, V] float32 logits recomputed in backward
    (checkpointed), so no [B*T, V] tensor ever exists (152k vocabulary x 12k tokens would be 7 GB).
    """
    B, T, H = hidden.shape
    h, t = hidden.reshape(B * T, H), targets.reshape(B * T)

    def piece(h_c, t_c, w):
        logits = F.linear(h_c, w).float()  # [chunk, V]
        return -F.cross_entropy(logits, t_c, reduction="none")  # [chunk]

    out = [torch.utils.checkpoint.checkpoint(piece, h[s:s + chunk], t[s:s + chunk], weight, use_reentrant=False)
           for s in range(0, B * T, chunk)]
    return torch.cat(out).view(B, T).clone()  # not a view: FSDP hooks the output for backward


def sequence_nll_sum(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over sequences of each sequence's token-mean NLL. logp, mask [B,T] -> scalar.

    The caller divides by the global batch size, so micro-batching and ranks do not change the loss.
    """
    n = mask.sum(1).clamp(min=1)  # [B] loss tokens per sequence
    return (-(logp * mask).sum(1) / n).sum()


def lr_at(step: int, total: int, cfg: SFTConfig) -> float:
    """Linear warmup over ceil(warmup_ratio * total) steps, then cosine from lr to lr * min_lr_ratio."""
    warm = math.ceil(cfg.warmup_ratio * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class LogProbs(torch.nn.Module):
    """The model plus its token log-probs as one forward, so that FSDP's root unit (the embedding, final
    norm and output projection) is gathered around the whole computation, chunked head included."""

    def __init__(self, model: M.Transformer, chunk: int):
        super().__init__()
        self.model, self.chunk = model, chunk

    def forward(self, ids, targets):  # [B,T], [B,T] -> log p(targets) [B,T] float32
        h = self.model.hidden(ids)
        return token_logprobs(h, self.model.output_weight, targets, self.chunk)


# ----------------------------------------------------------------------------------------------
# Distributed setup and the sharded model


def setup_distributed():
    """Process group from torchrun's environment; a one-process group otherwise, whose store is in memory (no port
    to take, and nothing written to the environment that a process started from this one would inherit). NCCL on
    GPU, gloo on CPU."""
    cuda = torch.cuda.is_available()
    device = torch.device("cpu")
    if cuda:  # one GPU per process: cuda:LOCAL_RANK
        device = M.local_gpu(int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        alone = {} if "RANK" in os.environ else {"store": dist.HashStore(), "rank": 0, "world_size": 1}
        # device_id: the GPU this rank's barriers run on
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None, **alone)
    return dist.get_rank(), dist.get_world_size(), device


def shard(mcfg: M.Config, cfg: SFTConfig, device) -> LogProbs:
    """The model built on the meta device and FSDP2-sharded: each block, then the root (embedding, final
    norm, output projection and the log-prob head); storage allocated for this rank's shards only."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    with torch.device("meta"):
        model = M.Transformer(mcfg, column_major=False)  # FSDP2 shards contiguous (row-major) parameters only
    model.checkpoint_blocks = cfg.activation_checkpointing
    mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.compute_dtype), reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mp_policy=mp)
    root = LogProbs(model, cfg.loss_chunk)
    fully_shard(root, mp_policy=mp)
    root.to_empty(device=device)
    return root


def build_model(cfg: SFTConfig, device) -> LogProbs:
    """`shard`, then each rank reads only its rows of every checkpoint tensor from the memory-mapped
    files (a model larger than one GPU is never whole on one device). Parameters stay float32."""
    mcfg = M.load_config(cfg.model)
    root = shard(mcfg, cfg, device)
    model = root.model
    params = dict(model.named_parameters())
    rank, world = dist.get_rank(), dist.get_world_size()

    def rows(name):  # FSDP2 shards dim 0 in chunks of ceil(N / world)
        n = params[name].shape[0]
        start = min(n, rank * math.ceil(n / world))
        return start, start + params[name].to_local().shape[0]

    filled = {name: 0 for name in params}  # rows of each local shard written so far
    for ours, _, t, row in M.read_tensors(cfg.model, mcfg, rows=rows):
        if ours is None:
            continue  # a tied checkpoint's duplicate lm_head.weight
        local = params[ours].to_local()
        start = rows(ours)[0]
        with torch.no_grad():
            local[row - start : row - start + len(t)].copy_(t.to(local.dtype))
        filled[ours] += len(t)
    assert all(filled[n] == params[n].to_local().shape[0] for n in params), filled
    model.generation_config = M.read_generation_config(cfg.model)
    return root


def save_hf(root: LogProbs, path: Path, cfg: SFTConfig):
    """Gather the full weights (to CPU, rank by rank) and write a Hugging Face folder from rank 0, in bf16."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(root.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
        M.save(root.model, path, state_dict=sd, copy_files_from=cfg.model)
    dist.barrier()


def save_state(model, optim, step: int, out: Path):
    """Sharded model + optimizer state with torch.distributed.checkpoint, and the step, atomically:
    written to state.tmp, then renamed over state (the previous one survives any crash before that)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp, final = out / "state.tmp", out / "state"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        (tmp / "progress.json").write_text(json.dumps({"step": step}))
        M._replace_dir(tmp, final)
    dist.barrier()


def load_state(model, optim, out: Path):
    """The model and optimizer state saved in out/state (check_out has checked it is there, and read its step)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = out / "state"
    msd, osd = get_state_dict(model, optim)
    state = {"model": msd, "optim": osd}
    # Saves replace the folder whole, so a failure here is a file cut short or edited since. dcp gathers the ranks'
    # errors into a CheckpointException, which is a BaseException.
    try:
        dcp.load(state, checkpoint_id=str(path))
    except (Exception, dcp.api.CheckpointException) as e:
        cause = next(iter(e.failures.values()))[0] if isinstance(e, dcp.api.CheckpointException) else e
        text = str(cause).strip()[:300]
        why = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
        raise M.InputError(f"{path}: the saved training state cannot be read ({why})") from e
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])


# ----------------------------------------------------------------------------------------------
# The loop


def metrics_up_to(path: Path, step: int) -> list[dict]:
    """The metrics logged for steps up to `step`, the last saved one: a run killed after logging steps it never
    saved logs them again. A last line cut short is dropped (data.read_jsonl_log); a line without a step is an
    error naming it."""
    kept = []
    for k, m in data.read_jsonl_log(path, True, "metrics"):
        if type(m.get("step")) is not int or m["step"] < 1:
            raise M.InputError(f"{path}:{k}: not a metrics line (a JSON object with a step, a whole number from 1)")
        if m["step"] <= step:
            kept.append(m)
    return kept


def train(cfg: SFTConfig):
    from tqdm import tqdm

    rank, world, device = setup_distributed()
    data_sha256 = file_sha256(cfg.data)
    start = check_out(cfg, data_sha256)  # the step a resumed run starts from, 0 for a new one
    dist.barrier()  # every rank has looked at the folder before rank 0 writes to it
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    tok = data.Tokenizer.load(cfg.model)
    rows, counts = load_rows(cfg, tok)  # a bad row stops the run here, before anything is written
    lengths = [len(r[0]) for r in rows]
    steps = step_batches(len(rows), cfg)
    total = len(steps)  # the schedule always spans the whole run, so stopping early never changes it
    if start > total:  # the settings and rows are the saved ones (check_out), and so is the number of steps
        raise M.InputError(f"{out / 'state' / 'progress.json'}: step {start} is past the run's last, {total}")
    stop = min(cfg.max_steps, total) if cfg.max_steps else total
    model = build_model(cfg, device)
    n_params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                              weight_decay=cfg.weight_decay, fused=True)
    if cfg.resume:
        load_state(model, optim, out)  # a damaged state stops the run here, before anything is written
    if rank == 0:  # the first writes of the run, now that nothing before them can fail on bad input
        out.mkdir(parents=True, exist_ok=True)
        run_config = {**asdict(cfg), "data_sha256": data_sha256}
        data.write_atomic(out / "config.json", json.dumps(run_config, indent=2) + "\n")
        if cfg.resume and (out / "metrics.jsonl").is_file():
            kept = metrics_up_to(out / "metrics.jsonl", start)
            data.write_atomic(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in kept))
        data.write_atomic(out / "data_stats.json", json.dumps(counts) + "\n")  # rows kept, dropped, off their winner
        for key, what in (("rows_dropped_prompt_too_long", "row(s) dropped, their prompt alone max_len or longer"),
                          ("rows_dropped_too_long", "row(s) dropped, longer than max_len"),
                          ("rows_whose_trace_does_not_end_in_the_winner",
                           "trace(s) not ending in their winner's verdict, trained on as given")):
            if rows_named := counts[key]:
                print(f"{cfg.data}: {len(rows_named)} {what} (rows {rows_named[:10]}"
                      f"{', ...' if len(rows_named) > 10 else ''}; all in {out / 'data_stats.json'})", file=sys.stderr)
        sizes = {k: v for k, v in counts.items() if isinstance(v, int)}
        print(f"{sizes} | {describe_steps(steps, cfg.global_batch)} | {n_params / 1e6:.1f}M params | world {world}")
    log = open(out / "metrics.jsonl", "a") if rank == 0 else None
    bar = tqdm(total=stop, initial=start, disable=rank != 0, desc="sft")
    model.train()
    for step in range(start, stop):
        t0 = time.perf_counter()
        batch = steps[step]
        mine = batch[rank::world]  # this rank's share of the global batch
        micro = micro_batches(mine, lengths, cfg.micro_tokens)
        # Every rank must run the same number of forward/backward passes (FSDP's collectives).
        n_micro = torch.tensor(len(micro), device=device)
        dist.all_reduce(n_micro, op=dist.ReduceOp.MAX)
        micro += [[]] * (int(n_micro) - len(micro))
        lr = lr_at(step, total, cfg)
        for g in optim.param_groups:
            g["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        tokens = real = padded = 0  # loss tokens, sequence tokens, padded positions
        for idx in micro:
            dummy = not idx
            ids, tgt, mask = collate(rows, idx or mine[:1] or batch[:1], device)
            logp = model(ids, tgt)  # [B,T] float32
            part = sequence_nll_sum(logp, mask)
            # FSDP averages gradients over ranks, so scale by world / global batch: the sum over all
            # ranks and micro-batches is then the mean over the global batch's sequences.
            (part * (0.0 if dummy else world / len(batch))).backward()
            if not dummy:
                loss_sum += part.detach()
                tokens += int(mask.sum())
                real += sum(len(rows[i][0]) - 1 for i in idx)
                padded += ids.numel()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        dist.all_reduce(loss_sum)
        stats = torch.tensor([tokens, real, padded], dtype=torch.float64, device=device)
        dist.all_reduce(stats)
        loss = loss_sum.item() / len(batch)
        if not (math.isfinite(loss) and math.isfinite(norm.item())):
            raise RuntimeError(f"step {step + 1}: non-finite loss {loss} or grad norm {norm.item()}; "
                               f"the last saved state in {out / 'state'} is intact")
        optim.step()
        optim.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tok_s = stats[2].item() / dt  # positions through the model per second, padding included
        m = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm.item(), "loss_tokens": int(stats[0]),
             "padding_waste": 1 - stats[1].item() / stats[2].item(), "tokens_per_s": tok_s,
             "mfu": 6 * n_params * tok_s / world / (cfg.peak_tflops * 1e12),
             "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
             "seconds": dt}
        if rank == 0:
            log.write(json.dumps(m) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < stop:
            save_state(model, optim, step + 1, out)
    bar.close()
    save_state(model, optim, stop, out)
    save_hf(model, out / "hf", cfg)
    if log:
        log.close()
    return model


def main(argv=None):
    cfg = parse_args(argv)
    if not cfg.model or not cfg.data:
        raise SystemExit("--model and --data are required")
    check_config(cfg)
    try:
        train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    data.run_cli(main)
