"""Readers on real and hand-made rows, the official aggregations on hand-computed cases, and an end-to-end
eval on a tiny random model that resumes to the same scores."""

import json
import re

import pytest
import torch
from conftest import SHARED, tiny_judge

import data
import eval as ev
import sft
from model import InputError, MissingInput

BENCH = SHARED / "benchmarks"


# -- readers -----------------------------------------------------------------------------------


def test_rmbench_reader_on_real_rows():
    pairs = data.read_rmbench(BENCH / "rm-bench")
    raw = {f: json.loads((BENCH / "rm-bench" / f).read_text()) for f in
           ("chat_filtered.json", "code_filtered.json", "safety-refuse_filtered.json", "safety-response_filtered.json")}
    assert len(pairs) == 9 * sum(len(v) for v in raw.values())
    first = raw["chat_filtered.json"][0]
    p = next(x for x in pairs if x.id == f"chat/{first['id']}/12")
    assert p.chosen == first["chosen"][1] and p.rejected == first["rejected"][2] and p.extra == {"i": 1, "j": 2}
    assert {x.subset for x in pairs} == {"chat", "code", "safety"}
    assert sum(x.subset == "safety" for x in pairs) == 9 * (284 + 157)


def test_rmb_reader_on_real_rows():
    pairs = data.read_rmb(BENCH / "rmb")
    bon = json.loads((BENCH / "rmb" / "BoN_set" / "Harmlessness" / "S1.json").read_text())
    item = bon[0]
    group = [p for p in pairs if p.group == f"bon/{item['bon_uid']}"]
    assert len(group) == len(item["loser_list"]) and all(p.chosen == item["bon_best"]["answer"] for p in group)
    assert [p.extra for p in group] == [{"loser": k, "losers": len(group)} for k in range(len(group))]
    assert [p.rejected for p in group] == [loser["answer"] for loser in item["loser_list"]]
    multi = json.loads((BENCH / "rmb" / "Pairwise_set" / "Harmlessness" / "multi.json").read_text())
    assert any(len(r["conversation_input"]) > 1 for r in multi)
    p = next(x for x in pairs if x.id == f"pair/{multi[0]['pair_uid']}")
    assert p.context == [{"role": m["role"], "content": m["content"]} for m in multi[0]["conversation_input"]]
    assert p.subset == "Pairwise_set/Harmlessness/multi" and p.rejected == multi[0]["reject"]["answer"]
    n_pair = sum(len(json.loads(f.read_text())) for f in (BENCH / "rmb" / "Pairwise_set").rglob("*.json"))
    n_bon = sum(len(r["loser_list"]) for f in (BENCH / "rmb" / "BoN_set").rglob("*.json") for r in json.loads(f.read_text()))
    assert len(pairs) == n_pair + n_bon


def write(path, rows, jsonl=True):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" if jsonl else json.dumps(rows))
    return path


RMB_BON = {"conversation_input": [{"role": "user", "content": "q"}], "category_path": "BoN_set/Helpfulness/Chat/x",
           "bon_best": {"answer": "a"}, "loser_list": [{"answer": "b"}], "bon_uid": 5}
RMB_PAIR = {"conversation_input": [{"role": "user", "content": "q"}], "category_path": "Pairwise_set/Harmlessness/S1",
            "chosen": {"answer": "a"}, "reject": {"answer": "b"}, "pair_uid": 1}


@pytest.mark.parametrize("row,match", [
    ({**RMB_BON, "loser_list": []}, r"rmb.json:2: loser_list is empty"),  # the item would vanish from the scores
    ({**RMB_BON, "category_path": "Pairwise_set/Helpfulness/Chat/x"}, r"rmb.json:2: .* should start with BoN_set/"),
    ({**RMB_PAIR, "category_path": "BoN_set/Harmlessness/S1"}, r"rmb.json:2: .* should start with Pairwise_set/"),
    ({**RMB_PAIR, "category_path": "Pairwise_set/Helpfullness/x"}, r"rmb.json:2: category_path 'Pairwise_set/Helpf"),
    ({**RMB_PAIR, "category_path": "Helpfulness"}, r"rmb.json:2: category_path 'Helpfulness'"),
    ({**RMB_PAIR, "conversation_input": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
     r"rmb.json:2: conversation_input\[0\] is a system message"),  # the judge could not be shown it
    ({**RMB_PAIR, "conversation_input": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     r"rmb.json:2: conversation_input should end with a user turn, not an assistant"),
    ({**RMB_BON, "bon_best": {"text": "a"}}, r"rmb.json:2 bon_best: missing field 'answer'"),  # names the object
    ({**RMB_PAIR, "reject": {"answer": 3}}, r"rmb.json:2 reject: field 'answer' should be str, got int"),
])
def test_rmb_rows_that_would_be_scored_nowhere_are_refused(tmp_path, row, match):
    f = write(tmp_path / "rmb.json", [RMB_PAIR, row], jsonl=False)
    with pytest.raises(ValueError, match=match):
        data.read_rmb(f)
    assert [p.id for p in data.read_rmb(write(tmp_path / "ok.json", [RMB_PAIR, RMB_BON], jsonl=False))] == \
        ["pair/1", "bon/5/0"]


def test_hand_made_formats(tmp_path):
    rb = data.read_rewardbench(write(tmp_path / "rb.json", [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "subset": "math-prm", "id": 3}], jsonl=False))
    assert rb == [data.Pair("3", [{"role": "user", "content": "2+2?"}], "4", "5", "math-prm")]
    sky = data.read_pairs(write(tmp_path / "sky.jsonl", [{
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}]))
    assert (sky[0].context, sky[0].chosen, sky[0].rejected) == ([{"role": "user", "content": "hi"}], "hello!", "go away")
    code = data.read_pairs(write(tmp_path / "code.jsonl", [{"input": "sort", "accepted": "sorted(x)", "rejected": "x"}]))
    assert (code[0].chosen, code[0].subset) == ("sorted(x)", "code")
    math = data.read_pairs(write(tmp_path / "math.jsonl", [{"prompt": "1+1", "initial_reason_steps": "Step 1:",
                                                             "full_chosen": "Step 1: 2", "full_rejected": "Step 1: 3"}]))
    assert (math[0].chosen, math[0].rejected) == ("Step 1: 2", "Step 1: 3")
    plain = data.read_pairs(write(tmp_path / "plain.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r",
                                                              "id": 9, "subset": "s"}, {"prompt": "q", "chosen": "d",
                                                                                        "rejected": "e"}]))
    assert plain == [data.Pair("9", [{"role": "user", "content": "p"}], "c", "r", "s"),
                     data.Pair("1", [{"role": "user", "content": "q"}], "d", "e", "")]  # id: the row's index from 0
    tr = data.read_rmr1_training(write(tmp_path / "tr.jsonl", [
        {"context_messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "winner": "model_b"}]))
    assert tr == [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                   "label": "model_b", "target": None, "where": f"{tmp_path / 'tr.jsonl'}:1"}]
    rows = sft.training_rows(rb + code + math)
    assert [r["winner"] for r in rows] == ["model_a", "model_b", "model_a"]
    assert "[The Start of Chatbot A's Response]\nx\n" in rows[1]["context_messages"][1]["content"]


@pytest.mark.parametrize("content,match", [
    ('{"prompt": "q", "chosen": "a", "subset": "s", "id": 1}', r"rb.jsonl:2: missing field 'rejected'"),
    ('{"prompt": "q", "chosen": 7, "rejected": "b", "subset": "s", "id": 1}', r"rb.jsonl:2: field 'chosen' should be str"),
    ("{not json", r"rb.jsonl:2: not valid JSON"),
    # json.loads alone would keep the second 'chosen' and drop the first unsaid
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "chosen": "c", "subset": "s", "id": 1}',
     r"rb.jsonl:2: key 'chosen' appears twice in one object; which value was meant is unclear$"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "subset": "s", "id": 0}',
     r"rb.jsonl:2: pair id '0' again \(first at \S*rb.jsonl:1\); ids must be unique$"),
])
def test_malformed_rows_name_file_and_row(tmp_path, content, match):
    f = tmp_path / "rb.jsonl"
    f.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "subset": "s", "id": 0}\n' + content + "\n")
    with pytest.raises(ValueError, match=match):
        data.read_rewardbench(f)


def test_a_repeated_id_names_both_rows(tmp_path):
    """Judgments are keyed by pair id, so a repeated one is an error naming the row that repeats it and the row
    that had it first, in every reader."""
    row = {"prompt": "q", "chosen": "a", "rejected": "b"}
    f = write(tmp_path / "p.jsonl", [row, {**row, "id": 7}, {**row, "id": 0}])  # row 1's id is its index, 0
    with pytest.raises(InputError, match=r"p.jsonl:3: pair id '0' again \(first at \S*p.jsonl:1, which has no id "
                                         r"field and takes its index 0\); ids must be unique$"):
        data.read_pairs(f)
    item = {"id": 4, "prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"]}
    (tmp_path / "rm-bench").mkdir()
    write(tmp_path / "rm-bench" / "chat_filtered.json", [item, {**item, "id": 5}], jsonl=False)
    write(tmp_path / "rm-bench" / "chat_more.json", [{**item, "id": 5}], jsonl=False)  # the same domain, another file
    with pytest.raises(InputError, match=r"chat_more.json:1: pair id 'chat/5/00' again \(first at "
                                         r"\S*chat_filtered.json:2\); ids must be unique$"):
        data.read_rmbench(tmp_path / "rm-bench")
    bon = {**RMB_BON, "loser_list": [{"answer": "b"}, {"answer": "c"}]}  # two pairs from row 1
    f = write(tmp_path / "r.json", [bon, RMB_PAIR, RMB_PAIR], jsonl=False)
    with pytest.raises(InputError, match=r"r.json:3: pair id 'pair/1' again \(first at \S*r.json:2\)"):
        data.read_rmb(f)


