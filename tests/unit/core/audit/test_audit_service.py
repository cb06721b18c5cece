"""AuditService: listing with filters, exports in three formats, and verifying odd files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from audithelpers import write_rows

from tundra.core.audit.service import parse_time
from tundra.core.audit.verify import Damage
from tundra.core.errors import InvalidFile, InvalidInput
from tundra.core.principal import SYSTEM
from tundra.core.uow import unit_of_work


def test_list_filters_and_cursors(audit_services) -> None:
    write_rows(audit_services, 6)
    with unit_of_work(audit_services.db, SYSTEM) as uow:
        uow.record("identity:user:create", "user:bob", {"name": "bob"})
    audit = audit_services.audit
    assert [r.seq for r in audit.list()] == [1, 2, 3, 4, 5, 6, 7]
    assert [r.seq for r in audit.list(limit=2, newest_first=True)] == [7, 6]
    assert [r.seq for r in audit.list(after_seq=5)] == [6, 7]
    assert [r.seq for r in audit.list(before_seq=3, newest_first=True)] == [2, 1]
    assert [r.seq for r in audit.list(actor="system")] == [7]
    assert [r.seq for r in audit.list(action="identity:*")] == [7]
    assert [r.seq for r in audit.list(resource="server:web-1")] == [2]
    assert [r.seq for r in audit.list(resource="server:*", limit=3)] == [1, 2, 3]
    rows = audit.list()
    assert [r.seq for r in audit.list(since=rows[3].occurred_at)] == [4, 5, 6, 7]
    assert [r.seq for r in audit.list(until=rows[3].occurred_at)] == [1, 2, 3]
    assert audit.list(resource="server:100%_*") == []  # no LIKE wildcards sneak in
    assert rows[0].details == {"name": "web-0", "address": "203.0.113.1", "tags": ["prod"]}


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01", "2024-05-01T00:00:00.000000Z"),
    ("2024-05-01T12:30", "2024-05-01T12:30:00.000000Z"),
    ("2024-05-01T12:30:00Z", "2024-05-01T12:30:00.000000Z"),
    ("2024-05-01T14:30:00+02:00", "2024-05-01T12:30:00.000000Z"),
    ("2024-05-01 12:30:00.5", "2024-05-01T12:30:00.500000Z"),
])
def test_times_accept_iso_8601(text: str, expected: str) -> None:
    assert parse_time(text, name="since") == expected


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "01/05/2024", "12:00"])
def test_bad_times_are_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput, match="ISO 8601"):
        parse_time(text, name="since")


def test_bad_limit_is_invalid_input(audit_services) -> None:
    with pytest.raises(InvalidInput):
        audit_services.audit.list(limit=0)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_export_carries_every_field_and_streams_to_text_or_bytes(audit_services, fmt) -> None:
    write_rows(audit_services, 4)
    binary, text = io.BytesIO(), io.StringIO()
    assert audit_services.audit.export(binary, format=fmt) == 4
    assert audit_services.audit.export(text, format=fmt) == 4
    assert binary.getvalue().decode() == text.getvalue()
    data = text.getvalue()
    if fmt == "jsonl":
        rows = [json.loads(line) for line in data.splitlines()]
    elif fmt == "json":
        rows = json.loads(data)
    else:
        rows = list(csv.DictReader(io.StringIO(data)))
    assert len(rows) == 4
    assert set(rows[0]) == {"seq", "occurred_at", "actor", "action", "resource", "request_id",
                            "details", "prev_hash", "chain_hash"}
    listed = audit_services.audit.list()
    assert str(rows[2]["chain_hash"]) == listed[2].chain_hash


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_empty_exports_verify(audit_services, tmp_path, fmt) -> None:
    path = tmp_path / f"empty.{fmt}"
    with path.open("wb") as handle:
        assert audit_services.audit.export(handle, format=fmt) == 0
    result = audit_services.audit.verify(file=path)
    assert result.ok
    assert result.rows_checked == 0


def test_unknown_export_format(audit_services) -> None:
    with pytest.raises(InvalidInput):
        audit_services.audit.export(io.BytesIO(), format="xml")


def _export(audit_services, tmp_path: Path, fmt: str = "jsonl", rows: int = 8) -> Path:
    write_rows(audit_services, rows)
    path = tmp_path / f"audit.{fmt}"
    with path.open("wb") as handle:
        audit_services.audit.export(handle, format=fmt)
    return path


def test_authentic_but_reformatted_files_still_verify(audit_services, tmp_path) -> None:
    path = _export(audit_services, tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(rows, indent=4))  # another tool's layout, keys in any order
    assert audit_services.audit.verify(file=pretty).ok
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(json.dumps(dict(reversed(list(r.items())))) + "\r\n"
                                for r in rows))
    assert audit_services.audit.verify(file=shuffled).ok
    crlf = tmp_path / "crlf.csv"
    csv_path = _export(audit_services, tmp_path, "csv", rows=0)  # the same 8 rows, as CSV
    crlf.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes().replace(b"\n", b"\r\n"))
    assert audit_services.audit.verify(file=crlf).ok


@pytest.mark.parametrize(("fmt", "mangle", "line"), [
    ("jsonl", lambda t: t.replace('"seq":3}', '"seq":3'), 3),
    ("jsonl", lambda t: t.replace(',"request_id"', ',"request_idx"', 1), 1),
    ("jsonl", lambda t: t.replace('"seq":2}', '"seq":2,"extra":1}'), 2),
    ("jsonl", lambda t: t.replace('"seq":4}', '"seq":"4"}'), 4),
    ("jsonl", lambda t: t.replace('{"action"', '[{"action"', 1), 1),
    ("csv", lambda t: t.replace("seq,", "sequence,", 1), 1),
    ("csv", lambda t: t.replace(",cli:", ",", 1).replace(",fleet:server:create,", ",", 1), 2),
    ("csv", lambda t: t + '5,"unterminated', 10),
    ("json", lambda t: t.replace("},\n{", "}\n{", 1), 3),
    ("json", lambda t: t.rstrip().rstrip("]"), 10),
    ("json", lambda t: t + "[]", 11),
])
def test_malformed_files_name_the_line(audit_services, tmp_path, fmt, mangle, line) -> None:
    path = _export(audit_services, tmp_path, fmt)
    path.write_text(mangle(path.read_text()))
    result = audit_services.audit.verify(file=path)
    assert not result.ok, result
    assert result.reason is Damage.MALFORMED, result
    assert f"line {line}:" in result.message
    with pytest.raises(InvalidFile, match=f"line {line}"):
        result.raise_for_damage()


@pytest.mark.parametrize("content", [b"hello\n", b"\x00\x01binary", b"seq;occurred_at\n"])
def test_files_that_are_not_exports(audit_services, tmp_path, content) -> None:
    path = tmp_path / "not-an-export.txt"
    path.write_bytes(content)
    with pytest.raises(InvalidFile, match="not a Tundra audit export"):
        audit_services.audit.verify(file=path)


def test_missing_file_is_invalid(audit_services, tmp_path) -> None:
    with pytest.raises(InvalidFile):
        audit_services.audit.verify(file=tmp_path / "nope.jsonl")


def test_invalid_utf8_is_malformed(audit_services, tmp_path) -> None:
    path = _export(audit_services, tmp_path)
    path.write_bytes(path.read_bytes().replace(b"web-3", b"web-\xff", 1))
    result = audit_services.audit.verify(file=path)
    assert result.reason is Damage.MALFORMED
    assert "line 4" in result.message


def test_a_checkpoint_before_a_filtered_export_cannot_be_checked(audit_services,
                                                                 tmp_path) -> None:
    write_rows(audit_services, 3)
    note = audit_services.audit.checkpoint()
    write_rows(audit_services, 3, start=3)
    since = audit_services.audit.list()[4].occurred_at
    path = tmp_path / "late.jsonl"
    with path.open("wb") as handle:
        audit_services.audit.export(handle, format="jsonl", since=since)
    with pytest.raises(InvalidInput, match="after the checkpoint"):
        audit_services.audit.verify(file=path, checkpoint=note)
    since_4 = audit_services.audit.list()[3].occurred_at  # starts right after the checkpoint
    with path.open("wb") as handle:
        audit_services.audit.export(handle, format="jsonl", since=since_4)
    assert audit_services.audit.verify(file=path, checkpoint=note).ok


def test_export_of_a_tampered_database_stays_well_formed(audit_services, tmp_path) -> None:
    write_rows(audit_services, 3)
    with audit_services.db.transaction() as tx:
        tx.execute("UPDATE audit_log SET details = 'not json' WHERE seq = 2")
    for fmt in ("jsonl", "csv", "json"):
        path = tmp_path / f"t.{fmt}"
        with path.open("wb") as handle:
            audit_services.audit.export(handle, format=fmt)
        result = audit_services.audit.verify(file=path)
        assert (result.first_bad_seq, result.reason) == (2, Damage.MODIFIED), result
