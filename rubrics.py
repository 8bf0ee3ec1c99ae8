"""The RM-R1 judge: its prompts, the verifiable training reward, verdict parsing, and a structured reading
of a judgment. No torch.

    messages = judge_messages(conv_a, conv_b, variant="instruct")   # -> chat messages for the template
    reward(decoded_response, "model_a")                             # -> +1 / -1 (GRPO)
    parse_verdict(output)                                           # -> "A", "B" or None (evaluation)
    parse_judgment(output)                                          # -> rubric, weights, solution, eval, ...

The prompt strings are those of the released RM-R1 models, byte for byte (tests check their sha256).
"""

from __future__ import annotations

import re

# ----------------------------------------------------------------------------------------------
# Prompts. Instruct variant: [system, user]. Reasoning (DeepSeek-distilled) variant: [user] only.
# Filled with str.format; no trailing newline.

INSTRUCT_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI Chatbots to the Client's question displayed below.\n"
    '\n'
    'First, classify the task into one of two categories: <type>Reasoning</type> or <type>Chat</type>.\n'
    '- Use <type>Reasoning</type> for tasks that involve math, coding, or require domain knowledge, multi-step inference, logical deduction, or combining information to reach a conclusion.\n'
    '- Use <type>Chat</type> for tasks that involve open-ended or factual conversation, stylistic rewrites, safety questions, or general helpfulness requests without deep reasoning.\n'
    '\n'
    'If the task is Reasoning:\n'
    "1. Solve the Client's question yourself and present your final answer within <solution>...</solution> tags.\n"
    '2. Evaluate the two Chatbot responses based on correctness, completeness, and reasoning quality, referencing your own solution.\n'
    '3. Include your evaluation inside <eval>...</eval> tags, quoting or summarizing the Chatbots using the following tags:\n'
    '   - <quote_A>...</quote_A> for direct quotes from Chatbot A\n'
    '   - <summary_A>...</summary_A> for paraphrases of Chatbot A\n'
    '   - <quote_B>...</quote_B> for direct quotes from Chatbot B\n'
    '   - <summary_B>...</summary_B> for paraphrases of Chatbot B\n'
    '4. End with your final judgment in the format: <answer>[[A]]</answer> or <answer>[[B]]</answer>\n'
    '\n'
    'If the task is Chat:\n'
    "1. Generate evaluation criteria (rubric) tailored to the Client's question and context, enclosed in <rubric>...</rubric> tags.\n"
    '2. Assign weights to each rubric item based on their relative importance.\n'
    '3. Inside <rubric>, include a <justify>...</justify> section explaining why you chose those rubric criteria and weights.\n'
    '4. Compare both Chatbot responses according to the rubric.\n'
    '5. Provide your evaluation inside <eval>...</eval> tags, using <quote_A>, <summary_A>, <quote_B>, and <summary_B> as described above.\n'
    '6. End with your final judgment in the format: <answer>[[A]]</answer> or <answer>[[B]]</answer>\n'
    '\n'
    'Important Notes:\n'
    '- Be objective and base your evaluation only on the content of the responses.\n'
    '- Do not let response order, length, or Chatbot names affect your judgment.\n'
    '- Follow the response format strictly depending on the task type.\n'
    '\n'
    'Your output must follow one of the two formats below:\n'
    '\n'
    'For Reasoning:\n'
    '<type>Reasoning</type>\n'
    '\n'
    '<solution> your own solution for the problem </solution>\n'
    '\n'
    '<eval>\n'
    '  include direct comparisons supported by <quote_A>...</quote_A> or <summary_A>...</summary_A>, and <quote_B>...</quote_B>, or <summary_B>...</summary_B>\n'
    '</eval>\n'
    '\n'
    '<answer>[[A/B]]</answer>\n'
    '\n'
    'For Chat:\n'
    '<type>Chat</type>\n'
    '\n'
    '<rubric>\n'
    '  detailed rubric items\n'
    '  <justify> justification for the rubric </justify>\n'
    '</rubric>\n'
    '\n'
    '<eval>\n'
    '  include direct comparisons supported by <quote_A>...</quote_A> or <summary_A>...</summary_A>, and <quote_B>...</quote_B>, or <summary_B>...</summary_B> tags\n'
    '</eval>\n'
    '\n'
    '<answer>[[A/B]]</answer>'
)

INSTRUCT_USER_SINGLE = (
    '[Client Question]\n'
    '{question}\n'
    '\n'
    "[The Start of Chatbot A's Response]\n"
    '{answer_a}\n'
    "[The End of Chatbot A's Response]\n"
    '\n'
    "[The Start of Chatbot B's Response]\n"
    '{answer_b}\n'
    "[The End of Chatbot B's Response]"
)

