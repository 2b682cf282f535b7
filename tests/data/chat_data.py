"""Small generated conversation files for the chat tests (every format, plus bad records)."""

from __future__ import annotations

import json
import random
from pathlib import Path


def arithmetic_records(n: int, seed: int = 0) -> list[dict]:
    """``n`` records cycling through the four accepted shapes; the answers follow one rule."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        answer = f"{a} plus {b} is {a + b}."
        shape = i % 4
        if shape == 0:
            out.append({"messages": [{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": f"What is {a} plus {b}?"},
                                     {"role": "assistant", "content": answer}]})
        elif shape == 1:
            out.append({"conversations": [{"from": "human", "value": f"Add {a} and {b}."},
                                          {"from": "gpt", "value": answer}]})
        elif shape == 2:
            out.append({"instruction": "Add the two numbers.", "input": f"{a} {b}", "output": answer})
        else:
            out.append({"user": f"{a} + {b} = ?", "assistant": answer})
    return out


BAD_LINES = [
    json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "hi"}]}),  # empty turn
    json.dumps({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}),  # unknown role
    json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),  # no assistant turn
    "{this is not json",
    json.dumps(["a", "list"]),
    json.dumps({"title": "no conversation here"}),
]


def write_chat(path: Path, n: int = 40, *, bad: bool = False, seed: int = 0, long_answer: int = 0) -> Path:
    """A .jsonl of ``n`` conversations (+ the six BAD_LINES spread through it, + one very long conversation)."""
    lines = [json.dumps(r) for r in arithmetic_records(n, seed)]
    if bad:
        for k, line in enumerate(BAD_LINES):
            lines.insert(min(3 + 5 * k, len(lines)), line)
    if long_answer:
        lines.insert(1, json.dumps({"user": "Tell me everything.", "assistant": "la " * long_answer}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
