"""Judge preference pairs with a trained RM-R1 model and score RewardBench, RM-Bench and RMB as published.

    python eval.py --model DIR --bench rewardbench --data filtered.jsonl --out runs/rb
    python eval.py --bench rm-bench --data ../shared/benchmarks/rm-bench --out runs/rmb --score-only
    python eval.py --model DIR --question "2+2?" --answer-a "4" --answer-b "5"     # one pair, streamed
    torchrun --nproc_per_node=8 eval.py --model DIR --bench rmb --data RMB_dataset/ --out runs/rmb  # 8 GPUs

Flow: data (readers) -> rubrics.judge_messages -> sample.generate (greedy, one call for all pairs) ->
rubrics.parse_verdict -> per-benchmark aggregation (SPEC section 6). Every judgment is appended to
OUT/judgments.jsonl as soon as it is made; a rerun with the same --out skips what is there.
Under torchrun, rank r judges pairs r, r + world, ... into OUT/judgments.rank{r}.jsonl (rank 0 into
judgments.jsonl) and the last rank to finish scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import data
from model import InputError, MissingInput, read_json
from rubrics import judge_messages, parse_verdict

# ----------------------------------------------------------------------------------------------
# Defaults (each field is a command-line flag)


@dataclass
class EvalConfig:
    model: str = ""  # Hugging Face model folder (not needed with --score-only)
    bench: str = ""  # rewardbench | rm-bench | rmb | pairs (default: pairs; with --score-only, the run's own)
    data: str = ""  # file or folder of the benchmark
    out: str = ""  # run folder: judgments.jsonl, scores.json, config.json
    variant: str = "auto"  # auto | instruct | reasoning
    max_new_tokens: int = 4096  # longest judgment (fewer where the prompt nears the model's limit)
    slots: int = 0  # judgments decoding at once (0: as many as fit in 90% of the free GPU memory)
    seed: int = 0  # placement of the chosen answer (A/B), per pair
    both_orders: bool = False  # judge every pair twice, chosen at A and at B
    limit: int = 0  # judge only the first N pairs (0 = all)
    score_only: bool = False  # score OUT's judgments, no model (with --data, lines need only id, chosen_at, output)
    device: str = ""  # cuda, cuda:N or cpu (empty: cuda if there is one; under torchrun each rank its own)
    question: str = ""  # one-pair mode: the question
    answer_a: str = ""  # one-pair mode: answer A
    answer_b: str = ""  # one-pair mode: answer B
    pair_file: str = ""  # one-pair mode from a JSON file {"question", "answer_a", "answer_b"}


def parse_args(argv=None) -> EvalConfig:
    return EvalConfig(**vars(data.config_parser(EvalConfig, __doc__).parse_args(argv)))


# ----------------------------------------------------------------------------------------------
# Official aggregations (pure functions of the per-judgment records)

REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
MATH_PRM_WEIGHT = 984  # math-prm (447 pairs) counts as 984, so Reasoning = half math-prm, half hep-*


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def score_rewardbench(records: list[dict]) -> dict:
    """Per-subset accuracy; each section is the size-weighted mean of its subsets (math-prm weighted
    984); Overall = unweighted mean of the four sections. Subsets absent from the records are listed
    under "missing_subsets", and a section (and Overall) without any of its subsets is None.

    >>> r = [{"subset": "math-prm", "correct": 1}] + [{"subset": "hep-go", "correct": 0}] * 2
    >>> round(score_rewardbench(r)["sections"]["Reasoning"], 4)   # (1 * 984 + 0 * 2) / (984 + 2)
    0.998
    """
    by = defaultdict(list)
    for r in records:
        by[r["subset"]].append(r["correct"])
    acc = {s: sum(v) / len(v) for s, v in by.items()}
    sections = {}
    for name, subsets in REWARDBENCH_SECTIONS.items():
        present = [s for s in subsets if s in acc]
        w = {s: MATH_PRM_WEIGHT if s == "math-prm" else len(by[s]) for s in present}
        sections[name] = sum(acc[s] * w[s] for s in present) / sum(w.values()) if present else None
    known = {s for v in REWARDBENCH_SECTIONS.values() for s in v}
    complete = all(v is not None for v in sections.values())
    return {
        "subsets": acc,
        "sections": sections,
        "overall": _mean(sections.values()) if complete else None,
        "accuracy": _mean(r["correct"] for r in records),
        "n": len(records),
        "missing_subsets": sorted(known - set(acc)),
        "unknown_subsets": sorted(set(acc) - known),
    }


def score_rmbench(records: list[dict]) -> dict:
    """Each item's 3x3 matrix M[i][j] (chosen style i vs rejected style j), averaged per domain;
    hard = mean of the strict upper triangle (rejected more styled), normal = the diagonal, easy = the
    strict lower triangle; domain score = mean of all 9 cells. Overall easy/normal/hard/total = unweighted
    means over the domains present. Items missing a cell are reported, not scored.

    >>> recs = [{"group": "chat/1", "subset": "chat", "extra": {"i": i, "j": j}, "correct": int(i >= j)}
    ...         for i in range(3) for j in range(3)]
    >>> s = score_rmbench(recs)["domains"]["chat"]; (s["easy"], s["normal"], s["hard"], round(s["score"], 4))
    (1.0, 1.0, 0.0, 0.6667)
    """
    cells = defaultdict(dict)
    domain_of = {}
    for r in records:
        cell = r["extra"].get("i"), r["extra"].get("j")
        if not all(type(x) is int and 0 <= x < 3 for x in cell):
            raise InputError(f"RM-Bench judgment {r.get('id')}: its extra field should hold the styles i and j "
                             f"(0, 1 or 2) of its chosen and rejected answers, got {r['extra']!r}")
        if cell in cells[r["group"]]:
            raise InputError(f"RM-Bench judgment {r.get('id')}: item {r['group']} has another judgment of styles "
                             f"{cell}")
        if domain_of.setdefault(r["group"], r["subset"]) != r["subset"]:
            raise InputError(f"RM-Bench judgment {r.get('id')}: item {r['group']} is in domain {r['subset']!r} here "
                             f"and {domain_of[r['group']]!r} in another of its judgments")
        cells[r["group"]][cell] = r["correct"]
    per_domain = defaultdict(list)
    incomplete = []
    for g, m in cells.items():
        if len(m) != 9:
            incomplete.append(g)
        else:
            per_domain[domain_of[g]].append(m)
    domains = {}
    for d, items in per_domain.items():
        M = [[_mean(m[(i, j)] for m in items) for j in range(3)] for i in range(3)]
        domains[d] = {
            "matrix": M,
            "hard": _mean(M[i][j] for i in range(3) for j in range(3) if j > i),
            "normal": _mean(M[i][i] for i in range(3)),
            "easy": _mean(M[i][j] for i in range(3) for j in range(3) if j < i),
            "score": _mean(M[i][j] for i in range(3) for j in range(3)),
            "items": len(items),
        }
    out = {"domains": domains, "incomplete_items": sorted(incomplete),
           "missing_domains": [d for d in data.RMBENCH_DOMAINS if d not in domains]}
    for k in ("easy", "normal", "hard"):
        out[k] = _mean(v[k] for v in domains.values())
    out["total"] = _mean(v["score"] for v in domains.values())
    return out


def score_rmb(records: list[dict]) -> dict:
    """Pairwise: pooled accuracy over every pair of Helpfulness (resp. Harmlessness) sets. Best-of-N: an
    item counts only if every one of its best-vs-loser pairs is right; an item with some of its pairs not
    judged (a --limit inside it, an unfinished log) is listed under "incomplete_items", not scored. Mean of
    the four reported.

    >>> recs = [{"subset": "BoN_set/Helpfulness/x", "group": "bon/1", "correct": c, "extra": {"loser": k, "losers": 3}}
    ...         for k, c in enumerate((1, 1, 0))]
    >>> score_rmb(recs)["bon_helpfulness"], score_rmb(recs[:2])["incomplete_items"]
    (0.0, ['bon/1'])
    """
    pair = defaultdict(list)
    bon = defaultdict(lambda: defaultdict(dict))  # aspect -> item -> loser index -> correct
    losers = {}  # item -> its number of losers
    for r in records:
        part = data.rmb_part(r["subset"])
        if part is None:
            raise InputError(f"RMB record {r.get('id')}: category {r['subset']!r} should start with Pairwise_set/ or "
                             "BoN_set/, then Helpfulness or Harmlessness")
        kind, aspect = part
        if kind == "Pairwise_set":
            pair[aspect].append(r["correct"])
        else:
            extra = r.get("extra") or {}
            if "loser" not in extra or "losers" not in extra:
                raise InputError(f"RMB Best-of-N judgment {r.get('id')}: its extra field lacks the loser's index and "
                                 "the item's loser count (a log from before they were recorded: rescore it with "
                                 "--score-only --data)")
            loser, count = extra["loser"], extra["losers"]
            if not (type(loser) is int and type(count) is int and 0 <= loser < count):
                raise InputError(f"RMB Best-of-N judgment {r.get('id')}: its extra field should hold the loser's index "
                                 f"(0 to losers - 1) and the item's loser count, got {extra!r}")
            if loser in bon[aspect][r["group"]]:
                raise InputError(f"RMB Best-of-N judgment {r.get('id')}: item {r['group']} has another judgment of "
                                 f"loser {loser}")
            if losers.setdefault(r["group"], count) != count:
                raise InputError(f"RMB Best-of-N judgment {r.get('id')}: item {r['group']} has {count} losers here and "
                                 f"{losers[r['group']]} in another of its judgments")
            bon[aspect][r["group"]][loser] = r["correct"]
    whole = {a: [all(v.values()) for g, v in items.items() if len(v) == losers[g]] for a, items in bon.items()}
    figures = {
        "pairwise_helpfulness": _mean(pair["helpfulness"]),
        "pairwise_harmlessness": _mean(pair["harmlessness"]),
        "bon_helpfulness": _mean(whole.get("helpfulness", [])),
        "bon_harmlessness": _mean(whole.get("harmlessness", [])),
    }
    missing = [k for k, v in figures.items() if v is None]  # no whole item or pair judged
    out = {**figures, "mean": None if missing else _mean(figures.values()), "missing_sets": missing}
    out["counts"] = {"pairs_helpfulness": len(pair["helpfulness"]), "pairs_harmlessness": len(pair["harmlessness"]),
                     "bon_items_helpfulness": len(whole.get("helpfulness", [])),
                     "bon_items_harmlessness": len(whole.get("harmlessness", []))}
    out["incomplete_items"] = sorted(g for items in bon.values() for g, v in items.items() if len(v) != losers[g])
    return out


def score_pairs(records: list[dict]) -> dict:
    by = defaultdict(list)
    for r in records:
        by[r["subset"]].append(r["correct"])
    return {"accuracy": _mean(r["correct"] for r in records), "n": len(records),
            "subsets": {s: _mean(v) for s, v in by.items()}}


def summary(scores: dict) -> dict:
    """What a run prints: the scores' single figures, and each order's when both orders were judged (the figures
    per subset, domain or set, and the lists, are in scores.json).

    >>> summary({"bench": "rm-bench", "flip_rate": 0.25, "by_order": {"chosen_at_A": {"total": 0.5, "domains": {},
    ...          "missing_domains": ["code"]}, "chosen_at_B": {"total": 0.75, "domains": {}, "missing_domains": []}}})
    {'bench': 'rm-bench', 'flip_rate': 0.25, 'chosen_at_A': {'total': 0.5}, 'chosen_at_B': {'total': 0.75}}
    """
    def figures(d):
        return {k: v for k, v in d.items() if not isinstance(v, (dict, list))}

    return {**figures(scores), **{order: figures(s) for order, s in scores.get("by_order", {}).items()}}


BENCHES = {
    "rewardbench": (data.read_rewardbench, score_rewardbench),
    "rm-bench": (data.read_rmbench, score_rmbench),
    "rmb": (data.read_rmb, score_rmb),
    "pairs": (data.read_pairs, score_pairs),
}


def score(bench: str, records: list[dict]) -> dict:
    """Official aggregation, per order when both orders were judged, plus the position-bias figures."""
    agg = BENCHES[bench][1]
    by_pair = defaultdict(dict)
    for r in records:
        by_pair[r["id"]][r["chosen_at"]] = r
    # not part of the official scores, but what to look at first when they are low: judgments with no single
    # verdict (scored wrong) and judgments cut by --max-new-tokens (most of those have none)
    checks = {"no_verdict": sum(r.get("verdict") is None for r in records),
              "stopped_at_length": sum(r.get("finish") == "length" for r in records)}
    both = [v for v in by_pair.values() if len(v) == 2]
    if not both:  # each pair judged once, in its seeded position
        return {"bench": bench, **agg(records), **checks}
    out = {"bench": bench, **checks,
           "by_order": {f"chosen_at_{o}": agg([r for r in records if r["chosen_at"] == o]) for o in ("A", "B")}}
    # A pair "flips" when the judge prefers a different response once the positions are swapped.
    out["pairs_in_both_orders"] = len(both)
    out["accuracy_chosen_at_A"] = _mean(v["A"]["correct"] for v in both)
    out["accuracy_chosen_at_B"] = _mean(v["B"]["correct"] for v in both)
    out["flip_rate"] = _mean(v["A"]["correct"] != v["B"]["correct"] for v in both)
    out["same_letter_both_orders"] = _mean(v["A"]["verdict"] is not None and v["A"]["verdict"] == v["B"]["verdict"]
                                           for v in both)
    return out


def gaps(scores: dict, source: str) -> list[str]:
    """What the scores do not cover, one line each: pairs not judged (of those in `source`), items with only
    some of their pairs judged (listed in the scores, not scored), benchmark parts with no item judged whole
    (absent from the judgments, or judged only in part), RewardBench subsets that belong to no section.

    >>> gaps({"pairs_judged": 12, "pairs_total": 18, "incomplete_items": ["chat/2"], "missing_domains": ["math"]},
    ...      "the run")  # doctest: +NORMALIZE_WHITESPACE
    ['the scores cover the 12 pairs judged, of the 18 in the run',
     '1 item(s) with only some of their pairs judged are not scored (incomplete_items)',
     "nothing scored in: math; the scores cover what is there, so they are not the published benchmark's"]
    >>> gaps({"pairs_judged": 3, "pairs_total": 3, "unknown_subsets": ["prior-x"]}, "the run")
    ['subsets in no RewardBench section: prior-x; they count in accuracy only']
    """
    parts = [scores, *scores.get("by_order", {}).values()]  # both orders: each order's aggregation
    lines = []
    judged, total = scores["pairs_judged"], scores["pairs_total"]
    if total is None:
        lines.append(f"no eval config.json says how many pairs the run holds; the scores cover the {judged} judged")
    elif judged != total:  # a run not finished, or logs kept from a run with a larger --limit
        lines.append(f"the scores cover the {judged} pairs judged, of the {total} in {source}")
    if cut := {g for part in parts for g in part.get("incomplete_items", [])}:
        lines.append(f"{len(cut)} item(s) with only some of their pairs judged are not scored (incomplete_items)")
    # RM-Bench's means are over the domains present; RewardBench's Overall and RMB's mean are None without a part
    if absent := {m for part in parts for key in ("missing_domains", "missing_subsets", "missing_sets")
                  for m in part.get(key, [])}:
        lines.append(f"nothing scored in: {', '.join(sorted(absent))}; the scores cover what is there, so they "
                     "are not the published benchmark's")
    if unknown := {s for part in parts for s in part.get("unknown_subsets", [])}:
        lines.append(f"subsets in no RewardBench section: {', '.join(sorted(unknown))}; they count in accuracy only")
    return lines


# ----------------------------------------------------------------------------------------------
# Judging with resumable logs


@dataclass
class Judgment:
    key: str  # id|chosen_at: unique per judgment
    id: str
    subset: str
    group: str
    chosen_at: str
    output: str
    verdict: str | None
    correct: int
    finish: str
    extra: dict


def read_log(path: Path, required=None, repair: bool = True) -> list[dict]:
    """Judgments already written. A last line cut short by a crash is removed (and said so) if `repair`, else
    skipped (another process may be writing it); any other malformed line, one lacking a `required` field
    (default: every Judgment field), or one whose chosen_at is not "A" / "B" or output not a string, is an error
    naming it. A whole judgment (no `required` given) is checked field by field (`check_judgment`)."""
    return _read_judgments(path, required, repair, seen={})


def _read_judgments(path: Path, required, repair: bool, seen: dict) -> list[dict]:
    """read_log's work. seen: key -> (file, line) of the judgments read so far, from this file or other ranks'
    logs, updated here; a key met again would count twice in the scores, an error naming both places."""
    whole = not required  # every field of a Judgment, as judge() writes them
    required = required or [f.name for f in fields(Judgment)]
    if not path.exists():
        return []
    records = []
    for k, rec in data.read_jsonl_log(path, repair, "judgment"):
        missing = [name for name in required if name not in rec]
        if missing:
            raise InputError(f"{path}:{k}: judgment lacks {missing}")
        # both fields are in `required` wherever a log is scored; a caller may ask for fewer
        if "chosen_at" in rec and rec["chosen_at"] not in ("A", "B"):
            raise InputError(f"{path}:{k}: chosen_at should be 'A' or 'B', got {rec['chosen_at']!r}")
        if "output" in rec and not isinstance(rec["output"], str):
            raise InputError(f"{path}:{k}: output should be a string, got {type(rec['output']).__name__}")
        if whole:
            check_judgment(rec, f"{path}:{k}")
        key = item_key(rec.get("id"), rec.get("chosen_at"))
        if key in seen:
            file, line = seen[key]
            raise InputError(f"{path}:{k}: judgment {key} is already "
                             + (f"on line {line}" if file == path else f"at {file}:{line}"))
        seen[key] = (path, k)
        records.append(rec)
    return records


def item_key(pair_id, chosen_at) -> str:
    """The key of one judgment: the pair's id and where its chosen answer sits ("7|A")."""
    return f"{pair_id}|{chosen_at}"


