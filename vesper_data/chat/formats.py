"""Conversation files -> lists of messages, in one shape whatever the source format.

Accepted records (one JSON object per line of a .jsonl, or the items of a JSON array file):

* OpenAI ``{"messages": [{"role": ..., "content": ...}, ...]}`` (content may be a list of
  ``{"type": "text", "text": ...}`` parts);
* ShareGPT ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}``;
* Alpaca ``{"instruction": ..., "input": ..., "output": ...}`` (``response`` in place of ``output`` too; optional
  ``system``): the user turn
  is the instruction, then a blank line and the input when there is one;
* a pair ``{"user": ..., "assistant": ...}`` (optional ``system``).

A record that cannot be used (invalid JSON, no known shape, an empty turn, an unknown role, no
assistant turn) is skipped and counted by reason in :class:`SkipCounter`; an unreadable file is
one ``DataError``. Every message comes out as ``{"role": "system"|"user"|"assistant", "content": str}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from vesper_core.errors import DataError
from vesper_data.chat.template import Message

CHAT_KEYS = ("messages", "conversations", "instruction")  # a record with one of these is a conversation
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}
_OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class BadRecord(Exception):
    """A record that is skipped; ``reason`` is its counter key, ``detail`` an example."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class SkipCounter:
    """How many conversations were read and how many skipped, by reason (with the first place each happened)."""

    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.first.setdefault(reason, where)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self, source: str = "") -> str:
        """One line, e.g. ``chat.jsonl: skipped 3 of 50 conversations: 2 empty turn (first: line 4), ...``."""
        if not self.num_skipped:
            return ""
        parts = ", ".join(f"{n} {reason} (first: {self.first[reason]})" for reason, n in self.skipped.items())
        prefix = f"{source}: " if source else ""
        return f"{prefix}skipped {self.num_skipped} of {self.read} conversations: {parts}"

    def merge(self, other: "SkipCounter") -> None:
        self.read += other.read
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
            self.first.setdefault(reason, other.first[reason])


# -- one record -------------------------------------------------------------------------------------
def _text(value: Any, where: str) -> str:
    if isinstance(value, list):  # OpenAI content parts
        parts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type", "text") == "text"]
        if all(isinstance(p, str) for p in parts) and parts:
            value = "".join(parts)
    if value is None:
        raise BadRecord("empty turn", where)
    if not isinstance(value, str):
        raise BadRecord("non-text content", f"{where}: {type(value).__name__}")
    if not value.strip():
        raise BadRecord("empty turn", where)
    return value


def _turns(items: Any, role_key: str, content_key: str, roles: dict[str, str], shape: str) -> list[Message]:
    if not isinstance(items, list) or not items:
        raise BadRecord("no turns", f"{shape} is empty or not a list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRecord(f"malformed {shape} turn", f"turn {i + 1} is a {type(item).__name__}")
        role = item.get(role_key)
        if not isinstance(role, str) or role.lower() not in roles:
            raise BadRecord("unknown role", repr(role))
        out.append({"role": roles[role.lower()], "content": _text(item.get(content_key), f"turn {i + 1}")})
    return out


def normalize_record(obj: Any) -> list[Message]:
    """One record (any accepted shape) as a list of messages; raises BadRecord."""
    if not isinstance(obj, dict):
        raise BadRecord("not a JSON object", type(obj).__name__)
    if "messages" in obj:
        messages = _turns(obj["messages"], "role", "content", _OPENAI_ROLES, "messages")
    elif "conversations" in obj:
        messages = _turns(obj["conversations"], "from", "value", _SHAREGPT_ROLES, "ShareGPT")
    elif "instruction" in obj:
        instruction = _text(obj.get("instruction"), "instruction")
        extra = obj.get("input")
        if extra is not None and not isinstance(extra, str):
            raise BadRecord("non-text content", "input")
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        answer_key = "output" if "output" in obj or "response" not in obj else "response"  # Dolly-style rows
        messages = [{"role": "user", "content": user},
                    {"role": "assistant", "content": _text(obj.get(answer_key), answer_key)}]
    elif "user" in obj and "assistant" in obj:
        messages = [{"role": "user", "content": _text(obj["user"], "user")},
                    {"role": "assistant", "content": _text(obj["assistant"], "assistant")}]
    else:
        keys = ", ".join(list(map(str, obj))[:5]) or "none"
        raise BadRecord("no conversation fields", f"keys {keys}")
    system = obj.get("system")
    if isinstance(system, str) and system.strip() and "messages" not in obj and "conversations" not in obj:
        messages.insert(0, {"role": "system", "content": system})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord("no assistant turn")
    return messages


# -- files ------------------------------------------------------------------------------------------
def _records(path: Path) -> Iterator[tuple[Any, str]]:
    """(parsed record or a BadRecord, where) for a .jsonl (line by line) or a JSON array file."""
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        try:
            data = json.loads(path.read_text(encoding="utf-8", errors="replace").removeprefix("\ufeff"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                            f"fix it or use one JSON object per line (.jsonl)") from None
        for i, item in enumerate(data, start=1):
            yield item, f"item {i}"
        return
    with path.open("rb") as fh:
        for line_number, raw in enumerate(fh, start=1):
            line = raw.decode("utf-8", errors="replace")
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                yield json.loads(line), f"line {line_number}"
            except json.JSONDecodeError as exc:
                yield BadRecord("invalid JSON", exc.msg), f"line {line_number}"


def iter_conversations(path: str | Path, counter: SkipCounter) -> Iterator[list[Message]]:
    """The usable conversations of ``path``; skips are counted in ``counter``."""
    from vesper_data.sources import check_data_file

    path = Path(path)
    check_data_file(path)
    for obj, where in _records(path):
        counter.read += 1
        try:
            if isinstance(obj, BadRecord):
                raise obj
            yield normalize_record(obj)
        except BadRecord as bad:
            counter.skip(bad.reason, f"{where}{': ' + bad.detail if bad.detail else ''}")


def read_conversations(path: str | Path) -> tuple[Iterator[list[Message]], SkipCounter]:
    """(conversations of ``path``, its skip counter, filled as the iterator is consumed).

    Raises DataError at once for a missing, empty or binary file.
    """
    from vesper_data.sources import check_data_file

    check_data_file(Path(path))
    counter = SkipCounter()
    return iter_conversations(path, counter), counter


def looks_like_chat(path: str | Path) -> bool:
    """Whether the first record of a .jsonl / .json file has a conversation shape (for ``--format auto``)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(1 << 16).decode("utf-8", errors="replace").removeprefix("\ufeff").lstrip()
    except OSError:
        return False
    if head.startswith("["):  # a JSON array: look at its first object's keys
        start = head.find("{")
        return start >= 0 and any(f'"{k}"' in head[start:start + 4096] for k in CHAT_KEYS)
    for line in head.splitlines():
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                return False
            return isinstance(obj, dict) and any(k in obj for k in CHAT_KEYS)
    return False


def count_report(counter: SkipCounter, source: str, on_warning: Callable[[str], None] | None) -> None:
    line = counter.summary(source)
    if line and on_warning is not None:
        on_warning(line)