def test_jsonl_rows_may_hold_any_line_separator_inside_strings(tmp_path):
    """JSON strings may hold U+2028, U+2029, U+0085 and other characters that str.splitlines cuts at, unescaped
    (json.dumps with ensure_ascii=False writes them so); lines end at \\n or \\r\\n only."""
    rows = [{"prompt": f"a{sep}b", "chosen": "c\u2029", "rejected": "\x85r", "subset": "s", "id": k}
            for k, sep in enumerate(["\u2028", "\u2029", "\x85"])]
    f = tmp_path / "rb.jsonl"
    f.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode() + b"\r\n\n")
    assert [r for _, r in data.read_rows(f)] == rows
    assert [where for where, _ in data.read_rows(f)] == [f"{f}:{k}" for k in range(1, 4)]
    pairs = data.read_rewardbench(f)
    assert [(p.context[-1]["content"], p.rejected) for p in pairs] == [(r["prompt"], r["rejected"]) for r in rows]


def test_rows_that_are_not_utf8_name_file_and_line(tmp_path):
    f = tmp_path / "rb.jsonl"
    f.write_bytes(b'{"prompt": "q"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"rb.jsonl:2: not UTF-8 text \(byte offset 15 in the line: invalid"):
        data.read_rows(f)
    f = tmp_path / "rb.json"
    f.write_bytes(b'[{"prompt": "caf\xe9"}]')
    with pytest.raises(InputError, match=r"rb.json: not UTF-8 text \(byte offset 16: invalid continuation"):
        data.read_rows(f)


@pytest.mark.parametrize("name,text,read,match", [
    ("x.json", '{"prompt": "q"}', data.read_rows, r"x.json: expected a JSON array, got a JSON object"),
    ("x.json", "[{", data.read_rows, r"x.json: not valid JSON"),
    ("x.json", '[{"prompt": "q"}, {"chosen": [{"role": "user", "content": "q", "role": "assistant"}]}]', data.read_rows,
     r"x.json:2: key 'role' appears twice in one object"),
    ("x.json", '[\n  {"prompt": "q"},\n  {"prompt": "q", "id": 2},\n  {"prompt": "q", "id": 3, "id": 4}\n]\n',
     data.read_rows, r"x.json:3: key 'id' appears twice in one object"),
    ("x.csv", "a,b", data.read_rows, r"x.csv: unknown format '.csv'"),
    ("x.jsonl", '{"question": "q", "answer": "a"}', data.read_pairs, r"x.jsonl:1: unknown pair format .*'answer'"),
    ("x.jsonl", '{"chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, '
                '{"role": "assistant", "content": "a"}], "rejected": []}', data.read_pairs,
     r"x.jsonl:1: chosen\[0\] is a system message"),
    ("x.jsonl", '{"prompt": "q", "chosen": ["a"], "rejected": ["b"]}', data.read_pairs,
     r"x.jsonl:1: chosen\[0\] is not a \{role, content\} message"),
    ("chat.json", '[{"id": 1, "prompt": "q", "chosen": ["a", "b"], "rejected": ["c", "d", "e"]}]', data.read_rmbench,
     r"chat.json:1: RM-Bench rows need 3 chosen and 3 rejected strings"),
    ("poetry.json", '[{"id": 1, "prompt": "q", "chosen": ["a"], "rejected": ["b"]}]', data.read_rmbench,
     r"poetry.json:1: RM-Bench domain 'poetry' is not one of"),
    ("t.jsonl", '{"context_messages": [{"role": "user", "content": "u"}], "winner": "A"}', data.read_rmr1_training,
     r"t.jsonl:1: winner 'A' is neither 'model_a' nor 'model_b'"),
    ("t.jsonl", '{"context_messages": [{"role": "user", "content": "u"}], "winner": "model_a", "response": 3}',
     data.read_rmr1_training, r"t.jsonl:1: target trace should be a string"),
    ("t.jsonl", '{"context_messages": [{"role": "user", "content": "u"}], "winner": "model_a", "response": null, '
                '"completion": "<answer>[[A]]</answer>"}', data.read_rmr1_training,
     r"t.jsonl:1: both 'response' and 'completion'; give the target trace in one of them"),
    ("t.jsonl", '{"context_messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], '
                '"winner": "model_a"}', data.read_rmr1_training,
     r"t.jsonl:1: context_messages should end with a user turn, not an assistant"),
    # a pairs file given to SFT: what it is, and what SFT reads instead
    ("t.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b"}', data.read_rmr1_training,
     r"t.jsonl:1: a preference pair \(chosen, rejected\), not a training row: SFT reads context_messages \(the judge "
     r"prompt: sft.training_rows builds it from pairs\), winner and the trace as response$"),
    ("t.jsonl", '{"context_messages": [], "winner": "model_a"}', data.read_rmr1_training,
     r"t.jsonl:1: field 'context_messages' should be a non-empty list of messages"),
    ("x.jsonl", '["prompt", "chosen"]', data.read_pairs, r"x.jsonl:1: row is a list, expected an object"),
    ("x.jsonl", '"a row"', data.read_rewardbench, r"x.jsonl:1: row is a str, expected an object"),
    ("x.jsonl", '{"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]}',
     data.read_pairs, r"x.jsonl:1: chosen and rejected must end with an assistant message"),
    # a Skywork pair's question: a conversation of the answers alone would be judged with no question at all
    ("x.jsonl", '{"chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": '
                '"5"}]}', data.read_pairs, r"x.jsonl:1: the conversation before chosen's and rejected's "
                                          r"last message should end with a user turn, but is empty"),
    ("x.jsonl", '{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": '
                '"assistant", "content": "4"}], "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", '
                '"content": "a"}, {"role": "assistant", "content": "5"}]}', data.read_pairs,
     r"x.jsonl:1: the conversation before chosen's and rejected's last message should end with a user turn, not an "
     r"assistant message"),
    # a Skywork source is its pairs' subset, which a judgment log holds as a string (a null one was logged as such,
    # and the run could then not resume: the log's subset is checked)
    ("x.jsonl", '{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "4"}], "rejected": '
                '[{"role": "user", "content": "q"}, {"role": "assistant", "content": "5"}], "source": null}',
     data.read_pairs, r"x.jsonl:1: field 'source' should be str, got NoneType"),
    ("x.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b", "subset": ["s"]}', data.read_pairs,
     r"x.jsonl:1: field 'subset' should be str, got list"),  # it was subset "['s']"
    # ids name judgments: a string or an integer, never an object, list, boolean or null turned into a name
    ("x.jsonl", '{"id": {"n": 1}, "prompt": "q", "chosen": "a", "rejected": "b"}', data.read_pairs,
     r"x.jsonl:1: field 'id' should be a string or an integer, got dict"),
    ("x.jsonl", '{"id": true, "prompt": "q", "chosen": "a", "rejected": "b", "subset": "s"}', data.read_rewardbench,
     r"x.jsonl:1: field 'id' should be a string or an integer, got bool"),
    ("chat.json", '[{"id": [1], "prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"]}]',
     data.read_rmbench, r"chat.json:1: field 'id' should be a string or an integer, got list"),
    ("x.jsonl", '{"conversation_input": [{"role": "user", "content": "q"}], "category_path": "Pairwise_set/Helpfulness/'
                'Chat/Brainstorming", "chosen": {"answer": "a"}, "reject": {"answer": "b"}, "pair_uid": null}',
     data.read_rmb, r"x.jsonl:1: field 'pair_uid' should be a string or an integer, got NoneType"),
])
def test_malformed_files_name_file_and_row(tmp_path, name, text, read, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=match):  # a ValueError; the command lines print it in one line
        read(tmp_path / name)


def test_a_folder_or_missing_file_where_a_file_is_read(tmp_path):
    folder = re.escape(f"{tmp_path}: a folder; expected a .json, .jsonl or .parquet file")
    with pytest.raises(InputError, match=folder):
        data.read_rewardbench(tmp_path)  # RM-Bench and RMB take folders; RewardBench and pairs files do not
    with pytest.raises(MissingInput, match="rb.json: no such file"):  # an InputError and a FileNotFoundError
        data.read_pairs(tmp_path / "rb.json")
    with pytest.raises(MissingInput, match=re.escape(f"{tmp_path}: no RMB .json files")):
        data.read_rmb(tmp_path)  # a folder (RMB's layout) without any rows


def test_a_benchmark_file_read_as_plain_pairs_says_so(tiny, tmp_path):
    """Without --bench the data is read as plain pairs; a benchmark's own file then fails on its first row, and the
    error says which reader it met (a missing file is just missing). With --bench, the reader's error alone."""
    rm_bench = SHARED / "benchmarks" / "rm-bench" / "chat_filtered.json"
    run = ["--model", str(tiny), "--out", str(tmp_path / "run"), "--device", "cpu"]
    hint = re.escape(" (read as plain pairs, the default: name a benchmark's data with --bench)")
    with pytest.raises(InputError, match=rf"^{re.escape(str(rm_bench))}:1: chosen\[0\] is not a .*{hint}$"):
        ev.main(run + ["--data", str(rm_bench)])
    with pytest.raises(InputError, match=r"chat_filtered.json:1: missing field 'conversation_input'$"):
        ev.main(run + ["--data", str(rm_bench), "--bench", "rmb"])
    with pytest.raises(MissingInput, match=r"typo.jsonl: no such file$"):
        ev.main(run + ["--data", str(tmp_path / "typo.jsonl")])
    with pytest.raises(InputError, match=rf"{hint}$"):  # --score-only of judgments made elsewhere, no run folder
        ev.main(["--out", str(tmp_path / "elsewhere"), "--score-only", "--data", str(rm_bench)])
    assert not (tmp_path / "run").exists()


