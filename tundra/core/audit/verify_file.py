"""Verifying an export file on its own: JSON lines, CSV or JSON, read as a stream.

Each reader turns lines or records into :class:`~tundra.core.audit.verify.Entry` objects, or a
:class:`~tundra.core.audit.verify.MalformedRow` naming the line, and never loads the whole file.

JSON lines get a fast path. An exported line is the canonical JSON of the full row, so the
canonical body that was hashed is the line minus its ``"chain_hash"`` and ``"prev_hash"``
members. The fast path cuts those two members out at the positions canonical order puts them
(right before the top-level ``"details"`` and ``"request_id"`` keys; JSON strings cannot contain
the unescaped ``,"`` that marks a key, so the positions are found by counting ``,"``) and hashes
the rest. A match means the line is byte-for-byte the canonical row. Anything else (another key
order, whitespace, an edit) goes to the exact reader, which parses the line and re-encodes it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from binascii import hexlify
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tundra.core.audit.chain import (
    EXPORT_FIELDS,
    PREFIXED_SHA3,
    ROW_COLUMNS,
    body_head,
    body_tail,
    canonical_json,
)
from tundra.core.audit.verify import ChainWalker, Entry, MalformedRow, VerifyResult
from tundra.core.errors import InvalidFile

FORMATS = ("jsonl", "csv", "json")
#: CSV columns, in the order a person reads them.
CSV_FIELDS = ROW_COLUMNS
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TEXT_FIELDS = ("occurred_at", "actor", "action", "resource", "request_id")
_SEQ_LIMIT = 2**63
_MAX_ROW_CHARS = 16 << 20


def detect_format(path: Path) -> str:
    """The format of an export: by its extension when it names one, else by its content."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in {"jsonl", "ndjson", "csv", "json"}:
        return "jsonl" if suffix == "ndjson" else suffix
    try:
        with path.open("rb") as handle:
            start = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as exc:
        raise InvalidFile(f"cannot read {path}: {exc.strerror or exc}") from exc
    if start.startswith(b"["):
        return "json"
    if start.startswith(b"{"):
        return "jsonl"
    if start.startswith(b"seq,"):
        return "csv"
    raise InvalidFile(
        f"{path} is not a Tundra audit export (JSON lines, CSV or JSON)",
        hint="export one with `tundra audit export`, or name its format",
    )


def entry_from_object(obj: Any, where: str) -> Entry | MalformedRow:
    """An exported row object as an entry, or why it is not one."""
    if not isinstance(obj, dict):
        return MalformedRow(where, "not a JSON object")
    if set(obj) != set(EXPORT_FIELDS):
        missing = sorted(set(EXPORT_FIELDS) - set(obj))
        extra = sorted(set(obj) - set(EXPORT_FIELDS))
        problem = (
            f"missing field(s) {', '.join(missing)}"
            if missing
            else (f"unexpected field(s) {', '.join(extra)}")
        )
        return MalformedRow(where, problem)
    seq = obj["seq"]
    if type(seq) is not int or not 0 < seq < _SEQ_LIMIT:
        return MalformedRow(where, "seq is not a positive integer")
    for name in _TEXT_FIELDS:
        if not isinstance(obj[name], str):
            return MalformedRow(where, f"{name} is not a string")
    for name in ("prev_hash", "chain_hash"):
        if not isinstance(obj[name], str) or not _HEX64.fullmatch(obj[name]):
            return MalformedRow(where, f"{name} is not 64 lowercase hex digits")
    try:
        details = canonical_json(obj["details"]).decode("utf-8")
    except (ValueError, UnicodeError) as exc:
        return MalformedRow(where, f"details cannot be encoded: {exc}")
    return Entry(
        seq=seq,
        prev_hash=obj["prev_hash"],
        chain_hash=obj["chain_hash"],
        head=body_head(action=obj["action"], actor=obj["actor"]),
        details=details,
        tail=body_tail(
            occurred_at=obj["occurred_at"], request_id=obj["request_id"], resource=obj["resource"]
        ),
        where=where,
    )


def _decode_line(raw: bytes, where: str) -> Entry | MalformedRow:
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text)
    except UnicodeDecodeError:
        return MalformedRow(where, "not valid UTF-8")
    except (ValueError, RecursionError) as exc:
        return MalformedRow(where, f"not valid JSON ({exc}); the file may be truncated or edited")
    return entry_from_object(obj, where)


