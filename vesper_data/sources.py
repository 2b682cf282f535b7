"""Dataset files -> documents -> one array of token ids.

A format reader turns a file into documents (``FORMATS``: "text", "jsonl", "squad", "hf"). Long documents
may arrive in pieces: every piece but the last is a :class:`DocumentPiece` with
``continues=True``, so nothing ever holds a whole multi-GB file and
:func:`tokenize_documents` still puts EOS only between real documents.

A plugin format (entry point group ``vesper.formats``) is a reader
``(path: Path, *, text_field: str = "text") -> Iterator[str]``; it may also accept
``on_warning`` to report recoverable problems in one line.
"""

from __future__ import annotations

import codecs
import inspect
import json
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from vesper_core.errors import DataError
from vesper_core.registry import Registry

Reader = Callable[..., Iterator[str]]
FORMATS: Registry[Reader] = Registry("data format", "vesper.formats")

BLOCK_BYTES = 1 << 20  # read size of the text reader
PIECE_CHARS = 1 << 16  # encode_batch item size: small enough to spread over threads
BINARY_PROBE_BYTES = 8192
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a bad byte


class DocumentPiece(str):
    """A piece of a document that ``continues`` in the next item (no EOS after it)."""

    continues: bool = True


# -- checks and decoding ---------------------------------------------------------------------
def check_data_file(path: Path) -> None:
    """Raise DataError (naming the path) unless ``path`` is a non-empty, non-binary file."""
    if not path.exists():
        raise DataError(f"dataset file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a file; pass a .txt or .jsonl file")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); pass a file with text in it")
    with path.open("rb") as fh:
        head = fh.read(BINARY_PROBE_BYTES)
    if b"\x00" in head:
        raise DataError(
            f"{path} looks binary, not text (NUL bytes in its first 8 KB); pass a UTF-8 .txt or .jsonl "
            f"file (UTF-16 text must be re-saved as UTF-8)"
        )


class _InvalidByteCounter:
    """Turns surrogate-escaped bad bytes into U+FFFD and counts them."""

    def __init__(self) -> None:
        self.count = 0

    def clean(self, text: str) -> str:
        text, found = _ESCAPED_BYTE.subn("\ufffd", text)
        self.count += found
        return text

    def report(self, path: Path, on_warning: Callable[[str], None] | None) -> None:
        if self.count and on_warning is not None:
            noun = "byte" if self.count == 1 else "bytes"
            on_warning(f"{path.name}: {self.count} invalid UTF-8 {noun} replaced with U+FFFD")


def _cut_point(text: str, limit: int) -> int:
    """Index after the last newline (else whitespace) at or before ``limit``; 0 when none."""
    cut = text.rfind("\n", 0, limit)
    if cut < 0:
        cut = max(text.rfind(" ", 0, limit), text.rfind("\t", 0, limit))
    return cut + 1


def split_text(text: str, max_chars: int = PIECE_CHARS) -> list[str]:
    """Split ``text`` into pieces of at most ~``max_chars`` that end at a newline or space."""
    pieces = []
    while len(text) > max_chars:
        cut = _cut_point(text, max_chars) or max_chars  # one giant word: cut it anyway
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