def check_judgment(rec: dict, where: str):
    """A judgment as judge() writes it: each field of its type, and key, verdict and correct what id, chosen_at and
    output give. Scores are computed from those fields, so a line edited by hand or written by other code would
    otherwise count as it says (or end in a traceback)."""
    for name, kind in (("key", str), ("id", str), ("subset", str), ("group", str), ("finish", str), ("extra", dict)):
        data.require(where, rec, name, kind)
    verdict = parse_verdict(rec["output"])
    derived = (("key", item_key(rec["id"], rec["chosen_at"]), "its id and chosen_at give"),
               ("verdict", verdict, "its output gives"),
               ("correct", int(verdict == rec["chosen_at"]), "its output and chosen_at give"))
    for name, value, source in derived:
        if rec[name] != value or type(rec[name]) is not type(value):  # type: a JSON true is not the 1 it equals
            raise InputError(f"{where}: judgment field {name!r} is {rec[name]!r}, but {source} {value!r}: a line "
                             "edited or written elsewhere (rescore such lines with --score-only --data, which "
                             "needs only id, chosen_at and output)")


def log_path(out: Path, rank: int = 0) -> Path:
    """The log a process appends to: judgments.jsonl for one process (rank 0), judgments.rank{r}.jsonl for
    rank r > 0 of a torchrun."""
    return out / ("judgments.jsonl" if rank == 0 else f"judgments.rank{rank}.jsonl")


