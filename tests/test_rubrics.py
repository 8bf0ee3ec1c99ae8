"""rubrics.py: byte-exact prompts, the training reward, evaluation parsing, the structured reading."""

import hashlib

import pytest
from conftest import SHARED

import rubrics
from rubrics import judge_messages, parse_judgment, parse_verdict, reward

PROMPTS = SHARED / "rm_r1" / "prompts"
FILES = {"INSTRUCT_SYSTEM": "instruct_system.txt", "INSTRUCT_USER_SINGLE": "instruct_user_single.txt",
         "INSTRUCT_USER_MULTI": "instruct_user_multi.txt", "REASONING_USER_SINGLE": "reasoning_user_single.txt",
         "REASONING_USER_MULTI": "reasoning_user_multi.txt"}
SHA_PREFIX = {"INSTRUCT_SYSTEM": "e0bf09a87f19837a", "INSTRUCT_USER_SINGLE": "5fa3baf9813bdf0e",
              "INSTRUCT_USER_MULTI": "8cb7158fc42faa0b", "REASONING_USER_SINGLE": "2a0d3caf562d5936",
              "REASONING_USER_MULTI": "3abf19ca3d350171"}


@pytest.mark.parametrize("name", FILES)
def test_prompts_are_byte_exact(name):
    ours = getattr(rubrics, name).encode()
    assert hashlib.sha256(ours).hexdigest() == hashlib.sha256((PROMPTS / FILES[name]).read_bytes()).hexdigest()
    assert hashlib.sha256(ours).hexdigest().startswith(SHA_PREFIX[name])  # SPEC section 1's table


def conv(*turns):
    return [{"role": "user" if k % 2 == 0 else "assistant", "content": t} for k, t in enumerate(turns)]


def test_single_turn_messages():
    m = judge_messages(conv("Q?", "yes"), conv("Q?", "no"), "instruct")
    assert m == [{"role": "system", "content": (PROMPTS / "instruct_system.txt").read_text()},
                 {"role": "user", "content": (PROMPTS / "instruct_user_single.txt").read_text().format(
                     question="Q?", answer_a="yes", answer_b="no")}]
    r = judge_messages(conv("Q?", "yes"), conv("Q?", "no"), "reasoning")
    assert r == [{"role": "user", "content": (PROMPTS / "reasoning_user_single.txt").read_text().format(
        question="Q?", answer_a="yes", answer_b="no")}]


def test_multi_turn_flattening():
    a, b = conv("Hi", "Hello", "2+2?", "4"), conv("Hi", "Hello", "2+2?", "5")
    m = judge_messages(a, b, "instruct")
    want = (PROMPTS / "instruct_user_multi.txt").read_text().format(
        conversation_1="User: Hi\nChatbot A: Hello\nUser: 2+2?\nChatbot A: 4",
        conversation_2="User: Hi\nChatbot B: Hello\nUser: 2+2?\nChatbot B: 5")
    assert m[1]["content"] == want
    r = judge_messages(a, b, "reasoning")
    assert len(r) == 1 and "Chatbot B: 5" in r[0]["content"] and r[0]["content"].startswith("Please act")
    with pytest.raises(ValueError, match="variant"):
        judge_messages(a, b, "other")


def test_a_pair_the_prompt_cannot_show_is_refused():
    """The single-turn prompt shows one question, so a pair whose questions differ would lose B's; a conversation
    without a final answer leaves nothing to compare (the flattened prompt would show it anyway)."""
    with pytest.raises(ValueError, match="^conv_a and conv_b answer different questions"):
        judge_messages(conv("Q?", "yes"), conv("Other?", "no"))
    for a, b, name in ((conv("Q?"), conv("Q?", "no"), "conv_a"), (conv("Q?", "yes"), [], "conv_b")):
        with pytest.raises(ValueError, match=rf"^{name} must end with the chatbot's answer"):
            judge_messages(a, b)


EOS = "<|im_end|>"


