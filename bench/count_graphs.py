"""How many decode shapes (CUDA graphs) does the ragged benchmark's schedule use? CPU only, seconds.

    python bench/count_graphs.py

Runs the engine's real scheduling (admission, prefill of a one-layer model, compaction, chunk sizes and
attention bounds) on bench_sample.py's ragged workload and its uniform batch, with the decode step replaced
by its bookkeeping alone (each live row advances one position and stops at its limit), and prints the
steps decoded and the distinct (batch, attention bound) pairs: on a GPU each is one captured graph.

Found (2026-11-22): with the bound rounded by round_size, ragged 25 shapes over 2,047 steps (bounds 1,280 to
3,072), uniform 3; with the power-of-two bound before 4f89a03, 21 and 1. The cache there is 3,072 long
(prompt 1,024 + 2,048), so the old bound was already capped at 3,072 for the tail's longest rows.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import model as M  # noqa: E402
import sample  # noqa: E402
from bench_sample import ragged_workload  # noqa: E402

shapes: dict[tuple[int, int], int] = {}  # (batch, attend_len) -> steps decoded at that shape


def bookkeeping_step(self, B: int):
    """The state updates of Engine._step without the model: live rows advance, and stop at their limit."""
    s = self.s
    live = ~s.done[:B]
    s.n_gen[:B] += live
    s.pos[:B] += live
    s.done[:B] |= live & (s.n_gen[:B] >= s.limit[:B])


def counted_run(self, steps: int, B: int, attend_len: int):
    shapes[(B, attend_len)] = shapes.get((B, attend_len), 0) + steps
    for _ in range(steps):
        self._step(B)


def main():
    cfg = M.Config.from_hf({
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 151936, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": True, "torch_dtype": "float32"})
    m = M.Transformer(cfg).eval()
    sample.Engine._step, sample.Engine._run = bookkeeping_step, counted_run
    _, seq_prompts, lengths = ragged_workload()
    uniform = round(sum(lengths) / len(lengths))
    for name, limits in (("ragged", lengths), (f"uniform ({uniform} each)", [uniform] * len(lengths))):
        shapes.clear()
        sample.generate(m, seq_prompts, limits, temperature=1.0, slots=448, cuda_graph=False)
        bounds = sorted({a for _, a in shapes})
        print(f"{name}: {sum(shapes.values())} steps, {len(shapes)} (batch, bound) shapes, bounds {bounds}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