def log_files(out: Path) -> list[Path]:
    """The judgment logs in out, rank 0's first (judgments.jsonl, judgments.rank1.jsonl, judgments.rank2.jsonl,
    ...); a rank's file exists once it has judged something."""
    ranks = sorted(int(m[1]) for p in out.glob("judgments.rank*.jsonl")
                   if (m := re.fullmatch(r"judgments\.rank([1-9]\d*)\.jsonl", p.name)))
    return [p for p in (log_path(out, r) for r in [0, *ranks]) if p.is_file()]


def read_logs(out: Path, own: Path | None = None, required=None) -> dict[Path, list[dict]]:
    """The judgments of every rank's log in out, by file (rank 0's first). Only `own`, the log this process
    appends to, is repaired (see read_log). A judgment in two logs is an error naming both lines.
    """
    seen = {}  # shared by the files: a judgment in two logs is found like one twice in a log
    return {path: _read_judgments(path, required, path == own, seen) for path in log_files(out)}


def judged_by_key(out: Path, own: Path) -> dict[str, dict]:
    """Every rank's judgments in out by key (id|chosen_at); see read_logs."""
    return {r["key"]: r for lines in read_logs(out, own=own).values() for r in lines}


def rescore(lines: list[dict], pairs: list[data.Pair], where: str) -> list[dict]:
    """Judgments made elsewhere (each line: id, chosen_at, output) joined with the benchmark's pairs by id;
    the verdict and correctness are recomputed from the output text with the evaluation rule."""
    by_id = {p.id: p for p in pairs}
    out = []
    for r in lines:  # each named by its id, which a reader can search for (blank lines shift an index)
        p = by_id.get(str(r["id"]))
        if p is None:
            raise InputError(f"{where}: the judgment of id {r['id']!r}: no pair of the benchmark data has that id")
        verdict = parse_verdict(r["output"])
        out.append(asdict(Judgment(item_key(p.id, r["chosen_at"]), p.id, p.subset, p.group, r["chosen_at"], r["output"],
                                   verdict, int(verdict == r["chosen_at"]), r.get("finish", "unknown"), p.extra)))
    return out