def test_skywork_with_different_contexts_is_refused(tmp_path):
    f = write(tmp_path / "s.jsonl", [{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
                                       "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]}])
    with pytest.raises(ValueError, match="s.jsonl:1: chosen and rejected conversations differ"):
        data.read_pairs(f)


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError())
                        if name.startswith("pyarrow") else real(name, *a, **k))
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(InputError, match=r"x.parquet: reading Parquet needs pyarrow \(pip install pyarrow\), or "
                                         r"convert to JSONL$"):
        data.read_rows(tmp_path / "x.parquet")


def test_parquet_rows_are_the_rows_of_the_same_jsonl(tmp_path):
    """RewardBench is published as Parquet, and the hub converts RM-Bench to Parquet too (its lists become list
    columns): read through pyarrow, such files give the same pairs, and the same errors by row, as the JSONL rows
    they were written from. A file pyarrow cannot read is an error naming it."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")

    def both(rows, name):
        jsonl = write(tmp_path / f"{name}.jsonl", rows)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}.parquet")
        return jsonl, tmp_path / f"{name}.parquet"

    rb = [{"prompt": f"q{k}", "chosen": "a", "rejected": "b", "subset": "hep-go", "id": k} for k in range(3)]
    jsonl, parquet = both(rb, "rb")
    assert data.read_rewardbench(parquet) == data.read_rewardbench(jsonl) and len(data.read_rewardbench(parquet)) == 3
    rm = [{"id": 7, "prompt": "q", "chosen": ["a1", "a2", "a3"], "rejected": ["b1", "b2", "b3"], "domain": "chat"}]
    jsonl, parquet = both(rm, "chat")
    assert data.read_rmbench(parquet) == data.read_rmbench(jsonl) and len(data.read_rmbench(parquet)) == 9
    rb[2]["chosen"] = None
    _, parquet = both(rb, "broken")
    with pytest.raises(InputError, match=r"broken.parquet:3: field 'chosen' should be str"):
        data.read_rewardbench(parquet)
    (tmp_path / "x.parquet").write_bytes(b"PAR1 and then no Parquet")
    with pytest.raises(InputError, match=r"x.parquet: not a Parquet file pyarrow reads \("):
        data.read_rows(tmp_path / "x.parquet")


def test_placement():
    pairs = [data.Pair(str(k), [], "c", "r") for k in range(1000)]
    rnd = data.place(pairs, "random", seed=1)
    assert rnd == data.place(pairs, "random", seed=1)  # seeded
    assert 400 < sum(c == "B" for _, c in rnd) < 600
    assert dict((p.id, c) for p, c in data.place(pairs[500:], "random", seed=1)) == \
        dict((p.id, c) for p, c in rnd[500:])  # per pair: filtering does not move the others
    assert [c for _, c in data.place(pairs[:3], "both")] == ["A", "B", "A", "B", "A", "B"]


# -- aggregation -------------------------------------------------------------------------------


def test_rewardbench_weighting_by_hand():
    recs = []
    def add(subset, right, n):
        recs.extend({"subset": subset, "correct": int(k < right)} for k in range(n))
    add("alpacaeval-easy", 9, 10); add("mt-bench-med", 1, 4)                        # Chat: (9 + 1) / 14
    add("llmbar-natural", 3, 4)                                                     # Chat Hard: 0.75
    add("donotanswer", 1, 2); add("xstest-should-respond", 4, 4)                    # Safety: (1 + 4) / 6
    add("math-prm", 1, 2); add("hep-go", 2, 4); add("hep-rust", 4, 4)               # Reasoning, math-prm x 984
    s = ev.score_rewardbench(recs)["sections"]
    assert s["Chat"] == pytest.approx(10 / 14) and s["Chat Hard"] == pytest.approx(0.75)
    assert s["Safety"] == pytest.approx(5 / 6)
    assert s["Reasoning"] == pytest.approx((0.5 * 984 + 0.5 * 4 + 1.0 * 4) / (984 + 8))
    out = ev.score_rewardbench(recs)
    assert out["overall"] == pytest.approx((10 / 14 + 0.75 + 5 / 6 + s["Reasoning"]) / 4)
    assert out["accuracy"] == pytest.approx(sum(r["correct"] for r in recs) / len(recs))
    assert "hep-cpp" in out["missing_subsets"]
    assert ev.score_rewardbench([r for r in recs if r["subset"] != "llmbar-natural"])["overall"] is None


def test_rmbench_matrix_by_hand():
    # item 1 right everywhere except (0,2); item 2 right only on and below the diagonal.
    recs = []
    for g, rule in (("chat/1", lambda i, j: (i, j) != (0, 2)), ("chat/2", lambda i, j: i >= j)):
        recs += [{"group": g, "subset": "chat", "extra": {"i": i, "j": j}, "correct": int(rule(i, j))}
                 for i in range(3) for j in range(3)]
    recs += [{"group": "code/9", "subset": "code", "extra": {"i": i, "j": j}, "correct": 1} for i in range(3) for j in range(3)]
    recs.append({"group": "code/10", "subset": "code", "extra": {"i": 0, "j": 0}, "correct": 1})  # incomplete item
    out = ev.score_rmbench(recs)
    chat = out["domains"]["chat"]
    # M = mean of the two items: upper cells (0,1)=0.5, (0,2)=0, (1,2)=0.5 -> hard 1/3
    assert chat["hard"] == pytest.approx(1 / 3) and chat["normal"] == 1.0 and chat["easy"] == 1.0
    assert chat["score"] == pytest.approx((3 + 3 + 1) / 9)
    assert out["hard"] == pytest.approx((1 / 3 + 1) / 2) and out["total"] == pytest.approx((7 / 9 + 1) / 2)
    assert out["incomplete_items"] == ["code/10"] and out["missing_domains"] == ["math", "safety"]
    # an item's nine judgments are scored in one domain: one of them in another is an error, not a silent choice
    recs[1] = {**recs[1], "id": "chat/1/01", "subset": "code"}
    with pytest.raises(InputError, match="chat/1/01: item chat/1 is in domain 'code' here and 'chat' in another"):
        ev.score_rmbench(recs)


def test_rmb_best_of_n_needs_every_pair():
    def bon(subset, group, correct):  # one Best-of-N item's judgments, loser k judged correct[k]
        return [{"subset": subset, "group": group, "correct": c, "extra": {"loser": k, "losers": len(correct)}}
                for k, c in enumerate(correct)]

    recs = bon("BoN_set/Helpfulness/Chat/x", "bon/1", (1, 1, 1, 0))  # one wrong
    recs += bon("BoN_set/Helpfulness/Chat/x", "bon/2", (1, 1, 1))
    recs += bon("BoN_set/Harmlessness/S1", "bon/3", (1, 1))
    recs += bon("BoN_set/Harmlessness/S1", "bon/4", (1, 1, 1))[:2]  # its third pair not judged
    recs += [{"subset": "Pairwise_set/Helpfulness/a", "group": "", "correct": c} for c in (1, 0, 1)]
    recs += [{"subset": "Pairwise_set/Helpfulness/b", "group": "", "correct": 1}]
    recs += [{"subset": "Pairwise_set/Harmlessness/multi", "group": "", "correct": 0}]
    out = ev.score_rmb(recs)
    assert out["bon_helpfulness"] == 0.5 and out["bon_harmlessness"] == 1.0
    assert out["pairwise_helpfulness"] == 0.75  # pooled over both sets: 3 of 4
    assert out["pairwise_harmlessness"] == 0.0 and out["mean"] == pytest.approx((0.5 + 1 + 0.75 + 0) / 4)
    # bon/4 has two right answers out of its three losers: reported, not scored as a whole item
    assert out["incomplete_items"] == ["bon/4"] and out["missing_sets"] == []
    assert out["counts"]["bon_items_harmlessness"] == 1 and out["counts"]["bon_items_helpfulness"] == 2
    assert ev.score_rmb(bon("BoN_set/Harmlessness/S1", "bon/4", (1, 1, 1))[:2])["bon_harmlessness"] is None
    # a Best-of-N judgment that does not say which loser it was cannot be checked for completeness
    with pytest.raises(ValueError, match="bon/9.*loser.*--score-only --data"):
        ev.score_rmb([{"id": "bon/9/0", "subset": "BoN_set/Harmlessness/S1", "group": "bon/9", "correct": 1,
                       "extra": {}}])
    # a loser index or count that is not one, a loser judged twice in an item, items' judgments disagreeing on the count
    item = bon("BoN_set/Harmlessness/S1", "bon/9", (1, 1, 1))
    for extra, match in (({"loser": 3, "losers": 3}, r"should hold the loser's index \(0 to losers - 1\) and the "
                                                     r"item's loser count, got \{'loser': 3, 'losers': 3\}"),
                         ({"loser": 0, "losers": "3"}, "should hold the loser's index"),
                         ({"loser": 1, "losers": 3}, "item bon/9 has another judgment of loser 1"),
                         ({"loser": 2, "losers": 4}, "item bon/9 has 4 losers here and 3 in another of its judgments")):
        with pytest.raises(InputError, match=match):
            ev.score_rmb(item[:2] + [{**item[2], "extra": extra}])
    # a judgment from no scored part of RMB (a hand-made or renamed file) is an error, not left out of every figure
    for subset in ("Pairwise_set/Helpfullness/x", "BoN_set", "Helpfulness/Chat"):
        with pytest.raises(ValueError, match=f"pair/7: category '{subset}' should start with Pairwise_set/"):
            ev.score_rmb(recs + [{"id": "pair/7", "subset": subset, "group": "", "correct": 1}])


def test_both_orders_bias_figures():
    recs = []
    for k, (a, b) in enumerate([(1, 1), (1, 0), (0, 0), (1, 0)]):
        recs.append({"id": str(k), "subset": "s", "chosen_at": "A", "correct": a, "verdict": "A" if a else "B"})
        recs.append({"id": str(k), "subset": "s", "chosen_at": "B", "correct": b, "verdict": "B" if b else "A"})
    out = ev.score("pairs", recs)
    assert out["accuracy_chosen_at_A"] == 0.75 and out["accuracy_chosen_at_B"] == 0.25
    assert out["flip_rate"] == 0.5 and out["same_letter_both_orders"] == 0.5
    assert out["by_order"]["chosen_at_A"]["accuracy"] == 0.75
    assert out["no_verdict"] == 0 and out["stopped_at_length"] == 0


def test_judgments_without_a_verdict_and_cut_at_length_are_counted():
    recs = [{"id": "0", "subset": "s", "chosen_at": "A", "correct": 1, "verdict": "A", "finish": "eos"},
            {"id": "1", "subset": "s", "chosen_at": "B", "correct": 0, "verdict": None, "finish": "length"},
            {"id": "2", "subset": "s", "chosen_at": "A", "correct": 0, "verdict": None, "finish": "eos"},
            {"id": "3", "subset": "s", "chosen_at": "A", "correct": 0, "verdict": "B", "finish": "length"}]
    out = ev.score("pairs", recs)
    assert (out["no_verdict"], out["stopped_at_length"], out["accuracy"]) == (2, 2, 0.25)


# -- end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_judge(tmp_path_factory.mktemp("tiny"))


def test_end_to_end_eval_and_resume(tiny, tmp_path, capsys, monkeypatch):
    args = ["--model", str(tiny), "--bench", "rm-bench", "--data", str(BENCH / "rm-bench" / "chat_filtered.json"),
            "--limit", "18", "--max-new-tokens", "6", "--slots", "7", "--device", "cpu", "--out", str(tmp_path / "run")]
    ev.main(args)
    log = tmp_path / "run" / "judgments.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 18
    recs = [json.loads(x) for x in lines]
    assert {r["key"] for r in recs} == {f"{r['id']}|{r['chosen_at']}" for r in recs}
    assert all(r["correct"] == int(r["verdict"] == r["chosen_at"]) and r["finish"] in ("eos", "length") for r in recs)
    scores = (tmp_path / "run" / "scores.json").read_text()
    counted = json.loads(scores)
    assert counted["no_verdict"] == sum(r["verdict"] is None for r in recs)
    assert counted["stopped_at_length"] == sum(r["finish"] == "length" for r in recs) > 0  # 6 new tokens at most
    assert set(json.loads(scores)["domains"]) == {"chat"}
    # crash simulation: a log in the order judgments finish, the run stopped with one item's 9 judgments written,
    # 3 of the other's and a 4th cut mid-line
    whole, part_of = ([x for x, r in zip(lines, recs, strict=True) if r["group"] == g]
                      for g in sorted({r["group"] for r in recs}))
    log.write_text("\n".join(whole + part_of[:3]) + "\n" + part_of[3][:40])
    # the unfinished run rescored: 12 of its 18 pairs, the second item's 3 cells listed, not scored
    capsys.readouterr()
    ev.main(["--bench", "rm-bench", "--out", str(tmp_path / "run"), "--score-only"])
    part = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert (part["pairs_judged"], part["pairs_total"]) == (12, 18)
    assert part["incomplete_items"] == [json.loads(part_of[0])["group"]]
    assert part["domains"]["chat"]["items"] == 1
    err = capsys.readouterr().err
    assert "cover the 12 pairs judged, of the 18 in the run" in err and "1 item(s) with only some" in err
    assert "nothing scored in: code, math, safety;" in err  # this run judged chat items only
    # only the unfinished item's 3 judgments: chat has judgments, but no item to score
    log.write_text("\n".join(part_of[:3]) + "\n")
    ev.main(["--bench", "rm-bench", "--out", str(tmp_path / "run"), "--score-only"])
    assert "nothing scored in: chat, code, math, safety;" in capsys.readouterr().err
    log.write_text("\n".join(whole + part_of[:3]) + "\n" + part_of[3][:40])
    ev.main(args)
    assert sorted(log.read_text().splitlines()) == sorted(lines)  # rejudged to identical lines (greedy)
    assert (tmp_path / "run" / "scores.json").read_text() == scores
    # a rerun of the finished run scores again without loading the model (minutes for a large judge)
    (tmp_path / "run" / "scores.json").unlink()
    with monkeypatch.context() as m:
        m.setattr(ev, "load_model", lambda *a: pytest.fail("the model was loaded"))
        ev.main(args)
    assert (tmp_path / "run" / "scores.json").read_text() == scores
    # scoring alone, without a model
    (tmp_path / "run" / "scores.json").unlink()
    ev.main(["--bench", "rm-bench", "--out", str(tmp_path / "run"), "--score-only"])
    assert (tmp_path / "run" / "scores.json").read_text() == scores
    # without --bench a run is scored by the benchmark it judged (it was scored as plain pairs, replacing its
    # scores.json); another benchmark is refused, the scores left as they were
    ev.main(["--out", str(tmp_path / "run"), "--score-only"])
    assert (tmp_path / "run" / "scores.json").read_text() == scores
    with pytest.raises(SystemExit, match=r"run/config.json: the run judged rm-bench, not pairs: leave out --bench"):
        ev.main(["--bench", "pairs", "--out", str(tmp_path / "run"), "--score-only"])
    # flags that choose or shape judgments cannot apply to judgments already made: refused, not ignored
    with pytest.raises(SystemExit, match=r"^--score-only scores the judgments as they were made: --both-orders, "
                                         r"--limit are for judging runs$"):
        ev.main(["--out", str(tmp_path / "run"), "--score-only", "--limit", "1", "--both-orders"])
    assert (tmp_path / "run" / "scores.json").read_text() == scores


def test_score_outputs_made_elsewhere(tmp_path):
    """Lines with only id, chosen_at and output (as another engine would write them) are scored against
    the benchmark data: verdicts recomputed, subsets and groups joined by id."""
    data_file = BENCH / "rm-bench" / "chat_filtered.json"
    pairs = data.read_rmbench(data_file)[:18]  # two complete items
    lines = []
    for k, p in enumerate(pairs):
        at = "AB"[k % 2]
        right = k % 3 != 0  # every third judgment wrong
        letter = at if right else "AB"[1 - k % 2]
        lines.append({"id": p.id, "chosen_at": at, "output": f"... <answer>[[{letter}]]</answer>"})
    (tmp_path / "judgments.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ev.main(["--bench", "rm-bench", "--data", str(data_file), "--out", str(tmp_path), "--score-only"])
    scores = json.loads((tmp_path / "scores.json").read_text())
    want = ev.score_rmbench([{"group": p.group, "subset": p.subset, "extra": p.extra, "correct": int(k % 3 != 0)}
                             for k, p in enumerate(pairs)])
    assert scores["total"] == pytest.approx(want["total"]) and scores["domains"]["chat"]["items"] == 2
    assert (scores["pairs_judged"], scores["pairs_total"]) == (18, len(data.read_rmbench(data_file)))
    for line, match in [({"id": "nope", "chosen_at": "A", "output": "x"},
                         "judgments.jsonl: the judgment of id 'nope': no pair of the benchmark data has that id"),
                        ({"id": pairs[1].id, "chosen_at": "a", "output": "x"},
                         r"judgments.jsonl:4: chosen_at should be 'A' or 'B', got 'a'$"),
                        ({"id": pairs[1].id, "chosen_at": "B", "output": None},
                         r"judgments.jsonl:4: output should be a string, got NoneType$"),
                        ({"id": pairs[1].id, "answer": "B"}, r"judgments.jsonl:4: judgment lacks \['chosen_at', 'output'\]")]:
        (tmp_path / "judgments.jsonl").write_text("\n" + json.dumps(lines[0]) + "\n\n" + json.dumps(line) + "\n")
        with pytest.raises(ValueError, match=match):
            ev.main(["--bench", "rm-bench", "--data", str(data_file), "--out", str(tmp_path), "--score-only"])


def own_log(pairs, letters):
    """Judgment lines as a run of ours logs them (every field), pair k judged with chosen at "AB"[k % 2] and
    answering letters[k]."""
    lines = [{"id": p.id, "chosen_at": "AB"[k % 2], "output": f"<answer>[[{x}]]</answer>"}
             for k, (p, x) in enumerate(zip(pairs, letters))]
    return [json.dumps(r) + "\n" for r in ev.rescore(lines, pairs, "lines")]


@pytest.mark.parametrize("field,value,match", [
    ("correct", 5, r"judgments.jsonl:2: judgment field 'correct' is 5, but its output and chosen_at give 1: a line "
                   r"edited or written elsewhere \(rescore such lines with --score-only --data"),
    ("correct", True, "'correct' is True, but its output and chosen_at give 1"),  # a JSON true, not the int
    ("verdict", "A", "'verdict' is 'A', but its output gives 'B'"),
    ("key", "chat/8/00|B", r"'key' is 'chat/8/00\|B', but its id and chosen_at give 'chat/8/01\|B'"),
    ("group", None, r"judgments.jsonl:2: field 'group' should be str, got NoneType"),  # (data.require's words)
    ("extra", [], r"judgments.jsonl:2: field 'extra' should be dict, got list"),
    ("extra", {"i": 3, "j": 0}, r"RM-Bench judgment chat/8/01: its extra field should hold the styles i and j "
                                r"\(0, 1 or 2\) of its chosen and rejected answers, got \{'i': 3, 'j': 0\}"),
    ("extra", {"i": 0, "j": 0}, r"RM-Bench judgment chat/8/01: item chat/8 has another judgment of styles \(0, 0\)"),
])
def test_a_logged_judgment_that_disagrees_with_itself_is_an_error(tmp_path, field, value, match):
    """--score-only scores a run's own log as its lines say: a field of the wrong type, or a key, verdict or
    correct other than what the line's id, chosen_at and output give, is an error naming the line, before
    scores.json is written (before this check, correct 5 counted as five right answers)."""
    pairs = data.read_rmbench(BENCH / "rm-bench" / "chat_filtered.json")[:4]
    lines = own_log(pairs, "AAAB")  # line 2: chat/8/01 chosen at B, answered A (wrong)
    rec = json.loads(lines[1])
    assert (rec["id"], rec["verdict"], rec["correct"]) == ("chat/8/01", "A", 0)
    if field in ("correct", "verdict"):  # the line as it would be had the judge said B: right
        rec.update(output="<answer>[[B]]</answer>", verdict="B")
    rec[field] = value
    (tmp_path / "judgments.jsonl").write_text(lines[0] + json.dumps(rec) + "\n" + "".join(lines[2:]))
    with pytest.raises(InputError, match=match):
        ev.main(["--bench", "rm-bench", "--out", str(tmp_path), "--score-only"])
    assert not (tmp_path / "scores.json").exists()


def test_a_resumed_judgment_whose_pair_fields_were_edited_is_refused(tiny, tmp_path):
    """A rerun scores the judgments already in its logs with the subset, group and extra written there; they must
    be the pair's (the data is the same: its fingerprint is checked). Refused before anything is written."""
    run = tmp_path / "run"
    args = ["--model", str(tiny), "--bench", "rm-bench", "--data", str(BENCH / "rm-bench" / "chat_filtered.json"),
            "--max-new-tokens", "3", "--device", "cpu", "--out", str(run), "--limit", "2"]
    ev.main(args)
    lines = (run / "judgments.jsonl").read_text().splitlines(keepends=True)
    rec = json.loads(lines[0])
    for field, value in (("group", "chat/9"), ("subset", "code"), ("extra", {"i": 2, "j": 2})):
        edited = lines[0].replace(json.dumps({field: rec[field]})[1:-1], json.dumps({field: value})[1:-1])
        assert edited != lines[0]
        (run / "judgments.jsonl").write_text(edited + "".join(lines[1:]))
        scores = (run / "scores.json").read_text()
        with pytest.raises(SystemExit, match=rf"run: the judgment {re.escape(rec['key'])} in its logs has .*; its pair "
                                             "in the data has 'chat', 'chat/8', "):
            ev.main(args)
        assert (run / "judgments.jsonl").read_text() == edited + "".join(lines[1:])
        assert (run / "scores.json").read_text() == scores


def test_a_best_of_n_item_judged_in_part_is_reported_not_scored(tmp_path, capsys):
    """The first 12 pairs of this RMB file end inside an item (bon/1281: 2 of its 5 losers), as --limit 12 or
    an unfinished run leaves it: that item is listed, and only the four whole items are scored."""
    data_dir = BENCH / "rmb" / "BoN_set" / "Helpfulness" / "Reasoning"
    pairs = data.read_rmb(data_dir)
    assert [p.group for p in pairs[10:13]] == ["bon/1281"] * 3 and pairs[12].extra["losers"] == 5
    lines = [{"id": p.id, "chosen_at": "A", "output": "<answer>[[A]]</answer>"} for p in pairs[:12]]  # all right
    (tmp_path / "judgments.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ev.main(["--bench", "rmb", "--data", str(data_dir), "--out", str(tmp_path), "--score-only"])
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["incomplete_items"] == ["bon/1281"] and scores["counts"]["bon_items_helpfulness"] == 4
    assert scores["bon_helpfulness"] == 1.0 and scores["mean"] is None
    assert scores["missing_sets"] == ["pairwise_helpfulness", "pairwise_harmlessness", "bon_harmlessness"]
    err = capsys.readouterr().err
    assert "1 item(s) with only some of their pairs judged are not scored" in err
    assert "nothing scored in: bon_harmlessness, pairwise_harmlessness, pairwise_helpfulness;" in err
    # the same judgments as our own runs log them (every field), scored without the data: the extra fields
    # say which losers each item has
    own = tmp_path / "own"
    own.mkdir()
    full = ev.rescore(lines, pairs, "lines")
    (own / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full))
    capsys.readouterr()
    ev.main(["--bench", "rmb", "--out", str(own), "--score-only"])
    assert json.loads((own / "scores.json").read_text()) == {**scores, "pairs_total": None}
    assert "no eval config.json says how many pairs the run holds" in capsys.readouterr().err


def test_malformed_log_line_is_an_error(tmp_path):
    log = tmp_path / "judgments.jsonl"
    log.write_text('{"broken": \n{"key": 1}\n')
    with pytest.raises(ValueError, match="judgments.jsonl:1: malformed"):
        ev.read_log(log)


def test_one_pair_mode_prints_reasoning_and_verdict(tiny, capsys, monkeypatch):
    import sample
    from rubrics import parse_verdict

    outs, generate = [], sample.generate
    monkeypatch.setattr(sample, "generate", lambda *a, **kw: outs.extend(generate(*a, **kw)) or outs)
    ev.main(["--model", str(tiny), "--question", "2+2?", "--answer-a", "4", "--answer-b", "5",
             "--max-new-tokens", "5", "--device", "cpu"])
    streamed, tail = capsys.readouterr().out.rsplit("\n\nverdict: ", 1)
    assert streamed == data.Tokenizer.load(tiny).decode(outs[0].tokens, skip_special_tokens=True)
    verdict = parse_verdict(streamed)
    assert tail.startswith(verdict if verdict else "invalid") and "(5 tokens, length)" in tail


def test_one_pair_from_a_file_and_its_errors(tiny, tmp_path, capsys):
    args = ["--model", str(tiny), "--max-new-tokens", "5", "--device", "cpu"]
    ev.main(args + ["--question", "2+2?", "--answer-a", "4", "--answer-b", "5"])
    from_flags = capsys.readouterr().out
    f = tmp_path / "pair.json"
    f.write_text(json.dumps({"question": "2+2?", "answer_a": "4", "answer_b": "5"}))
    ev.main(args + ["--pair-file", str(f)])
    assert capsys.readouterr().out == from_flags
    f.write_text(json.dumps({"question": "2+2?", "answer_a": "4"}))
    with pytest.raises(InputError, match=r"pair.json: missing field 'answer_b'"):
        ev.main(args + ["--pair-file", str(f)])
    f.write_text('{"question": "2+2?", ')
    with pytest.raises(InputError, match=r"pair.json: not valid JSON"):
        ev.main(args + ["--pair-file", str(f)])
    with pytest.raises(MissingInput, match=r"^\S*typo.json: no such file$"):  # not open()'s own error
        ev.main(args + ["--pair-file", str(tmp_path / "typo.json")])
    with pytest.raises(InputError, match=r"^\S*: a folder, not a file$"):
        ev.main(args + ["--pair-file", str(tmp_path)])
    f.write_text('{"question": "2+2?", "answer_a": "4", "answer_b": ""}')
    with pytest.raises(InputError, match=r"pair.json: field 'answer_b' is empty$"):  # as --answer-b "" is refused
        ev.main(args + ["--pair-file", str(f)])
    with pytest.raises(SystemExit, match="not both"):
        ev.main(args + ["--pair-file", str(f), "--question", "q"])
    with pytest.raises(SystemExit, match="answer-b: --answer-b is missing or empty$"):  # never an empty answer judged
        ev.main(args + ["--question", "2+2?", "--answer-a", "4"])
    with pytest.raises(SystemExit, match=": --question, --answer-a are missing or empty$"):
        ev.main(args + ["--question", "", "--answer-b", "5"])
    # a benchmark run's flags are refused, not ignored: --out would otherwise lose the judgment it was meant to keep
    with pytest.raises(SystemExit, match="^one-pair mode judges the pair as given and writes nothing: --out is for "
                                         "benchmark runs$"):
        ev.main(args + ["--question", "2+2?", "--answer-a", "4", "--answer-b", "5", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="nothing: --bench, --both-orders, --score-only are for benchmark runs$"):
        ev.main(args + ["--pair-file", str(f), "--bench", "rmb", "--both-orders", "--score-only"])


def test_each_judgment_is_written_as_soon_as_it_is_made(tmp_path, monkeypatch):
    """A judgment is on disk once its sequence finishes, while longer ones still decode (a run stopped midway
    keeps every judgment made): the model's position limit sits 16 tokens past the longest prompt, so that
    prompt's judgment stops at 16 new tokens and the others run to 64. The log is read at every decode chunk."""
    from rubrics import judge_messages
    import sample

    pairs = data.read_rmbench(BENCH / "rm-bench" / "chat_filtered.json")[:4]
    items = data.place(pairs, "random", 0)  # as eval.main places them (--seed 0)
    tok = data.Tokenizer.load(SHARED / "hf" / "qwen2.5-7b-instruct")
    lens = [len(ids) for ids in tok.encode_chats([judge_messages(*p.conversations(at)) for p, at in items], True)]
    assert max(lens) - 64 > sorted(lens)[-2]  # every other judgment may take 64 tokens
    model = tiny_judge(tmp_path / "m", max_positions=max(lens) + 16)
    out = tmp_path / "run"
    seen, run = [], sample.Engine._run

    def logged_then_run(self, *a):  # the keys on disk as each chunk of decode steps starts
        log = out / "judgments.jsonl"
        seen.append([r["key"] for r in ev.read_log(log)] if log.exists() else [])
        return run(self, *a)

    monkeypatch.setattr(sample.Engine, "_run", logged_then_run)
    ev.main(["--model", str(model), "--bench", "rm-bench", "--data", str(BENCH / "rm-bench" / "chat_filtered.json"),
             "--limit", "4", "--max-new-tokens", "64", "--device", "cpu", "--out", str(out)])
    short = items[lens.index(max(lens))]
    first = next((k for k, keys in enumerate(seen) if keys), None)
    assert first is not None, "no judgment was on disk while the others decoded"
    assert seen[first] == [ev.item_key(short[0].id, short[1])] and first < len(seen) - 1  # while the rest decode
    assert sorted(r["key"] for r in ev.read_log(out / "judgments.jsonl")) == sorted(
        ev.item_key(p.id, at) for p, at in items)


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    args = ["--model", str(tiny), "--bench", "rm-bench", "--data", str(BENCH / "rm-bench" / "chat_filtered.json"),
            "--limit", "3", "--max-new-tokens", "4", "--device", "cpu", "--out", str(tmp_path / "run")]
    ev.main(args)
    log = tmp_path / "run" / "judgments.jsonl"
    before = log.read_text()
    for extra, match in [(["--max-new-tokens", "5"], "max_new_tokens: 4 there, 5 now"),
                         (["--variant", "reasoning"], "variant: 'instruct' there, 'reasoning' now"),
                         (["--bench", "pairs"], "bench: 'rm-bench' there, 'pairs' now")]:
        with pytest.raises(SystemExit, match=match):
            ev.main(args + extra)  # argparse keeps the last value of a repeated flag
        assert log.read_text() == before
    ev.main(args + ["--limit", "5", "--slots", "2"])  # more pairs, other batching: the same judgments, two more
    assert log.read_text().startswith(before) and len(log.read_text().splitlines()) == 5


def test_a_rerun_on_changed_data_is_refused(tiny, tmp_path):
    """The data's path is not enough: a rerun reading pairs whose contents changed (one answer edited, ids kept)
    would mix judgments of two datasets into one score. The fingerprint covers every pair read, so --limit may
    still change."""
    rows = json.loads((BENCH / "rm-bench" / "chat_filtered.json").read_text())[:3]
    path = tmp_path / "chat_filtered.json"
    path.write_text(json.dumps(rows))
    args = ["--model", str(tiny), "--bench", "rm-bench", "--data", str(path), "--limit", "2", "--max-new-tokens", "3",
            "--device", "cpu", "--out", str(tmp_path / "run")]
    ev.main(args)
    log = (tmp_path / "run" / "judgments.jsonl").read_text()
    rows[2]["chosen"][0] += " (edited)"  # the third item; --limit 2 judges two pairs of the first
    path.write_text(json.dumps(rows))
    with pytest.raises(SystemExit, match=r"chat_filtered.json: its pairs changed since the judgments in .*run were made "
                                         r"\(data_sha256 [0-9a-f]{12} there, [0-9a-f]{12} now\)"):
        ev.main(args)
    assert (tmp_path / "run" / "judgments.jsonl").read_text() == log
    rows[2]["chosen"][0] = rows[2]["chosen"][0].removesuffix(" (edited)")
    path.write_text(json.dumps(rows))
    ev.main(args[:-2] + ["--limit", "3", "--out", str(tmp_path / "run")])  # restored: resumes, one more pair
    assert len((tmp_path / "run" / "judgments.jsonl").read_text().splitlines()) == 3  # 9 pairs per RM-Bench item


def test_a_run_folder_whose_config_is_missing_or_broken_is_refused(tiny, tmp_path):
    """Judgments whose settings cannot be read are not resumed under new ones, and a config.json that is not JSON
    is named; neither file is changed."""
    run = tmp_path / "run"
    args = ["--model", str(tiny), "--bench", "rm-bench", "--data", str(BENCH / "rm-bench" / "chat_filtered.json"),
            "--limit", "1", "--max-new-tokens", "3", "--device", "cpu", "--out", str(run)]
    ev.main(args)
    log = (run / "judgments.jsonl").read_text()
    (run / "config.json").unlink()
    with pytest.raises(SystemExit, match=r"run: judgments.jsonl without the config.json it was made with"):
        ev.main(args)
    (run / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"config.json: not valid JSON \(Expecting"):
        ev.main(args)
    assert (run / "judgments.jsonl").read_text() == log and (run / "config.json").read_text() == "{not json"
    # a field the checks read (a path, a fingerprint, the benchmark, a count) of another type or value: named, on a
    # rerun and in --score-only alike (they were TypeError and KeyError tracebacks)
    ev.main(args[:-1] + [str(tmp_path / "again")])
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    for field, value, match in (("model_stamp", 5, "'model_stamp' should be a string, got 5"),
                                ("data", None, "'data' should be a string, got None"),
                                ("pairs", True, "'pairs' should be a whole number, got True"),
                                ("pairs", -1, "'pairs' should be >= 0, got -1"),
                                ("bench", "rmbench", r"'bench' should be one of \[.*'rm-bench'.*\], got 'rmbench'")):
        edited = json.dumps({**saved, field: value})
        (tmp_path / "again" / "config.json").write_text(edited)
        for argv in (args[:-1] + [str(tmp_path / "again")], ["--score-only", "--out", str(tmp_path / "again")]):
            with pytest.raises(InputError, match=rf"again/config.json: {match}"):
                ev.main(argv)
            assert (tmp_path / "again" / "config.json").read_text() == edited


def test_a_rerun_with_the_model_rewritten_at_its_path_is_refused(tmp_path):
    """sft.py exports to OUT/hf at the end of every run, resumed ones too: judging that folder again into the same
    --out after more training must not reuse the older model's judgments as the newer one's. A copy of the same
    checkpoint (new file times, the same bytes: a node-local copy in a multi-node run) is the same model."""
    import shutil

    import model as M

    judge = tiny_judge(tmp_path / "hf")
    args = ["--model", str(judge), "--bench", "rm-bench", "--data", str(BENCH / "rm-bench" / "chat_filtered.json"),
            "--limit", "2", "--max-new-tokens", "3", "--device", "cpu", "--out", str(tmp_path / "run")]
    ev.main(args)
    log = (tmp_path / "run" / "judgments.jsonl").read_text()
    shutil.copytree(judge, tmp_path / "copy")
    shutil.rmtree(judge)
    shutil.copytree(tmp_path / "copy", judge, copy_function=shutil.copyfile)  # the same bytes, new times
    ev.main(args)  # resumes: nothing left to judge
    model = M.load(judge, dtype=torch.float32)
    with torch.no_grad():  # "further training": every weight moves a little
        for p in model.parameters():
            p.add_(1e-4 * torch.randn_like(p))
    M.save(model, judge, copy_files_from=tmp_path / "copy")  # exported to the same folder
    with pytest.raises(SystemExit, match=r"hf: its weights changed \(rewritten by a later SFT run\?\) since the "
                                         r"judgments in .*run were made \(model_stamp [0-9a-f]{12} there"):
        ev.main(args)
    assert (tmp_path / "run" / "judgments.jsonl").read_text() == log


def test_both_orders_print_each_orders_figures(tmp_path, capsys):
    """A run judged in both orders prints each order's benchmark figures (RM-Bench's easy / normal / hard / total),
    not only the position-bias figures: a judge that always answers A is right on every item chosen at A and wrong
    on every one chosen at B."""
    data_file = BENCH / "rm-bench" / "chat_filtered.json"
    pairs = data.read_rmbench(data_file)[:18]  # two whole items of 9 pairs
    lines = [{"id": p.id, "chosen_at": at, "output": "<answer>[[A]]</answer>"} for p, at in data.place(pairs, "both")]
    (tmp_path / "judgments.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ev.main(["--bench", "rm-bench", "--data", str(data_file), "--out", str(tmp_path), "--score-only"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["chosen_at_A"] == {"easy": 1.0, "normal": 1.0, "hard": 1.0, "total": 1.0}
    assert printed["chosen_at_B"] == {"easy": 0.0, "normal": 0.0, "hard": 0.0, "total": 0.0}
    assert (printed["flip_rate"], printed["same_letter_both_orders"], printed["pairs_in_both_orders"]) == (1.0, 1.0, 18)
    assert "domains" not in printed["chosen_at_A"]  # per domain, in scores.json
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["by_order"]["chosen_at_A"]["domains"]["chat"]["items"] == 2


def test_a_rerun_that_would_leave_judgments_unscored_is_refused(tiny, tmp_path, capsys):
    """A rerun may add judgments (a higher --limit, --both-orders) but not drop any from its scores: --score-only
    counts every judgment in the logs, so scores.json and a rescore would disagree. Refused before config.json
    is rewritten; the logs and config stay as they were."""
    run = tmp_path / "run"
    args = ["--model", str(tiny), "--bench", "rm-bench", "--data", str(BENCH / "rm-bench" / "chat_filtered.json"),
            "--max-new-tokens", "3", "--device", "cpu", "--out", str(run)]
    ev.main(args + ["--limit", "4"])
    log, config = (run / "judgments.jsonl").read_text(), (run / "config.json").read_text()
    pairs = data.read_rmbench(BENCH / "rm-bench" / "chat_filtered.json")[:4]
    placed = {json.loads(x)["id"]: json.loads(x)["chosen_at"] for x in log.splitlines()}  # (in finish order)
    assert placed == {p.id: at for p, at in data.place(pairs, "random", 0)}
    other_seed = next(s for s in range(1, 50) if {p.id: at for p, at in data.place(pairs, "random", s)} != placed)
    for extra in (["--limit", "2"], ["--limit", "4", "--seed", str(other_seed)]):
        with pytest.raises(SystemExit, match=r"judgment\(s\) in its logs are not among this run's pairs and "
                                             r"placements \(the first: id '.+' chosen at [AB]\)"):
            ev.main(args + extra)
        assert (run / "judgments.jsonl").read_text() == log and (run / "config.json").read_text() == config
    # both orders added: the judgments already made are kept and the other order judged; the rescore agrees
    ev.main(args + ["--limit", "4", "--both-orders"])
    lines = (run / "judgments.jsonl").read_text().splitlines()
    assert lines[:4] == log.splitlines() and len(lines) == 8
    scores = (run / "scores.json").read_text()
    ev.main(["--bench", "rm-bench", "--out", str(run), "--score-only"])
    assert (run / "scores.json").read_text() == scores
    with pytest.raises(SystemExit, match="4 judgment"):  # both orders dropped again: the four of the other order
        ev.main(args + ["--limit", "4"])


@pytest.mark.parametrize("extra,match", [(["--limit", "-1"], "--limit must be >= 0, got -1"),
                                         (["--slots", "-1"], "--slots must be >= 0, got -1"),
                                         (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
                                         (["--variant", "Instruct"], "--variant must be auto, instruct or reasoning")])
def test_bad_settings_are_refused(tmp_path, extra, match):
    with pytest.raises(SystemExit, match=match):
        ev.main(["--bench", "rm-bench", "--data", "x", "--model", "m", "--out", str(tmp_path / "o"), *extra])
    assert not (tmp_path / "o").exists()


def test_a_prompt_over_the_model_limit_stops_the_run_before_the_model_loads(tiny, tmp_path, monkeypatch):
    import shutil

    from rubrics import judge_messages

    tok = data.Tokenizer.load(tiny)
    data_file = BENCH / "rm-bench" / "chat_filtered.json"
    items = data.place(data.read_rmbench(data_file)[:6], "random", 0)  # what the run below judges
    lengths = [len(tok.encode_chat(judge_messages(*p.conversations(at), "instruct"), add_generation_prompt=True))
               for p, at in items]
    longest = max(range(len(items)), key=lengths.__getitem__)
    assert lengths[0] < lengths[longest]  # the first would fit: it must not be judged either
    short = shutil.copytree(tiny, tmp_path / "short")  # the same model with room for all but the longest prompt
    cfg = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": lengths[longest]}))
    args = ["--model", str(short), "--bench", "rm-bench", "--data", str(data_file), "--max-new-tokens", "4",
            "--device", "cpu"]
    ev.main(args + ["--limit", str(longest), "--out", str(tmp_path / "before")])  # the pairs before it fit
    before = {f: (tmp_path / "before" / f).read_text() for f in ("config.json", "judgments.jsonl", "scores.json")}
    monkeypatch.setattr(ev, "load_model", lambda *a: pytest.fail("the model was loaded"))
    p, at = items[longest]
    for out in ("run", "before"):  # a new run, and a rerun that would extend a finished one
        with pytest.raises(ValueError, match=rf"pair {p.id} \(chosen at {at}\): judge prompt has {lengths[longest]} "
                                             rf"tokens, at or over the model's limit of {lengths[longest]}"):
            ev.main(args + ["--limit", "6", "--out", str(tmp_path / out)])
    assert not (tmp_path / "run").exists()  # nothing written, not even config.json
    assert before == {f: (tmp_path / "before" / f).read_text() for f in before}  # its settings not replaced


def test_a_judgment_logged_twice_is_an_error_not_a_double_count(tmp_path):
    data_file = BENCH / "rm-bench" / "chat_filtered.json"
    p = data.read_rmbench(data_file)[0]
    line = json.dumps({"id": p.id, "chosen_at": "A", "output": "<answer>[[A]]</answer>"}) + "\n"
    other = json.dumps({"id": p.id, "chosen_at": "B", "output": "<answer>[[A]]</answer>"}) + "\n"
    (tmp_path / "judgments.jsonl").write_text(line + other + line)
    with pytest.raises(InputError, match=rf"judgments.jsonl:3: judgment {p.id}\|A is already on line 1"):
        ev.main(["--bench", "rm-bench", "--data", str(data_file), "--out", str(tmp_path), "--score-only"])
    assert not (tmp_path / "scores.json").exists()
    with pytest.raises(InputError, match="no judgments to score"):
        ev.main(["--bench", "rm-bench", "--out", str(tmp_path / "typo"), "--score-only"])
    assert not (tmp_path / "typo").exists()  # a mistyped --out is not created


def test_one_pair_reply_is_bounded_by_the_model_limit(tmp_path, capsys, monkeypatch):
    """A 1,024-position model: the reply stops at the limit like a benchmark judgment (length), and a prompt
    that fills the limit is refused naming both numbers, before the weights load."""
    tok = data.Tokenizer.load(tiny_judge(tmp_path / "m", max_positions=1024))
    args = ["--model", str(tmp_path / "m"), "--device", "cpu", "--max-new-tokens", "4096"]
    ev.main(args + ["--question", "2+2?", "--answer-a", "4", "--answer-b", "5"])
    from rubrics import judge_messages

    q = {"role": "user", "content": "2+2?"}
    msgs = judge_messages([q, {"role": "assistant", "content": "4"}], [q, {"role": "assistant", "content": "5"}])
    n = len(tok.encode_chat(msgs, add_generation_prompt=True))
    assert n < 1024 and f"({1024 - n} tokens, length)" in capsys.readouterr().out
    too_long = r"the pair: judge prompt has \d+ tokens, at or over the model's limit of 1024"
    monkeypatch.setattr(ev, "load_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=too_long):
        ev.main(args + ["--question", "2+2? " * 200, "--answer-a", "4", "--answer-b", "5"])


def test_no_pairs_is_an_error_not_an_empty_score(tiny, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match=r"empty.jsonl: no pairs found \(read as --bench pairs\)"):
        ev.main(["--model", str(tiny), "--data", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")])
    (tmp_path / "folder").mkdir()
    # a folder without RM-Bench's files
    with pytest.raises(InputError, match=r"folder: no pairs found \(read as --bench rm-bench\)"):
        ev.main(["--model", str(tiny), "--bench", "rm-bench", "--data", str(tmp_path / "folder"),
                 "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_out_is_never_a_model_folder(tiny, tmp_path):
    before = (tiny / "config.json").read_bytes()
    with pytest.raises(InputError, match="config.json is not an eval run's config"):
        ev.main(["--model", str(tiny), "--bench", "rm-bench", "--data", str(BENCH / "rm-bench" / "chat_filtered.json"),
                 "--limit", "1", "--device", "cpu", "--out", str(tiny)])
    assert (tiny / "config.json").read_bytes() == before and not (tiny / "judgments.jsonl").exists()


# -- several processes (torchrun): each judges every world-th pair into its own log ---------------------


def as_rank(monkeypatch, rank, world):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def by_key(out):
    return {r["key"]: r for lines in ev.read_logs(out).values() for r in lines}


def test_ranks_judge_their_share_and_the_last_one_scores(tiny, tmp_path, monkeypatch, capsys):
    """Ranks run one after another (as the slowest finishes last): each judges items rank::world into its own
    log; only the rank that finds every judgment written scores, and the scores and judgments are those of
    one process. A rerun with another number of processes judges only what is missing."""
    data_file = BENCH / "rm-bench" / "chat_filtered.json"
    args = ["--model", str(tiny), "--bench", "rm-bench", "--data", str(data_file), "--limit", "9", "--both-orders",
            "--max-new-tokens", "6", "--slots", "4", "--device", "cpu"]
    ev.main(args + ["--out", str(tmp_path / "one")])
    one = by_key(tmp_path / "one")
    items = [f"{p.id}|{at}" for p, at in data.place(data.read_rmbench(data_file)[:9], "both")]
    assert sorted(one) == sorted(items)  # (a log is in the order judgments finish)
    out = tmp_path / "two"
    as_rank(monkeypatch, 1, 2)
    ev.main(args + ["--out", str(out)])
    assert sorted(r["key"] for r in ev.read_log(out / "judgments.rank1.jsonl")) == sorted(items[1::2])
    assert not (out / "judgments.jsonl").exists() and not (out / "scores.json").exists()
    assert "9 of other ranks are not yet written" in capsys.readouterr().err
    as_rank(monkeypatch, 0, 2)
    ev.main(args + ["--out", str(out)])
    assert sorted(r["key"] for r in ev.read_log(out / "judgments.jsonl")) == sorted(items[0::2])
    assert by_key(out) == one
    assert (out / "scores.json").read_text() == (tmp_path / "one" / "scores.json").read_text()
    # rank 1's last two judgments lost: one process rejudges just those, into its own log
    log1 = out / "judgments.rank1.jsonl"
    lost = [json.loads(x)["key"] for x in log1.read_text().splitlines()[-2:]]
    log1.write_text("".join(x + "\n" for x in log1.read_text().splitlines()[:-2]))
    (out / "scores.json").unlink()
    monkeypatch.delenv("RANK"), monkeypatch.delenv("WORLD_SIZE"), monkeypatch.delenv("LOCAL_RANK")
    ev.main(args + ["--out", str(out)])
    keys = [r["key"] for r in ev.read_log(out / "judgments.jsonl")]
    assert sorted(keys[:-2]) == sorted(items[0::2]) and sorted(keys[-2:]) == sorted(lost)  # appended
    assert by_key(out) == one
    assert (out / "scores.json").read_text() == (tmp_path / "one" / "scores.json").read_text()
    # a judgment in two logs would count twice: an error naming both places
    second = (out / "judgments.jsonl").read_text().splitlines()[1]
    (out / "judgments.rank1.jsonl").write_text(second + "\n")
    key = json.loads(second)["key"]
    with pytest.raises(ValueError, match=re.escape(f"judgments.rank1.jsonl:1: judgment {key} is already at "
                                                   f"{out / 'judgments.jsonl'}:2")):
        ev.main(["--bench", "rm-bench", "--out", str(out), "--score-only"])


def test_a_pair_too_long_in_another_ranks_share_stops_every_rank_before_anything_is_written(tiny, tmp_path,
                                                                                         monkeypatch):
    """Each process measures every pair's prompt, not only its share: a rank whose own pairs fit does not start
    (writing config.json, loading the model, judging) on a run that the rank holding the long pair stops."""
    import shutil

    from rubrics import judge_messages

    tok = data.Tokenizer.load(tiny)
    data_file = BENCH / "rm-bench" / "chat_filtered.json"
    items = data.place(data.read_rmbench(data_file)[:6], "random", 0)
    lengths = [len(tok.encode_chat(judge_messages(*p.conversations(at), "instruct"), add_generation_prompt=True))
               for p, at in items]
    longest = max(range(len(items)), key=lengths.__getitem__)
    other = 1 - longest % 2  # the rank of two whose share is items[other::2]
    assert max(lengths[other::2]) < lengths[longest]  # its own prompts all fit
    short = shutil.copytree(tiny, tmp_path / "short")
    cfg = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": lengths[longest]}))
    monkeypatch.setattr(ev, "load_model", lambda *a: pytest.fail("the model was loaded"))
    p, at = items[longest]
    for rank in (other, 1 - other):
        as_rank(monkeypatch, rank, 2)
        with pytest.raises(ValueError, match=rf"pair {p.id} \(chosen at {at}\): judge prompt has {lengths[longest]} "
                                             rf"tokens, at or over the model's limit of {lengths[longest]}"):
            ev.main(["--model", str(short), "--bench", "rm-bench", "--data", str(data_file), "--limit", "6",
                     "--max-new-tokens", "4", "--device", "cpu", "--out", str(tmp_path / "run")])
        assert not (tmp_path / "run").exists()


def test_other_ranks_logs_are_read_not_repaired(tmp_path, capsys):
    """A cut-short last line in another rank's log is being written: skipped, left as it is, and said so. This
    process's own log is repaired."""
    line = lambda i: json.dumps({"id": i, "chosen_at": "A"}) + "\n"  # noqa: E731
    (tmp_path / "judgments.jsonl").write_text(line("p") + '{"id": "x", "chos')
    (tmp_path / "judgments.rank1.jsonl").write_text(line("q") + '{"id": "y", "chos')
    logs = ev.read_logs(tmp_path, own=tmp_path / "judgments.jsonl", required=["id", "chosen_at"])
    assert [[r["id"] for r in v] for v in logs.values()] == [["p"], ["q"]]
    assert (tmp_path / "judgments.jsonl").read_text() == line("p")
    assert (tmp_path / "judgments.rank1.jsonl").read_text() == line("q") + '{"id": "y", "chos'
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path / 'judgments.jsonl'}: dropping the unfinished last line 2",
        f"{tmp_path / 'judgments.rank1.jsonl'}: not reading the unfinished last line 2 (a write under way, or one cut "
        "short), left as it is"]


def test_torchrun_two_processes_score_as_one(tiny, tmp_path):
    """Two processes at once under torchrun: every judgment made once, scores those of one process."""
    import os
    import subprocess
    import sys

    data_file = BENCH / "rm-bench" / "chat_filtered.json"
    args = ["--model", str(tiny), "--bench", "rm-bench", "--data", str(data_file), "--limit", "9", "--max-new-tokens",
            "6", "--slots", "2", "--device", "cpu"]
    ev.main(args + ["--out", str(tmp_path / "one")])
    port = str(29900 + os.getpid() % 90)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                        ev.__file__, *args, "--out", str(tmp_path / "two")],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert by_key(tmp_path / "two") == by_key(tmp_path / "one")
    assert (tmp_path / "two" / "scores.json").read_text() == (tmp_path / "one" / "scores.json").read_text()
    assert len(ev.read_log(tmp_path / "two" / "judgments.rank1.jsonl")) == 4


@pytest.mark.parametrize("extra", [["--question", "q", "--answer-a", "a", "--answer-b", "b"], ["--score-only"]])
def test_one_pair_and_score_only_refuse_torchrun(tmp_path, monkeypatch, extra):
    as_rank(monkeypatch, 0, 2)
    with pytest.raises(SystemExit, match="runs in one process: start it without torchrun"):
        ev.main(["--bench", "rm-bench", "--out", str(tmp_path), *extra])


def test_a_torchrun_rank_without_a_gpu_of_its_own_is_a_clear_error(tiny, monkeypatch):
    """More processes on a node than GPUs: the rank past them stops naming its device, the count and the fix
    (the GPUs are faked: one GPU, LOCAL_RANK 1)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"^device cuda:1: this process sees 1 GPU.*--nproc_per_node at most"):
        ev.judge_device(ev.EvalConfig(model=str(tiny)), local_rank=1)


def test_a_device_this_process_cannot_see_is_a_one_line_error(tiny, tmp_path):
    """As other bad flags, before the data is read or anything written: in one-pair mode and a benchmark run."""
    with pytest.raises(SystemExit, match=r"^eval.py: device cuda:99: this process sees \d GPUs?"):
        ev.main(["--model", str(tiny), "--question", "q", "--answer-a", "a", "--answer-b", "b", "--device", "cuda:99"])
    with pytest.raises(SystemExit, match=r"^eval.py: device cuda:99: this process sees \d GPUs?"):
        ev.main(["--model", str(tiny), "--bench", "rm-bench", "--data", str(tmp_path / "missing.json"), "--device",
                 "cuda:99", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("device", ["", "cuda", "cuda:0"])
def test_gpu_one_process_judges_on_the_gpu_by_default(tiny, tmp_path, device):
    """No --device (or a plain "cuda") on a GPU machine: the judge loads in bf16 on the current GPU and judges
    there, as with cuda:0 named. (A plain "cuda" once reached torch.cuda.set_device, which refuses a device
    without an index: every run without --device stopped there.)"""
    data_file = BENCH / "rm-bench" / "chat_filtered.json"
    model = ev.load_model(ev.EvalConfig(model=str(tiny), device=device))
    assert next(model.parameters()).device == torch.device("cuda", torch.cuda.current_device())
    assert next(model.parameters()).dtype == torch.bfloat16
    del model
    ev.main(["--model", str(tiny), "--bench", "rm-bench", "--data", str(data_file), "--limit", "3",
             "--max-new-tokens", "8", "--out", str(tmp_path), *(["--device", device] if device else [])])
    assert len(ev.read_log(tmp_path / "judgments.jsonl")) == 3


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_torchrun_judges_on_two_gpus(tiny, tmp_path):
    """torchrun on two GPUs: each rank on its own device (bf16, graphs), every judgment made once, scored."""
    import os
    import subprocess
    import sys

    data_file = BENCH / "rm-bench" / "chat_filtered.json"
    args = ["--model", str(tiny), "--bench", "rm-bench", "--data", str(data_file), "--limit", "18", "--both-orders",
            "--max-new-tokens", "40", "--slots", "8", "--out", str(tmp_path / "two")]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={29900 + os.getpid() % 90}", ev.__file__, *args],
                       env=os.environ, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    items = [f"{p.id}|{at}" for p, at in data.place(data.read_rmbench(data_file)[:18], "both")]
    assert sorted(r["key"] for r in ev.read_log(tmp_path / "two" / "judgments.rank1.jsonl")) == sorted(items[1::2])
    assert sorted(by_key(tmp_path / "two")) == sorted(items)
    assert json.loads((tmp_path / "two" / "scores.json").read_text())["pairs_in_both_orders"] == 18


def test_a_write_cut_inside_a_character_is_repaired_in_our_log_and_skipped_in_others(tmp_path):
    """A crash can cut the last line inside a multi-byte character: this process's log drops that line (it
    will be judged again); another rank's log is left as it is (its write may be under way)."""
    line = lambda i: json.dumps({"id": i, "chosen_at": "A", "output": "café"}, ensure_ascii=False).encode()  # noqa: E731
    cut = line("x")[:-3]  # ends on the first of the two bytes of é
    (tmp_path / "judgments.jsonl").write_bytes(line("p") + b"\n" + cut)
    (tmp_path / "judgments.rank1.jsonl").write_bytes(line("q") + b"\n" + cut)
    logs = ev.read_logs(tmp_path, own=tmp_path / "judgments.jsonl", required=["id", "chosen_at"])
    assert [[r["id"] for r in v] for v in logs.values()] == [["p"], ["q"]]
    assert (tmp_path / "judgments.jsonl").read_bytes() == line("p") + b"\n"
    assert (tmp_path / "judgments.rank1.jsonl").read_bytes() == line("q") + b"\n" + cut


def test_a_whole_last_line_without_newline_is_kept_and_ended(tmp_path):
    """A file written elsewhere may end without a newline: its last judgment counts, and before anything is
    appended the line is ended. A line that is JSON but not an object is malformed."""
    log = tmp_path / "judgments.jsonl"
    a, b = (json.dumps({"id": i, "chosen_at": "A", "output": "x"}) for i in "ab")
    log.write_text(a + "\n" + b)
    assert [r["id"] for r in ev.read_log(log, ["id", "chosen_at"])] == ["a", "b"]
    assert log.read_text() == a + "\n" + b + "\n"
    log.write_text(a + "\n7\n")
    with pytest.raises(ValueError, match="judgments.jsonl:2: malformed judgment line"):
        ev.read_log(log, ["id"])


def test_write_atomic_leaves_the_old_file_until_the_new_one_is_whole(tmp_path, monkeypatch):
    """config.json, scores.json and sft's rewritten metrics go through data.write_atomic: a failure before
    the rename (a crash, a full disk) leaves the old file as it was."""
    path = tmp_path / "scores.json"
    path.write_text("old\n")
    data.write_atomic(path, "new\n")
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["scores.json"]

    write_text = type(path).write_text

    def full_disk(self, text, *a, **kw):  # writes part of the text, then fails
        write_text(self, text[:2], *a, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(path), "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        data.write_atomic(path, "newer\n")
    monkeypatch.undo()
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["scores.json"]


@pytest.mark.parametrize("module,cls", [("eval", "EvalConfig"), ("sft", "SFTConfig")])
def test_every_flag_has_help_from_its_field_comment(module, cls):
    """--help lists every setting of the script's dataclass with the comment of its line and its default."""
    import dataclasses
    import importlib

    config = getattr(importlib.import_module(module), cls)
    ap = data.config_parser(config, "")
    flags = {a.dest: a for a in ap._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in dataclasses.fields(config)}
    assert all(a.help for a in flags.values()), [d for d, a in flags.items() if not a.help]
    text = " ".join(ap.format_help().split())  # unwrapped
    if module == "sft":
        assert flags["max_len"].help == "rows whose prompt or whole sequence is longer are dropped (counted), never cut"
        assert "never cut (default: 12288)" in text and "--no-activation-checkpointing" in text
    else:
        assert "--both-orders, --no-both-orders judge every pair twice, chosen at A and at B (default: False)" in text