# -- built-in formats -------------------------------------------------------------------------
@FORMATS.register("text", aliases=("txt",))
def read_text(path: Path, *, text_field: str = "text",
              on_warning: Callable[[str], None] | None = None) -> Iterator[str]:
    """A text file is one document, streamed in ~1 MB pieces that end at a line break."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    bad = _InvalidByteCounter()
    carry, first, seen_text = "", True, False
    with path.open("rb") as fh:
        while True:
            block = fh.read(BLOCK_BYTES)
            text = carry + bad.clean(decoder.decode(block, final=not block))
            if first:
                text, first = text.removeprefix("\ufeff"), False
            if not block:
                break
            cut = _cut_point(text, len(text))
            if cut == 0 and len(text) < 16 * BLOCK_BYTES:
                carry = text  # no break yet: keep reading
                continue
            piece, carry = (text[:cut], text[cut:]) if cut else (text, "")
            seen_text = seen_text or not piece.isspace()
            yield DocumentPiece(piece)
    seen_text = seen_text or (bool(text) and not text.isspace())
    if not seen_text:
        raise DataError(f"{path} has no text (only whitespace); pass a file with text in it")
    bad.report(path, on_warning)
    yield text  # the last piece ends the document (may be "")


def _jsonl_document(obj: object, text_field: str, where: str) -> str:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}; one object per line")
    if text_field in obj:
        value = obj[text_field]
    elif "user" in obj and "assistant" in obj:
        if not (isinstance(obj["user"], str) and isinstance(obj["assistant"], str)):
            raise DataError(f"{where}: 'user' and 'assistant' must be strings")
        value = f"User: {obj['user']}\nAssistant: {obj['assistant']}"
    else:
        keys = ", ".join(map(repr, obj)) or "none"
        raise DataError(
            f"{where}: no {text_field!r} field (keys present: {keys}); pass --text-field NAME "
            f"or use 'user'/'assistant' pairs"
        )
    if not isinstance(value, str):
        raise DataError(f"{where}: field {text_field!r} is a {type(value).__name__}, expected a string")
    return value


@FORMATS.register("jsonl", aliases=("ndjson",))
def read_jsonl(path: Path, *, text_field: str = "text",
               on_warning: Callable[[str], None] | None = None) -> Iterator[str]:
    """One JSON object per line: its ``text_field``, else "User: …\\nAssistant: …", is a document."""
    bad = _InvalidByteCounter()
    found = False
    with path.open("rb") as fh:
        for line_number, raw in enumerate(fh, start=1):
            line = bad.clean(raw.decode("utf-8", errors="surrogateescape"))
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            where = f"{path.name} line {line_number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); "
                                f"fix or remove the line") from None
            text = _jsonl_document(obj, text_field, where)
            if text:
                found = True
                yield text
    if not found:
        raise DataError(f"{path} has no documents (every line is blank or has empty text)")
    bad.report(path, on_warning)


_SQUAD_SHAPE = '{"data": [{"paragraphs": [{"context": ..., "qas": [...]}]}]}'


def _squad_paragraph(paragraph: dict) -> str:
    """Spec §4.2: the context and a newline, then "Q: <question> A: <first answer>\n" per answered QA."""
    parts = [f"{paragraph['context']}\n"]
    for qa in paragraph.get("qas") or []:
        if not isinstance(qa, dict):
            continue
        question, answers = qa.get("question"), qa.get("answers")
        if isinstance(question, str) and isinstance(answers, list) and answers and isinstance(answers[0], dict):
            parts.append(f"Q: {question} A: {answers[0].get('text', '')}\n")
    return "".join(parts)


@FORMATS.register("squad", aliases=("json",))
def read_squad(path: Path, *, text_field: str = "text",
               on_warning: Callable[[str], None] | None = None) -> Iterator[str]:
    """SQuAD-style JSON: each paragraph (context + its questions and first answers) is one document.

    Upstream Rust made the whole file one string; here EOS separates paragraphs. Articles or
    paragraphs lacking the arrays are skipped, as upstream did.
    """
    raw = path.read_bytes()
    bad = _InvalidByteCounter()
    try:
        obj = json.loads(bad.clean(raw.decode("utf-8", errors="surrogateescape")).removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        found = (f"top-level keys {', '.join(map(repr, list(obj)[:5])) or 'none'}" if isinstance(obj, dict)
                 else f"a top-level {type(obj).__name__}")
        raise DataError(f"{path} is not SQuAD-shaped JSON (expected {_SQUAD_SHAPE}, found {found}); "
                        f"for other JSON use .jsonl with one {{\"text\": ...}} object per line")
    found_any = False
    for article in data:
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        for paragraph in paragraphs if isinstance(paragraphs, list) else []:
            if isinstance(paragraph, dict) and isinstance(paragraph.get("context"), str):
                found_any = True
                yield _squad_paragraph(paragraph)
    if not found_any:
        raise DataError(f"{path} is not SQuAD-shaped JSON: its 'data' list has no paragraphs with a "
                        f"'context' string (expected {_SQUAD_SHAPE})")
    bad.report(path, on_warning)


@FORMATS.register("hf", aliases=("parquet", "arrow"))
def read_hf(path: Path | str, *, text_field: str = "text",
            on_warning: Callable[[str], None] | None = None) -> Iterator[str]:
    """A Hugging Face dataset: ``hf:NAME[:CONFIG][@SPLIT]``, or a local .parquet/.arrow file or folder."""
    from vesper_data.hf_source import read_hf_documents  # pyarrow / datasets load only when used

    return read_hf_documents(str(path), text_field=text_field)


@FORMATS.register("chat", aliases=("messages", "sharegpt", "alpaca"))
def read_chat(path: Path, *, text_field: str = "text",
              on_warning: Callable[[str], None] | None = None) -> Iterator[str]:
    """Conversations (OpenAI messages, ShareGPT, Alpaca, user/assistant pairs) rendered with the default
    chat template, one document each. Training masks them (vesper_data.chat); this text view serves
    tokenizer training and tools that read documents."""
    from vesper_data.chat import default_template, read_conversations

    template = default_template()
    conversations, skipped = read_conversations(path)
    found = False
    for messages in conversations:
        found = True
        yield template.render(messages)
    if not found:
        raise DataError(f"{path} has no usable conversations; {skipped.summary() or 'the file has no records'}")
    if skipped.num_skipped and on_warning is not None:
        on_warning(skipped.summary(path.name))


# -- format choice and reading ----------------------------------------------------------------
HF_PREFIX = "hf:"


def is_hf_spec(path: Path | str) -> bool:
    return str(path).startswith(HF_PREFIX)


def detect_format(path: Path | str, fmt: str = "auto") -> str:
    """Canonical format name: ``fmt`` itself, or for "auto" a guess from ``hf:`` or the file extension.

    Like Rust: .jsonl -> jsonl, .json -> squad, anything else -> text; plus hf: / .parquet / .arrow -> hf,
    and .jsonl / .json whose first record has ``messages``, ``conversations`` or ``instruction`` -> chat
    (user/assistant pairs stay jsonl text unless ``--format chat``).
    """
    if fmt != "auto":
        return FORMATS.resolve(fmt)
    if is_hf_spec(path):
        return "hf"
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        from vesper_data.chat.formats import looks_like_chat

        if looks_like_chat(path):  # messages / conversations / instruction records
            return "chat"
        return "jsonl" if suffix != ".json" else "squad"
    if suffix in (".parquet", ".arrow"):
        return "hf"
    return "text"


def check_source(path: Path | str, name: str) -> None:
    """The file checks that fit format ``name`` (hf specs and dataset folders are checked by their reader)."""
    if name == "hf":
        if not is_hf_spec(path) and not Path(path).exists():
            raise DataError(f"dataset file not found: {path}")
        return
    check_data_file(Path(path))


def read_documents(path: Path | str, fmt: str = "auto", *, text_field: str = "text",
                   on_warning: Callable[[str], None] | None = None) -> Iterator[str]:
    """Documents of one file (see the module docstring about pieces); errors name the path."""
    name = detect_format(path, fmt)
    check_source(path, name)
    path = path if is_hf_spec(path) else Path(path)
    reader = FORMATS.get(name)
    if _accepts_on_warning(reader):
        return reader(path, text_field=text_field, on_warning=on_warning)
    return reader(path, text_field=text_field)  # a plugin reader written as (path, *, text_field)


def _accepts_on_warning(reader: Reader) -> bool:
    try:
        params = inspect.signature(reader).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "on_warning" or p.kind is p.VAR_KEYWORD for p in params)


# -- tokenization -----------------------------------------------------------------------------
def _pieces(docs: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """(piece, ends_document) with every item split into encode-sized pieces."""
    for doc in docs:
        parts = split_text(doc)
        last_continues = getattr(doc, "continues", False)
        for i, part in enumerate(parts):
            yield part, (i == len(parts) - 1 and not last_continues)
        if not parts and not last_continues:
            yield "", True


def encode_stream(docs: Iterable[str], tokenizer, *, batch_chars: int = 1 << 22
                  ) -> Iterator[tuple[list[tuple[np.ndarray, bool]], int]]:
    """Documents encoded batch by batch: ``([(ids uint32, ends_document), ...], utf8_bytes)``.

    Each batch holds about ``batch_chars`` characters split into encode-sized pieces, encoded with
    one ``encode_batch`` call (all cores); memory stays bounded by the batch size.
    """
    batch: list[tuple[str, bool]] = []
    size = 0

    def flush():
        encoded = tokenizer.encode_batch([text for text, _ in batch])
        num_bytes = sum(len(text.encode("utf-8")) for text, _ in batch)
        out = [(np.array(ids, dtype=np.uint32), ends) for ids, (_, ends) in zip(encoded, batch)]
        batch.clear()
        return out, num_bytes

    for text, ends in _pieces(docs):
        batch.append((text, ends))
        size += len(text)
        if size >= batch_chars:
            yield flush()
            size = 0
    if batch:
        yield flush()


def tokenize_documents(docs: Iterable[str], tokenizer, *, eos_between: bool = True,
                       batch_chars: int = 1 << 20,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """All documents' token ids as one uint32 array, EOS between documents when the tokenizer has one.

    ``progress(done_bytes)`` receives the running count of UTF-8 bytes tokenized.
    """
    eos = np.array([tokenizer.eos_id], dtype=np.uint32) if eos_between and tokenizer.eos_id is not None else None
    chunks: list[np.ndarray] = []
    batch: list[tuple[str, bool]] = []
    done_bytes = 0
    owe_eos = False  # a document with tokens has ended: EOS goes before the next token
    doc_has_tokens = False

    def flush() -> None:
        nonlocal done_bytes, owe_eos, doc_has_tokens
        encoded = tokenizer.encode_batch([text for text, _ in batch])
        for (text, ends), ids in zip(batch, encoded):
            if ids:
                if owe_eos and eos is not None:
                    chunks.append(eos)
                owe_eos = False
                chunks.append(np.asarray(ids, dtype=np.uint32))
                doc_has_tokens = True
            if ends:
                owe_eos = owe_eos or doc_has_tokens
                doc_has_tokens = False
            done_bytes += len(text.encode("utf-8"))
        batch.clear()
        if progress is not None:
            progress(done_bytes)

    size = 0
    for text, ends in _pieces(docs):
        batch.append((text, ends))
        size += len(text)
        if size >= batch_chars:
            flush()
            size = 0
    if batch:
        flush()
    if not chunks:
        return np.zeros(0, dtype=np.uint32)
    return np.concatenate(chunks)


def load_token_ids(paths: Sequence[Path | str] | Path | str, tokenizer, fmt: str = "auto", *,
                   text_field: str = "text", on_warning: Callable[[str], None] | None = None,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Read and tokenize one or more files (each file's documents, EOS between documents)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    for path in paths:  # fail on a bad file before spending time on the good ones
        check_source(path, detect_format(path, fmt))

    def documents() -> Iterator[str]:
        for path in paths:
            yield from read_documents(path, fmt, text_field=text_field, on_warning=on_warning)

    return tokenize_documents(documents(), tokenizer, progress=progress)