class NumberedLines:
    """The lines of a binary file with their 1-based numbers, shared by the fast and exact paths."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.number = 0

    def __iter__(self) -> NumberedLines:
        return self

    def __next__(self) -> tuple[int, bytes]:
        raw = self._handle.readline()
        if not raw:
            raise StopIteration
        self.number += 1
        if self.number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        return self.number, raw


def jsonl_entries(handle: BinaryIO | NumberedLines) -> Generator[Entry | MalformedRow, None, None]:
    lines = handle if isinstance(handle, NumberedLines) else NumberedLines(handle)
    for number, raw in lines:
        if raw.strip():
            yield _decode_line(raw.rstrip(b"\r\n"), f"line {number}")


def csv_entries(handle: BinaryIO) -> Generator[Entry | MalformedRow, None, None]:
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
        if header is None or tuple(header) != CSV_FIELDS:
            yield MalformedRow("line 1", f"the header must be {','.join(CSV_FIELDS)}")
            return
        for record in reader:
            where = f"line {reader.line_num}"
            if len(record) != len(CSV_FIELDS):
                yield MalformedRow(
                    where,
                    f"{len(record)} fields instead of {len(CSV_FIELDS)}; "
                    "the file may be truncated or edited",
                )
                continue
            row = dict(zip(CSV_FIELDS, record, strict=True))
            seq = row["seq"]
            if (
                not (seq.isascii() and seq.isdigit())
                or seq != str(int(seq))
                or not 0 < int(seq) < _SEQ_LIMIT
            ):
                yield MalformedRow(where, "seq is not a positive integer")
                continue
            if not (_HEX64.fullmatch(row["prev_hash"]) and _HEX64.fullmatch(row["chain_hash"])):
                yield MalformedRow(where, "a hash is not 64 lowercase hex digits")
                continue
            # The details cell is hashed as written; Entry.variants re-encodes it on a mismatch.
            yield Entry(
                seq=int(seq),
                prev_hash=row["prev_hash"],
                chain_hash=row["chain_hash"],
                head=body_head(action=row["action"], actor=row["actor"]),
                details=row["details"],
                tail=body_tail(
                    occurred_at=row["occurred_at"],
                    request_id=row["request_id"],
                    resource=row["resource"],
                ),
                where=where,
            )
    except csv.Error as exc:
        yield MalformedRow(
            f"line {reader.line_num}", f"bad CSV ({exc}); the file may be truncated or edited"
        )
    except UnicodeDecodeError:
        yield MalformedRow(f"line {reader.line_num + 1}", "not valid UTF-8")
    finally:
        with contextlib.suppress(ValueError):  # the file may be closed already
            text.detach()


def json_entries(handle: BinaryIO) -> Generator[Entry | MalformedRow, None, None]:
    """Objects of a JSON array, decoded incrementally (any layout, not only ours)."""
    text = io.TextIOWrapper(handle, encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    buf, pos, line, eof = "", 0, 1, False
    state = "start"  # start -> value -> (comma -> value)* -> end

    def more() -> bool:
        nonlocal buf, pos, eof
        chunk = text.read(1 << 16)
        if not chunk:
            eof = True
            return False
        buf = buf[pos:] + chunk
        pos = 0
        return True

    def skip_space() -> str:
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                line += buf[pos] == "\n"
                pos += 1
            if pos < len(buf) or not more():
                return buf[pos] if pos < len(buf) else ""

    try:
        while True:
            char = skip_space()
            where = f"line {line}"
            if state == "start":
                if char != "[":
                    yield MalformedRow(where, "a JSON export must be an array")
                    return
                pos += 1
                state = "first"
            elif state in {"first", "value"}:
                if char == "]" and state == "first":
                    pos += 1
                    state = "end"
                    continue
                if char != "{":
                    yield MalformedRow(
                        where,
                        "expected a row object" + ("; the file is truncated" if not char else ""),
                    )
                    return
                while True:
                    try:
                        obj, end = decoder.raw_decode(buf, pos)
                        break
                    except json.JSONDecodeError as exc:
                        # Read on only while the object could just be incomplete (bounded, so
                        # an early error does not pull the rest of a huge file into memory).
                        if eof or len(buf) - pos > _MAX_ROW_CHARS or not more():
                            yield MalformedRow(
                                where,
                                f"not valid JSON ({exc.msg}); the file may be truncated or edited",
                            )
                            return
                line += buf.count("\n", pos, end)
                pos = end
                state = "after"
                yield entry_from_object(obj, where)
            elif state == "after":
                if char == ",":
                    pos += 1
                    state = "value"
                elif char == "]":
                    pos += 1
                    state = "end"
                else:
                    yield MalformedRow(
                        where,
                        "expected ',' or ']'" + ("; the file is truncated" if not char else ""),
                    )
                    return
            else:  # end
                if char:
                    yield MalformedRow(where, "unexpected data after the closing ']'")
                return
    except UnicodeDecodeError:
        yield MalformedRow(f"line {line}", "not valid UTF-8")
    finally:
        with contextlib.suppress(ValueError):  # the file may be closed already
            text.detach()


_READERS: dict[str, Callable[[BinaryIO], Generator[Entry | MalformedRow, None, None]]] = {
    "jsonl": jsonl_entries,
    "csv": csv_entries,
    "json": json_entries,
}


def _strict(items: Iterator[Entry | MalformedRow]) -> Iterator[Entry]:
    for item in items:
        if isinstance(item, MalformedRow):
            raise item
        yield item


_CHAIN = b',"chain_hash":"'
_PREV = b',"prev_hash":"'


def _jsonl_fast(lines: NumberedLines, walker: ChainWalker) -> tuple[int, bytes] | None:
    """Verify canonical lines quickly, advancing the walker; return the first line it cannot
    vouch for (number, bytes), or None at the end of the file or once the walker found damage.
    """
    expected = walker.expected
    if expected is None:
        return None  # the anchor row goes through the exact reader
    last_hex = walker.last_hash.encode()
    last_raw = bytes.fromhex(walker.last_hash)
    checkpoint = walker.checkpoint_seq
    done = 0
    base = PREFIXED_SHA3
    balked: tuple[int, bytes] | None = None
    for number, raw in lines:
        line = raw[:-1] if raw.endswith(b"\n") else raw
        i = line.find(_CHAIN)
        j = line.rfind(_PREV)
        if (
            i < 0
            or line.find(b',"', line.find(b',"') + 1) != i
            or line[i + 79 : i + 91] != b'","details":'
            or j < i
            or line[j : j + 78] != _PREV + last_hex
            or line[j + 78 : j + 94] != b'","request_id":"'
            or line.count(b',"', j + 79) != 3
            or not line.endswith(b"}")
        ):
            balked = (number, raw)
            break
        body = line[:i] + line[i + 80 : j] + line[j + 79 :]
        digits = body[body.rfind(b',"seq":') + 7 : -1]
        if not digits.isdigit() or int(digits) != expected:
            balked = (number, raw)
            break
        digest = base.copy()
        digest.update(expected.to_bytes(8, "big") + last_raw + body)
        raw_hash = digest.digest()
        hex_hash = hexlify(raw_hash)
        if line[i + 15 : i + 79] != hex_hash:
            balked = (number, raw)
            break
        last_raw, last_hex = raw_hash, hex_hash
        done += 1
        if expected == checkpoint:
            walker.accept(expected, last_hex.decode(), count=done)
            done = 0
            if walker.finding:
                return None
        expected += 1
    if done:
        walker.accept(expected - 1, last_hex.decode(), count=done)
    return balked


def verify_file(
    path: Path, *, fmt: str | None = None, checkpoint: tuple[int, str] | None = None
) -> VerifyResult:
    """Verify an export file; a filtered export is verified from its first row's prev_hash."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InvalidFile(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")

    def locate(chain_hash: str) -> str | None:
        with path.open("rb") as again, contextlib.closing(_READERS[fmt](again)) as items:
            for item in items:
                if isinstance(item, Entry) and item.chain_hash == chain_hash:
                    return item.where
        return None

    walker = ChainWalker(
        source=str(path),
        genesis=False,
        locate=locate,
        checkpoint_seq=None if checkpoint is None else checkpoint[0],
        checkpoint_hash=None if checkpoint is None else checkpoint[1],
    )
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidFile(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle:
        if fmt != "jsonl":
            with contextlib.closing(_READERS[fmt](handle)) as items:
                walker.walk(_strict(items))
            return walker.result()
        # JSON lines: the first row (the anchor) exactly, then fast until a line balks, that
        # line exactly (it may be fine, only not canonical), then fast again.
        lines = NumberedLines(handle)
        if not walker.walk(_strict(jsonl_entries(lines)), limit=1):
            return walker.result()
        while walker.finding is None:
            balked = _jsonl_fast(lines, walker)
            if balked is None:
                break
            number, raw = balked
            first = [_decode_line(raw.rstrip(b"\r\n"), f"line {number}")] if raw.strip() else []
            pending = _strict(_chain(first, jsonl_entries(lines)))
            if not walker.walk(pending, limit=1):
                break
    return walker.result()


def _chain(
    first: list[Entry | MalformedRow], rest: Iterator[Entry | MalformedRow]
) -> Generator[Entry | MalformedRow, None, None]:
    yield from first
    yield from rest
