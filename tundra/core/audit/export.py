"""Writing exports: JSON lines, CSV and JSON, streamed from the database page by page.

Every exported row carries all it needs to be verified alone: seq, occurred_at, actor, action,
resource, request_id, details, prev_hash and chain_hash. A JSON-lines line (and each element of
the JSON array, one per line) is the canonical JSON of the whole row, keys sorted; a CSV row has
the columns of :data:`~tundra.core.audit.verify_file.CSV_FIELDS` with details as canonical JSON.

A time-filtered export is the contiguous range of seq from the first row at or after ``since``
to the last row before ``until``, so it verifies as one unbroken piece of the chain even when
clocks of several control-plane instances disagree a little.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import IO, Any

from tundra.core.audit.chain import canonical_json
from tundra.core.audit.verify_file import CSV_FIELDS, FORMATS
from tundra.core.errors import InvalidInput
from tundra.core.storage.db import Row, Transaction

PAGE = 2000
_PAGE_SQL = (
    "SELECT seq, occurred_at, actor, action, resource, request_id, details, prev_hash,"
    " chain_hash FROM audit_log WHERE seq > :after AND seq <= :last ORDER BY seq"
    " LIMIT :n"
)


def seq_range(tx: Transaction, *, since: str | None, until: str | None) -> tuple[int, int] | None:
    """The (first, last) seq of an export from ``since`` (inclusive) to ``until`` (exclusive)."""
    first = (
        tx.fetchval("SELECT min(seq) FROM audit_log WHERE occurred_at >= :t", {"t": since})
        if since
        else tx.fetchval("SELECT min(seq) FROM audit_log")
    )
    last = (
        tx.fetchval("SELECT max(seq) FROM audit_log WHERE occurred_at < :t", {"t": until})
        if until
        else tx.fetchval("SELECT max(seq) FROM audit_log")
    )
    if first is None or last is None or int(first) > int(last):
        return None
    return int(first), int(last)


def rows_between(tx: Transaction, first: int, last: int) -> Iterator[Row]:
    """Rows first..last in seq order, a page at a time (keyset pagination: no OFFSET scans)."""
    after = first - 1
    while after < last:
        page = tx.fetchall(_PAGE_SQL, {"after": after, "last": last, "n": PAGE})
        if not page:
            return
        yield from page
        after = int(page[-1]["seq"])


def _details(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        # Only a tampered row holds non-JSON details: export it as a string, and verification
        # of the export will point at this row.
        return text


def export_row(row: Row) -> dict[str, Any]:
    exported = {
        name: row[name]
        for name in (
            "occurred_at",
            "actor",
            "action",
            "resource",
            "request_id",
            "prev_hash",
            "chain_hash",
        )
    }
    exported["seq"] = int(row["seq"])
    exported["details"] = _details(row["details"])
    return exported


class _Sink:
    """Text written to a text or a binary stream."""

    def __init__(self, out: IO[Any]) -> None:
        self._binary = not isinstance(out, io.TextIOBase)
        self._out = out

    def write(self, text: str) -> None:
        self._out.write(text.encode("utf-8") if self._binary else text)


def write_rows(rows: Iterator[Row], out: IO[Any], fmt: str) -> int:
    """Write ``rows`` to ``out`` in ``fmt``; return how many."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    sink = _Sink(out)
    count = 0
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for row in rows:
            item = export_row(row)
            details = item["details"]
            item["details"] = (
                details if isinstance(details, str) else canonical_json(details).decode("utf-8")
            )
            writer.writerow([item[name] for name in CSV_FIELDS])
            count += 1
            if count % 500 == 0:
                sink.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()
        sink.write(buffer.getvalue())
        return count
    if fmt == "json":
        sink.write("[")
    for row in rows:
        line = canonical_json(export_row(row)).decode("utf-8")
        if fmt == "json":
            sink.write(("\n" if count == 0 else ",\n") + line)
        else:
            sink.write(line + "\n")
        count += 1
    if fmt == "json":
        sink.write("\n]\n")
    return count