INSTRUCT_USER_MULTI = (
    '[The Start of the Conversation between Chatbot A and the Client]\n'
    '{conversation_1}\n'
    '[The End of the Conversation between Chatbot A and the Client]\n'
    '\n'
    '[The Start of the Conversation between Chatbot B and the Client]\n'
    '{conversation_2}\n'
    '[The End of the Conversation between Chatbot B and the Client]'
)

REASONING_USER_SINGLE = (
    'Please act as an impartial judge and evaluate the quality of the responses provided by two AI Chatbots to the Client question displayed below. \n'
    '\n'
    '[Client Question]\n'
    '{question}\n'
    '\n'
    "[The Start of Chatbot A's Response]\n"
    '{answer_a}\n'
    "[The End of Chatbot A's Response]\n"
    '\n'
    "[The Start of Chatbot B's Response]\n"
    '{answer_b}\n'
    "[The End of Chatbot B's Response]\n"
    '\n'
    "Output your final verdict at last by strictly following this format: '<answer>[[A]]</answer>' if Chatbot A is better, or '<answer>[[B]]</answer>' if Chatbot B is better."
)

REASONING_USER_MULTI = (
    'Please act as an impartial judge and evaluate the quality of the responses provided by two AI Chatbots to the Client question displayed below. \n'
    '\n'
    '[The Start of the Conversation between Chatbot A and the Client]\n'
    '{conversation_1}\n'
    '[The End of the Conversation between Chatbot A and the Client]\n'
    '\n'
    '[The Start of the Conversation between Chatbot B and the Client]\n'
    '{conversation_2}\n'
    '[The End of the Conversation between Chatbot B and the Client]\n'
    '\n'
    "Output your final verdict at last by strictly following this format: '<answer>[[A]]</answer>' if Chatbot A is better, or '<answer>[[B]]</answer>' if Chatbot B is better."
)


def flatten(conversation: list[dict], chatbot: str) -> str:
    """A whole conversation as lines "{Role}: {content}" joined by newlines.

    >>> flatten([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "A")
    'User: Hi\\nChatbot A: Hello'
    """
    names = {"user": "User", "assistant": f"Chatbot {chatbot}"}
    lines = []
    for k, m in enumerate(conversation):
        if m.get("role") not in names:
            raise ValueError(f"conversation turn {k}: role {m.get('role')!r} is neither 'user' nor 'assistant'")
        lines.append(f"{names[m['role']]}: {m['content']}")
    return "\n".join(lines)


def is_single_turn(conv: list[dict]) -> bool:
    return len(conv) == 2 and conv[0].get("role") == "user" and conv[1].get("role") == "assistant"


def judge_messages(conv_a: list[dict], conv_b: list[dict], variant: str = "instruct") -> list[dict]:
    """The chat messages asking the judge to compare conversation A with conversation B.

    conv_a / conv_b: the same client turns ending in each chatbot's answer. When both are exactly
    [user, assistant] the pair is single-turn (question, answer_a, answer_b); otherwise each whole
    conversation is flattened (see `flatten`).

    >>> m = judge_messages([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ...                    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}])
    >>> [x["role"] for x in m], m[1]["content"].splitlines()[:2]
    (['system', 'user'], ['[Client Question]', '2+2?'])
    """
    if variant not in ("instruct", "reasoning"):
        raise ValueError(f"variant must be 'instruct' or 'reasoning', got {variant!r}")
    for name, conv in (("conv_a", conv_a), ("conv_b", conv_b)):
        if not conv or not isinstance(conv[-1], dict) or conv[-1].get("role") != "assistant":
            raise ValueError(f"{name} must end with the chatbot's answer (an assistant message)")
    single = is_single_turn(conv_a) and is_single_turn(conv_b)
    if single and conv_a[0]["content"] != conv_b[0]["content"]:  # the prompt shows one question
        raise ValueError("conv_a and conv_b answer different questions; a pair shares its question")
    if single:
        template = INSTRUCT_USER_SINGLE if variant == "instruct" else REASONING_USER_SINGLE
        user = template.format(question=conv_a[0]["content"], answer_a=conv_a[1]["content"],
                               answer_b=conv_b[1]["content"])
    else:
        template = INSTRUCT_USER_MULTI if variant == "instruct" else REASONING_USER_MULTI
        user = template.format(conversation_1=flatten(conv_a, "A"), conversation_2=flatten(conv_b, "B"))
    if variant == "instruct":
        return [{"role": "system", "content": INSTRUCT_SYSTEM}, {"role": "user", "content": user}]
    return [{"role": "user", "content": user}]