def judge(get_model, tok, items: list[tuple[data.Pair, str]], log: Path, variant: str, max_new_tokens: int,
          limit: int, slots: int = 0, progress: bool = True, done: dict | None = None,
          ready=None, others: list[tuple[data.Pair, str]] = ()) -> list[dict]:
    """Greedy judgments of (pair, chosen_at) items, appended to `log`; items already judged are skipped.
    done: judgments already made, by key (default: those in log). limit: the model's max_position_embeddings.
    get_model() returns the judge. It is called only once every prompt is rendered and fits `limit`, and only if
    something is left to judge: a pair too long, or a run already finished, costs no model load.
    ready(): called once the prompts fit, before anything is judged (eval.main writes the run's config.json).
    others: items other processes judge (under torchrun); their prompts must fit too before ready(), so that no
    process starts on a run that another stops."""
    from tqdm import tqdm

    from sample import generate

    def what(p, at):  # an item as errors name it
        return f"pair {p.id} (chosen at {at})"

    def encode(items):  # token ids of each item's judge prompt
        return tok.encode_chats([judge_messages(*p.conversations(at), variant) for p, at in items], True,
                                names=[what(p, at) for p, at in items])

    def budgets(items, prompts):  # new tokens each may take; a prompt that fills the limit stops the run
        return [reply_budget(limit, ids, max_new_tokens, what(p, at)) for (p, at), ids in zip(items, prompts)]

    keys = [item_key(p.id, at) for p, at in items]
    known = {r["key"]: r for r in read_log(log)} if done is None else done
    done = {k: known[k] for k in keys if k in known}  # these items' judgments already made
    todo = [item for item, k in zip(items, keys) if k not in done]
    # every prompt rendered and measured before the first judgment, so a long pair stops the run up front
    prompts = encode(todo)
    limits = budgets(todo, prompts)
    others = [(p, at) for p, at in others if item_key(p.id, at) not in known]
    for start in range(0, len(others), 1024):  # the other processes' prompts: measured, then dropped
        budgets(others[start:start + 1024], encode(others[start:start + 1024]))
    if ready:
        ready()
    model = get_model() if todo else None
    bar = tqdm(total=len(items), initial=len(items) - len(todo), disable=not progress, desc="judging")
    right = sum(r["correct"] for r in done.values())
    with open(log, "a", encoding="utf-8") as f:

        def write(o):  # progress(): a finished sequence's judgment, on disk before generate() returns
            nonlocal right
            p, at = todo[o.prompt_index]
            text = tok.decode(o.tokens, skip_special_tokens=True)
            verdict = parse_verdict(text)
            j = Judgment(item_key(p.id, at), p.id, p.subset, p.group, at, text, verdict, int(verdict == at),
                         o.finish, p.extra)
            done[j.key] = asdict(j)
            f.write(json.dumps(done[j.key], ensure_ascii=False) + "\n")
            f.flush()
            right += j.correct
            bar.update(1)
            bar.set_postfix(acc=f"{right / len(done):.3f}", refresh=False)

        if todo:
            # One call for every item: a slot freed by a finished judgment takes the next prompt (shortest first),
            # so the GPU stays full until the last few (calls of a few hundred items each waited on their longest
            # judgment in turn).
            generate(model, prompts, limits, temperature=0, eos_ids=tok.eos_ids, slots=slots or None,
                     progress=write)
    bar.close()
    return [done[k] for k in keys]