def test_reward_cases():
    body = "x" * 500
    assert reward(body + "<answer>[[A]]</answer>" + EOS, "model_a") == 1.0
    assert reward(body + "<answer>[[A]]</answer>" + EOS, "model_b") == -1.0
    assert reward(body + "<answer>[[B]]</answer>" + EOS, "model_b") == 1.0
    # both tags in the tail -> -1 for either label
    both = body + "<answer>[[A]]</answer> <answer>[[B]]</answer>" + EOS
    assert reward(both, "model_a") == -1.0 and reward(both, "model_b") == -1.0
    # a tag only early in a long output is outside the last 80 characters
    assert reward("<answer>[[A]]</answer>" + body + EOS, "model_a") == -1.0
    # the EOS text eats into the 80: a tag starting 70 characters from the end no longer fits whole
    tag = "<answer>[[A]]</answer>"  # 22 characters
    fits = body + tag + "y" * (80 - 22 - len(EOS)) + EOS
    cut = body + tag + "y" * (80 - 22 - len(EOS) + 1) + EOS
    assert reward(fits, "model_a") == 1.0 and reward(cut, "model_a") == -1.0
    assert reward(cut[:-len(EOS)], "model_a") == 1.0  # the same text without EOS would have counted
    assert reward("", "model_a") == -1.0
    with pytest.raises(ValueError, match="unknown label 'A'"):
        reward("<answer>[[A]]</answer>", "A")


def test_parse_verdict_cases():
    long = "reasoning " * 1000
    assert parse_verdict(long + "<answer>[[B]]</answer>") == "B"
    assert parse_verdict("<answer>[[A]]</answer>" + long) == "A"  # whole output, unlike the reward
    assert parse_verdict("[[A]] ... final [[B]]") is None
    assert parse_verdict(long) is None
    assert parse_verdict("[[a]]") is None and parse_verdict("[A]") is None


def test_parse_judgment_chat_and_reasoning_and_malformed():
    chat = ("<type>Chat</type>\n<rubric>\n1. Empathy (weight: 0.6)\n2. Accuracy - 40%\n<justify>People first.</justify>\n"
            "</rubric>\n<eval><quote_A>I hear you</quote_A><summary_B>lists facts</summary_B></eval>\n<answer>[[A]]</answer>")
    j = parse_judgment(chat)
    assert j["type"] == "Chat" and j["verdict"] == "A" and j["missing"] == []
    assert [(r["item"], r["weight"]) for r in j["rubric"]] == [("1. Empathy (weight: 0.6)", 0.6), ("2. Accuracy - 40%", 40.0)]
    assert j["justify"] == "People first." and j["quotes_a"] == ["I hear you"] and j["summaries_b"] == ["lists facts"]
    reasoning = "<type>Reasoning</type><solution>x = 3</solution><eval>A is right</eval><answer>[[B]]</answer>"
    j = parse_judgment(reasoning)
    assert (j["type"], j["solution"], j["verdict"], j["missing"]) == ("Reasoning", "x = 3", "B", [])
    j = parse_judgment("<type>Chat</type><eval>unfinished")
    assert set(j["missing"]) == {"rubric", "justify", "eval", "verdict"}
    assert parse_judgment(None)["missing"] == ["type", "eval", "verdict"]
    assert parse_judgment("<answer>[[A]] [[B]]</answer>")["verdict"] is None


def test_parse_judgment_never_raises_on_model_text():
    """Random outputs built from tag fragments, weights and noise: a dict with its fields, never an error."""
    import random

    pieces = ["<type>", "</type>", "Chat", "Reasoning", "<rubric>", "</rubric>", "<justify>", "</justify>",
              "<eval>", "</eval>", "<solution>", "</solution>", "<answer>", "</answer>", "[[A]]", "[[B]]", "[[",
              "<quote_A>", "</quote_A>", "<summary_B>", "</summary_B>", "weight: ", "0.", "4", "99999999999", "%",
              "\n", " ", "1. ", "数字", "\ufffd", "<", ">", "/", "weight:", "e9"]
    for seed in range(2000):
        rng = random.Random(seed)
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        j = parse_judgment(text)
        assert j["verdict"] in (None, "A", "B") and isinstance(j["missing"], list), text
        assert j["verdict"] is None or f"[[{j['verdict']}]]" in text
        for r in j["rubric"] or []:
            assert r["weight"] is None or r["weight"] >= 0, text