# ----------------------------------------------------------------------------------------------
# Reward (training) and verdict (evaluation): two different rules, as in the authors' code.

TAG_A, TAG_B = "<answer>[[A]]</answer>", "<answer>[[B]]</answer>"


def reward(response_text: str, label: str) -> float:
    """GRPO's verifiable reward: +1 if the verdict tag in the last 80 characters names the labelled
    response and the other tag is absent there, else -1.

    response_text is the response decoded *with* special tokens, up to and including its first EOS, so
    the EOS text ("<|im_end|>", 10 characters) takes part of the 80.

    >>> reward("...<answer>[[A]]</answer><|im_end|>", "model_a"), reward("<answer>[[A]]</answer>", "model_b")
    (1.0, -1.0)
    """
    tail = response_text[-80:]
    if label == "model_a":
        good, bad = TAG_A, TAG_B
    elif label == "model_b":
        good, bad = TAG_B, TAG_A
    else:
        raise ValueError(f"unknown label {label!r}: expected 'model_a' or 'model_b'")
    return 1.0 if good in tail and bad not in tail else -1.0


def parse_verdict(output: str) -> str | None:
    """Evaluation rule: search the whole output (decoded without special tokens) for [[A]] and [[B]];
    exactly one present -> that letter; both or neither -> None (invalid, scored as wrong).

    >>> parse_verdict("<answer>[[B]]</answer>"), parse_verdict("[[A]] or [[B]]"), parse_verdict("A")
    ('B', None, None)
    """
    a, b = "[[A]]" in output, "[[B]]" in output
    if a == b:
        return None
    return "A" if a else "B"


# ----------------------------------------------------------------------------------------------
# A structured reading of a judgment, for analysis. Never raises on model text.

_WEIGHT = re.compile(r"(\d+(?:\.\d+)?)\s*%|weight\s*[:=]?\s*(\d+(?:\.\d+)?)", re.I)


def _section(text: str, tag: str) -> str | None:
    m = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
    return m.group(1).strip() if m else None


def parse_judgment(output: str) -> dict:
    """Split a judgment into its parts; report what is missing rather than raising.

    Returns {"type": "Chat"/"Reasoning"/None, "rubric": [{"item", "weight"}], "justify", "solution",
    "eval", "quotes_a", "quotes_b", "summaries_a", "summaries_b", "verdict", "missing": [...]}.
    Rubric items are the non-empty lines of <rubric> outside <justify>; an item's weight is its first
    percentage ("40%") or "weight: 0.4" number, else None.

    >>> j = parse_judgment("<type>Chat</type><rubric>1. Accuracy (60%)\\n2. Tone (40%)<justify>why</justify>"
    ...                    "</rubric><eval>x</eval><answer>[[A]]</answer>")
    >>> [(r["item"], r["weight"]) for r in j["rubric"]], j["verdict"], j["missing"]
    ([('1. Accuracy (60%)', 60.0), ('2. Tone (40%)', 40.0)], 'A', [])
    """
    if not isinstance(output, str):
        output = "" if output is None else str(output)
    kind = _section(output, "type")
    kind = kind if kind in ("Chat", "Reasoning") else None
    rubric_text = _section(output, "rubric")
    items = []
    if rubric_text is not None:
        outside = re.sub(r"<justify>.*?</justify>", "", rubric_text, flags=re.S)
        for line in outside.splitlines():
            line = line.strip()
            if line:
                m = _WEIGHT.search(line)
                items.append({"item": line, "weight": float(m.group(1) or m.group(2)) if m else None})
    answer = _section(output, "answer")
    verdict = parse_verdict(answer) if answer is not None else None
    found = {
        "type": kind,
        "rubric": items if rubric_text is not None else None,
        "justify": _section(rubric_text or "", "justify"),
        "solution": _section(output, "solution"),
        "eval": _section(output, "eval"),
        "quotes_a": re.findall(r"<quote_A>(.*?)</quote_A>", output, re.S),
        "quotes_b": re.findall(r"<quote_B>(.*?)</quote_B>", output, re.S),
        "summaries_a": re.findall(r"<summary_A>(.*?)</summary_A>", output, re.S),
        "summaries_b": re.findall(r"<summary_B>(.*?)</summary_B>", output, re.S),
        "verdict": verdict,
    }
    # What the declared task type requires (both types need an eval and a verdict).
    needed = ["type", "eval", "verdict"] + (["rubric", "justify"] if kind == "Chat" else
                                            ["solution"] if kind == "Reasoning" else [])
    found["missing"] = [k for k in needed if found[k] is None]
    return found