def reply_budget(limit: int, ids: list[int], max_new_tokens: int, what: str) -> int:
    """New tokens a judgment may take: max_new_tokens, or fewer where the prompt plus them would pass the
    model's `limit` of positions (the reply then stops there, as a length stop). A prompt that fills the limit is
    an error naming `what`."""
    if len(ids) >= limit:
        raise InputError(f"{what}: judge prompt has {len(ids)} tokens, at or over the model's limit of {limit}")
    return min(max_new_tokens, limit - len(ids))


def guess_variant(tok) -> str:
    """DeepSeek-R1-Distill templates speak in <｜User｜>/<｜Assistant｜>: the Reasoning variant (no system)."""
    src = tok.template.source if tok.template else ""
    return "reasoning" if "<｜Assistant｜>" in src else "instruct"


# ----------------------------------------------------------------------------------------------
# CLI


def judge_device(cfg: EvalConfig, local_rank: int | None = None):
    """--device, checked (default: cuda if available, else cpu). Under torchrun (local_rank given) each process
    takes its own GPU, cuda:LOCAL_RANK, unless --device names one."""
    import torch

    from model import checked_device, default_device, local_gpu

    device = cfg.device or default_device()
    device = local_gpu(local_rank) if device == "cuda" and local_rank is not None else checked_device(device)
    if device.index is not None:  # a GPU named by number becomes the current one, on which CUDA graphs and
        torch.cuda.set_device(device)  # streams are made ("cuda" is the current one already)
    return device


def flag_device(cfg: EvalConfig, local_rank: int | None = None):
    """judge_device for the CLI: a device this process cannot see is a one-line error, as other bad flags are."""
    try:
        return judge_device(cfg, local_rank)
    except ValueError as e:
        raise SystemExit(f"eval.py: {e}") from None


def load_model(cfg: EvalConfig, device=None):
    """The judge on `device` (default: judge_device's), in bf16 on a GPU, float32 on a CPU."""
    import torch

    from model import load

    device = judge_device(cfg) if device is None else device
    return load(cfg.model, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).eval()


def read_bench(bench: str, path: str, defaulted: bool) -> list[data.Pair]:
    """The pairs of a benchmark's data. defaulted: --bench was not given, so a benchmark's own files (read as
    plain pairs) get an error that says which reader was used."""
    try:
        return BENCHES[bench][0](path)
    except InputError as e:
        if not defaulted or isinstance(e, MissingInput):
            raise
        raise InputError(f"{e} (read as plain pairs, the default: name a benchmark's data with --bench)") from None


# flags of a benchmark run, which one-pair mode (judged as given, streamed, nothing written) has no use for
RUN_ONLY = ("bench", "data", "out", "slots", "seed", "both_orders", "limit", "score_only")
# flags that choose which judgments are made and what they say, which --score-only (they are made) cannot apply
JUDGING_ONLY = ("variant", "max_new_tokens", "seed", "both_orders", "limit")


def refuse_flags(cfg: EvalConfig, names, mode: str, meant_for: str):
    """Stop, naming the flags among `names` given a value other than their default, which `mode` cannot apply."""
    if given := [f"--{f.replace('_', '-')}" for f in names if getattr(cfg, f) != getattr(EvalConfig, f)]:
        raise SystemExit(f"{mode}: {', '.join(given)} {'is' if len(given) == 1 else 'are'} for {meant_for}")


def one_pair(cfg: EvalConfig):
    from sample import TextStream, generate

    refuse_flags(cfg, RUN_ONLY, "one-pair mode judges the pair as given and writes nothing", "benchmark runs")
    flags = {"--question": cfg.question, "--answer-a": cfg.answer_a, "--answer-b": cfg.answer_b}
    if cfg.pair_file:
        if any(flags.values()):
            raise SystemExit(f"give the pair either in --pair-file or as {', '.join(flags)}, not both")
        d = read_json(cfg.pair_file)
        given = {k: data.require(cfg.pair_file, d, k) for k in ("question", "answer_a", "answer_b")}
        if empty := [k for k, v in given.items() if not v]:
            raise InputError(f"{cfg.pair_file}: field {empty[0]!r} is empty")
        q, a, b = given.values()
    else:
        if missing := [f for f, v in flags.items() if not v]:
            raise SystemExit(f"one-pair mode needs {', '.join(flags)}: {', '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} missing or empty")
        q, a, b = flags.values()
    if not cfg.model:
        raise SystemExit("one-pair mode needs --model")
    from model import load_config

    device = flag_device(cfg)
    tok = data.Tokenizer.load(cfg.model)
    variant = guess_variant(tok) if cfg.variant == "auto" else cfg.variant
    msgs = judge_messages([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                          [{"role": "user", "content": q}, {"role": "assistant", "content": b}], variant)
    ids = tok.encode_chat(msgs, add_generation_prompt=True)
    # a pair too long for the model stops here, before the weights load
    budget = reply_budget(load_config(cfg.model).max_position_embeddings, ids, cfg.max_new_tokens, "the pair")
    model = load_model(cfg, device)
    stream = TextStream(tok)
    out = generate(model, [ids], budget, temperature=0, eos_ids=tok.eos_ids, sync_every=4, on_tokens=stream)[0]
    stream.close()
    verdict = parse_verdict(tok.decode(out.tokens, skip_special_tokens=True))
    print(f"\n\nverdict: {verdict or 'invalid (no single [[A]] / [[B]])'}  ({len(out.tokens)} tokens, {out.finish})")


# settings that change what a judgment says: a run folder's judgments must all share them
SAME_ON_RESUME = ("model", "bench", "data", "variant", "max_new_tokens")


def saved_config(out: Path) -> dict | None:
    """The config.json an eval run saved in `out` (its settings, and "pairs": how many it judges), None without
    one; a file that is not an eval run's config (a model folder's?) is an error."""
    saved = data.run_config(out, {"bench", "variant"}, "an eval run", {
        "bench": str, "model": str, "data": str, "model_stamp": str, "data_sha256": str, "pairs": int})
    if saved is None:
        return None
    if saved["bench"] not in BENCHES:
        raise InputError(f"{out / 'config.json'}: 'bench' should be one of {sorted(BENCHES)}, got {saved['bench']!r}")
    if saved.get("pairs", 0) < 0:
        raise InputError(f"{out / 'config.json'}: 'pairs' should be >= 0, got {saved['pairs']}")
    return saved


def model_stamp(folder) -> str:
    """A fingerprint of a checkpoint's contents that costs a few reads: config.json, and of each safetensors file
    its name, size and 16 slices of 64 KiB spread over it (the header among them). Training moves weights all
    through a checkpoint, so one rewritten by a later SFT run gets another stamp; a copy (to each node of a
    multi-node run, say) keeps its own. Hashing every byte would read all the weights: 61 GB for a 32B judge, most
    of a minute at sha256's 1.7 GB/s."""
    h = hashlib.sha256()
    for p in sorted(p for p in Path(folder).iterdir() if p.name == "config.json" or ".safetensors" in p.name):
        size = p.stat().st_size
        h.update(f"{p.name} {size}\n".encode())
        with open(p, "rb") as f:
            for k in range(16):
                f.seek(k * size // 16)
                h.update(f.read(1 << 16))
    return h.hexdigest()


def check_resume(out: Path, cfg: EvalConfig, variant: str, stamp: str) -> dict | None:
    """A rerun into a folder that holds judgments must use the settings and model they were made with (stamp:
    `model_stamp` of the model folder). Returns the folder's saved config when it holds judgments, else None."""
    saved_path, saved = out / "config.json", saved_config(out)
    logs = [p.name for p in log_files(out) if p.stat().st_size]
    if not logs:
        return None
    if saved is None:
        raise SystemExit(f"{out}: {', '.join(logs)} without the config.json it was made with; use another --out")
    diff = data.changed_settings(saved, {**asdict(cfg), "variant": variant}, SAME_ON_RESUME)
    if diff:
        raise SystemExit(f"{saved_path}: its judgments were made with other settings ({'; '.join(diff)}); "
                         f"rerun with those, or use another --out")
    check_same(out, saved, "model_stamp", stamp, f"{cfg.model}: its weights changed (rewritten by a later SFT run?)")
    return saved


def check_same(out: Path, saved: dict | None, key: str, now: str, what: str):
    """The same path may hold other contents: a fingerprint (`key`) saved with the judgments must match `now`.
    saved: check_resume's answer (None: no judgments). Runs saved before the fingerprint was recorded lack it."""
    if saved is not None and key in saved and saved[key] != now:
        raise SystemExit(f"{what} since the judgments in {out} were made ({key} {saved[key][:12]} there, "
                         f"{now[:12]} now); judging on would mix two in one score: use another --out")


def check_logged(out: Path, done: dict, items: list[tuple[data.Pair, str]]):
    """A rerun may judge more (a higher --limit, --both-orders added) but not leave judgments in the logs that it
    does not score: --score-only would count them, and its scores would differ from the run's. Such judgments
    come from another --seed (other placements), a lower --limit or --both-orders dropped (or, in a run saved
    before data_sha256 was, pairs no longer in the data). The scores read each judgment's subset, group and extra
    fields from the log, so those must be its pair's (they differ only in a log edited since it was written)."""
    for p, at in items:
        r = done.get(item_key(p.id, at))
        if r is not None and (r["subset"], r["group"], r["extra"]) != (p.subset, p.group, p.extra):
            raise SystemExit(f"{out}: the judgment {r['key']} in its logs has subset {r['subset']!r}, group "
                             f"{r['group']!r}, extra {r['extra']!r}; its pair in the data has {p.subset!r}, "
                             f"{p.group!r}, {p.extra!r}")
    keys = {item_key(p.id, at) for p, at in items}
    strays = [r for k, r in done.items() if k not in keys]
    if strays:
        first = strays[0]
        raise SystemExit(f"{out}: {len(strays)} judgment(s) in its logs are not among this run's pairs and "
                         f"placements (the first: id {first['id']!r} chosen at {first['chosen_at']}): they were made "
                         f"with another --seed, a higher --limit, --both-orders, or other data; rerun with those, "
                         f"or use another --out")


def main(argv=None):
    cfg = parse_args(argv)
    for name, least in (("max_new_tokens", 1), ("slots", 0), ("limit", 0)):
        if getattr(cfg, name) < least:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(cfg, name)}")
    if cfg.variant not in ("auto", "instruct", "reasoning"):
        raise SystemExit(f"--variant must be auto, instruct or reasoning, got {cfg.variant!r}")
    # under torchrun each process judges every world-th pair into its own log; one process: rank 0 of 1
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    one = cfg.question or cfg.answer_a or cfg.answer_b or cfg.pair_file
    if world > 1 and (one or cfg.score_only):
        raise SystemExit(f"{'one-pair mode' if one else '--score-only'} runs in one process: start it without torchrun")
    if one:
        return one_pair(cfg)
    if cfg.bench and cfg.bench not in BENCHES:
        raise SystemExit(f"--bench must be one of {sorted(BENCHES)}")
    if not cfg.out:
        raise SystemExit("--out is required")
    out = data.run_folder(cfg.out)
    if cfg.score_only:
        refuse_flags(cfg, JUDGING_ONLY, "--score-only scores the judgments as they were made", "judging runs")
        # a run is scored by the rules of the benchmark it judged (scores.json is replaced by what this writes)
        saved = saved_config(out) or {}
        if cfg.bench and saved and cfg.bench != saved["bench"]:
            raise SystemExit(f"{out / 'config.json'}: the run judged {saved['bench']}, not {cfg.bench}: leave out "
                             f"--bench, or pass --bench {saved['bench']}")
        defaulted = not cfg.bench and not saved
        cfg = replace(cfg, bench=cfg.bench or saved.get("bench", "pairs"))
        if cfg.data:  # outputs made elsewhere: recompute verdicts, take subsets and groups from the data
            pairs = read_bench(cfg.bench, cfg.data, defaulted)
            logs = read_logs(out, required=["id", "chosen_at", "output"])
            records = [r for path, lines in logs.items() for r in rescore(lines, pairs, str(path))]
            total = len(pairs)
        else:
            records = [r for lines in read_logs(out).values() for r in lines]
            total = saved.get("pairs")
        if not records:
            raise InputError(f"{out / 'judgments.jsonl'}: no judgments to score")
    else:
        if not cfg.model or not cfg.data:
            raise SystemExit("--model and --data are required (or --score-only)")
        defaulted = not cfg.bench
        cfg = replace(cfg, bench=cfg.bench or "pairs")
        tok = data.Tokenizer.load(cfg.model)
        variant = guess_variant(tok) if cfg.variant == "auto" else cfg.variant
        stamp = model_stamp(cfg.model)
        before = check_resume(out, cfg, variant, stamp)  # the settings, before the data is read
        from model import load_config

        limit = load_config(cfg.model).max_position_embeddings  # the model's config, checked before its weights
        device = flag_device(cfg, int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else None)
        pairs = read_bench(cfg.bench, cfg.data, defaulted)
        if not pairs:
            raise InputError(f"{cfg.data}: no pairs found (read as --bench {cfg.bench})")
        data_sha256 = data.pairs_sha256(pairs)  # the pairs' contents, not only the path they were read from
        check_same(out, before, "data_sha256", data_sha256, f"{cfg.data}: its pairs changed")
        if cfg.limit:
            pairs = pairs[: cfg.limit]
        items = data.place(pairs, "both" if cfg.both_orders else "random", cfg.seed)
        log = log_path(out, rank)
        done = judged_by_key(out, log)
        check_logged(out, done, items)
        # pairs: how many --score-only expects; model_stamp and data_sha256: what a rerun must read
        saved = {**asdict(cfg), "variant": variant, "pairs": len(pairs), "model_stamp": stamp,
                 "data_sha256": data_sha256}

        def save_config():  # once the checks pass (a refused or failed rerun leaves the folder as it was)
            out.mkdir(parents=True, exist_ok=True)
            data.write_atomic(out / "config.json", json.dumps(saved, indent=2) + "\n")

        total = len(pairs)
        # rank r owns items r, r + world, ... whatever the logs hold, so no two processes judge one item; the
        # model loads once its prompts are checked, and not at all when they are all judged
        judge(lambda: load_model(cfg, device), tok, items[rank::world], log, variant, cfg.max_new_tokens, limit,
              cfg.slots, progress=rank == 0, done=done, ready=save_config,
              others=[item for k, item in enumerate(items) if k % world != rank])  # checked to fit, not judged
        judged = judged_by_key(out, log)
        waiting = sum(item_key(p.id, at) not in judged for p, at in items)
        if waiting:  # other ranks still judging: the last one to finish sees every judgment and scores
            print(f"rank {rank}: its judgments are in {log}; {waiting} of other ranks are not yet written, "
                  f"and the last rank to finish writes scores.json", file=sys.stderr)
            return
        records = [judged[item_key(p.id, at)] for p, at in items]
    scores = {**score(cfg.bench, records), "pairs_judged": len({r["id"] for r in records}), "pairs_total": total}
    data.write_atomic(out / "scores.json", json.dumps(scores, indent=2) + "\n")
    for line in gaps(scores, "the data" if cfg.data else "the run"):
        print(f"{out}: {line}", file=sys.stderr)
    print(json.dumps(summary(scores), indent=2))


if __name__ == "__main__":
    data.run_cli(main)
