"""Tamper with a real audit log (SQLite and PostgreSQL) and with exports; verify names the damage.

Each case edits the database by SQL as someone with write access would, then asserts that
verification reports the first bad sequence number and the right reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tundra.core.audit.chain import GENESIS, chain_hash
from tundra.core.audit.verify import Damage, VerifyResult
from tundra.core.errors import IntegrityError, InvalidFile
from tundra.core.home import initialize
from tundra.core.principal import cli_principal
from tundra.core.services import Services
from tundra.core.settings import Settings
from tundra.core.uow import unit_of_work

ROWS = 50


@pytest.fixture
def chain(settings: Settings) -> Iterator[Services]:
    """An initialised home plus 50 audited units of work."""
    services = Services(settings)
    initialize(services, admin_name="admin", admin_password="correct horse battery staple")
    for i in range(ROWS):
        with unit_of_work(services.db, cli_principal()) as uow:
            uow.execute("INSERT INTO meta (key, value) VALUES (:k, :v)",
                        {"k": f"tamper-{i}", "v": str(i)})
            uow.record("fleet:server:create", f"server:web-{i}",
                       {"name": f"web-{i}", "address": f"203.0.113.{i + 1}", "i": i})
    assert services.audit.verify().ok
    yield services
    services.close()


def sql(services: Services, *statements: str | tuple[str, dict[str, Any]]) -> None:
    """Raw statements in one transaction: the attacker bypasses units of work."""
    with services.db.transaction() as tx:
        for statement in statements:
            text, params = statement if isinstance(statement, tuple) else (statement, {})
            tx.execute(text, params)


def head(services: Services) -> int:
    return services.audit.head()[0]


def stored(services: Services, seq: int) -> dict[str, Any]:
    with services.db.read() as tx:
        found = tx.fetchone("SELECT * FROM audit_log WHERE seq = :s", {"s": seq})
    assert found is not None
    return found


def damaged(result: VerifyResult, seq: int, reason: Damage) -> None:
    assert not result.ok, result
    assert (result.first_bad_seq, result.reason) == (seq, reason), result.message
    assert f"seq {seq}" in result.message
    assert str(reason) in result.message
    with pytest.raises(InvalidFile if reason is Damage.MALFORMED else IntegrityError):
        result.raise_for_damage()


def shift(services: Services, *, from_seq: int, by: int) -> tuple[str, dict[str, Any]]:
    """Renumber rows >= from_seq by ``by`` in two steps (seq is a primary key)."""
    sql(services, ("UPDATE audit_log SET seq = -seq WHERE seq >= :s", {"s": from_seq}))
    return ("UPDATE audit_log SET seq = :by - seq WHERE seq < 0", {"by": by})


# -- the database --------------------------------------------------------------------------


def test_modified_field(chain: Services) -> None:
    k = head(chain) - 20
    sql(chain, ("UPDATE audit_log SET resource = 'server:evil' WHERE seq = :k", {"k": k}))
    damaged(chain.audit.verify(), k, Damage.MODIFIED)


@pytest.mark.parametrize("column", ["details", "actor", "occurred_at", "prev_hash", "chain_hash"])
def test_modified_any_column(chain: Services, column: str) -> None:
    k = head(chain) - 7
    value = {"details": '{"name":"web-x"}', "actor": "user:mallory",
             "occurred_at": "2020-01-01T00:00:00.000000Z", "prev_hash": "ab" * 32,
             "chain_hash": "cd" * 32}[column]
    sql(chain, (f"UPDATE audit_log SET {column} = :v WHERE seq = :k", {"v": value, "k": k}))
    damaged(chain.audit.verify(), k, Damage.MODIFIED)


def test_modified_row_with_its_own_hash_recomputed(chain: Services) -> None:
    k = head(chain) - 10
    row = stored(chain, k)
    forged = {**row, "resource": "server:evil", "details": json.loads(row["details"])}
    sql(chain, ("UPDATE audit_log SET resource = 'server:evil', chain_hash = :h WHERE seq = :k",
                {"h": chain_hash(forged, row["prev_hash"]), "k": k}))
    damaged(chain.audit.verify(), k, Damage.MODIFIED)


def test_deleted_row(chain: Services) -> None:
    k = head(chain) - 30
    sql(chain, ("DELETE FROM audit_log WHERE seq = :k", {"k": k}))
    damaged(chain.audit.verify(), k, Damage.DELETED)


def test_deleted_first_row(chain: Services) -> None:
    sql(chain, "DELETE FROM audit_log WHERE seq = 1")
    damaged(chain.audit.verify(), 1, Damage.DELETED)


@pytest.mark.parametrize("count", [1, 3])
def test_deleted_and_renumbered(chain: Services, count: int) -> None:
    k = head(chain) - 25
    sql(chain, ("DELETE FROM audit_log WHERE seq >= :k AND seq < :e", {"k": k, "e": k + count}))
    sql(chain, shift(chain, from_seq=k + count, by=-count))
    damaged(chain.audit.verify(), k, Damage.DELETED)


@pytest.mark.parametrize("forged_hash", [True, False], ids=["valid-hash", "copied-hash"])
def test_inserted_and_renumbered(chain: Services, forged_hash: bool) -> None:
    k = head(chain) - 15
    victim = stored(chain, k)
    sql(chain, shift(chain, from_seq=k, by=1))
    fake = {**victim, "actor": "user:mallory", "resource": "server:backdoor"}
    if forged_hash:  # an attacker who knows the algorithm links it in properly
        fake["chain_hash"] = chain_hash({**fake, "details": json.loads(fake["details"])},
                                        victim["prev_hash"])
    sql(chain, ("INSERT INTO audit_log (seq, occurred_at, actor, action, resource, request_id,"
                " details, prev_hash, chain_hash) VALUES (:seq, :occurred_at, :actor, :action,"
                " :resource, :request_id, :details, :prev_hash, :chain_hash)", fake))
    damaged(chain.audit.verify(), k, Damage.INSERTED)


@pytest.mark.parametrize("distance", [1, 6])
def test_reordered_rows(chain: Services, distance: int) -> None:
    a = head(chain) - 20
    b = a + distance
    sql(chain, ("UPDATE audit_log SET seq = -1 WHERE seq = :a", {"a": a}),
        ("UPDATE audit_log SET seq = :a WHERE seq = :b", {"a": a, "b": b}),
        ("UPDATE audit_log SET seq = :b WHERE seq = -1", {"b": b}))
    damaged(chain.audit.verify(), a, Damage.REORDERED)


def test_truncated_tail_against_a_checkpoint(chain: Services) -> None:
    last = head(chain)
    note = chain.audit.checkpoint()
    sql(chain, ("DELETE FROM audit_log WHERE seq > :k", {"k": last - 5}))
    assert chain.audit.verify().ok  # a plain chain cannot see it...
    damaged(chain.audit.verify(checkpoint=note), last - 4, Damage.TRUNCATED)  # ...a checkpoint can


def test_recomputed_chain_against_a_checkpoint(chain: Services) -> None:
    last = head(chain)
    note = chain.audit.checkpoint()
    k = last - 30
    sql(chain, ("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = :k", {"k": k}))
    with chain.db.transaction() as tx:  # recompute every hash from k on
        prev = tx.fetchval("SELECT chain_hash FROM audit_log WHERE seq = :s", {"s": k - 1})
        for row in tx.fetchall("SELECT * FROM audit_log WHERE seq >= :k ORDER BY seq", {"k": k}):
            digest = chain_hash({**row, "details": json.loads(row["details"])}, prev or GENESIS)
            tx.execute("UPDATE audit_log SET prev_hash = :p, chain_hash = :h WHERE seq = :s",
                       {"p": prev, "h": digest, "s": row["seq"]})
            prev = digest
    assert chain.audit.verify().ok
    damaged(chain.audit.verify(checkpoint=note), last, Damage.REWRITTEN)


def test_an_older_checkpoint_still_matches_a_grown_log(chain: Services) -> None:
    note = chain.audit.checkpoint()
    with unit_of_work(chain.db, cli_principal()) as uow:
        uow.record("fleet:server:update", "server:web-1", {"address": "203.0.113.99"})
    result = chain.audit.verify(checkpoint=note)
    assert result.ok
    assert result.checkpoint_seq == head(chain) - 1


def test_rows_needing_json_escapes_take_the_exact_path_and_pass(chain: Services) -> None:
    with unit_of_work(chain.db, cli_principal()) as uow:
        uow.record("fleet:server:create", 'server:"quoted"\\back\nslash\x1e',
                   {"note": "é\u2028\x00"})
    assert chain.audit.verify().ok


# -- export files --------------------------------------------------------------------------


def split(fmt: str, text: str) -> tuple[str, list[str], str]:
    """(header, one string per row, footer) of an export written by Tundra."""
    lines = text.splitlines()
    if fmt == "jsonl":
        return "", lines, ""
    if fmt == "csv":
        return lines[0] + "\n", lines[1:], ""
    return "[\n", [line.rstrip(",") for line in lines[1:-1]], "\n]\n"


def join(fmt: str, header: str, rows: list[str], footer: str) -> str:
    if fmt == "json":
        return header + ",\n".join(rows) + footer
    return header + "".join(row + "\n" for row in rows) + footer


@pytest.fixture(params=["jsonl", "csv", "json"])
def exported(request: pytest.FixtureRequest, chain: Services,
             tmp_path: Path) -> tuple[Services, str, Path]:
    fmt = request.param
    path = tmp_path / f"audit.{fmt}"
    with path.open("wb") as handle:
        chain.audit.export(handle, format=fmt)
    assert chain.audit.verify(file=path).ok
    return chain, fmt, path


def edit(path: Path, fmt: str, change: Any) -> None:
    header, rows, footer = split(fmt, path.read_text("utf-8"))
    path.write_text(join(fmt, header, change(rows), footer), "utf-8")


def test_export_edited(exported: tuple[Services, str, Path]) -> None:
    services, fmt, path = exported
    index = 30

    def change(rows: list[str]) -> list[str]:
        rows[index] = rows[index].replace("203.0.113.", "198.51.100.")
        return rows

    edit(path, fmt, change)
    damaged(services.audit.verify(file=path), index + 1, Damage.MODIFIED)


def test_export_lines_swapped(exported: tuple[Services, str, Path]) -> None:
    services, fmt, path = exported

    def change(rows: list[str]) -> list[str]:
        rows[20], rows[21] = rows[21], rows[20]
        return rows

    edit(path, fmt, change)
    damaged(services.audit.verify(file=path), 21, Damage.REORDERED)


def test_export_line_duplicated(exported: tuple[Services, str, Path]) -> None:
    services, fmt, path = exported
    edit(path, fmt, lambda rows: [*rows[:26], rows[25], *rows[26:]])
    damaged(services.audit.verify(file=path), 26, Damage.INSERTED)


def test_export_line_deleted(exported: tuple[Services, str, Path]) -> None:
    services, fmt, path = exported
    edit(path, fmt, lambda rows: rows[:10] + rows[11:])
    damaged(services.audit.verify(file=path), 11, Damage.DELETED)


@pytest.mark.parametrize("where", [0.5, 0.995])
def test_export_truncated_mid_line(exported: tuple[Services, str, Path], where: float) -> None:
    services, _, path = exported
    data = path.read_bytes()
    cut = int(len(data) * where)
    while data[cut - 1:cut] == b"\n":  # cut inside a line, not at its end
        cut -= 1
    path.write_bytes(data[:cut])
    result = services.audit.verify(file=path)
    assert not result.ok, result
    assert result.reason is Damage.MALFORMED, result
    line = data[:cut].count(b"\n") + 1
    assert f"line {line}" in result.message
    with pytest.raises(InvalidFile, match=f"line {line}"):
        result.raise_for_damage()


def test_export_truncated_at_a_line_end_needs_a_checkpoint(
        exported: tuple[Services, str, Path]) -> None:
    services, fmt, path = exported
    note = services.audit.checkpoint()
    last = head(services)
    edit(path, fmt, lambda rows: rows[:-3])
    if fmt != "json":  # a JSON array still closes properly here, so it is well-formed
        assert services.audit.verify(file=path).ok
    damaged(services.audit.verify(file=path, checkpoint=note), last - 2, Damage.TRUNCATED)


def test_filtered_export_verifies_from_its_anchor(chain: Services, tmp_path: Path) -> None:
    rows = chain.audit.list(limit=1000)
    since = rows[20].occurred_at
    for fmt in ("jsonl", "csv", "json"):
        path = tmp_path / f"part.{fmt}"
        with path.open("wb") as handle:
            count = chain.audit.export(handle, format=fmt, since=since)
        result = chain.audit.verify(file=path)
        assert result.ok, result
        assert (result.anchor_seq, result.anchor_hash) == (rows[20].seq, rows[19].chain_hash)
        assert result.rows_checked == count == len(rows) - 20


# Only SQLite lets a text column hold a blob (PostgreSQL refuses the write), so only SQLite runs.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_blob_in_a_text_column_is_reported_not_crashed_on(chain: Services) -> None:
    assert chain.db.dialect == "sqlite"
    k = head(chain) - 3
    sql(chain, ("UPDATE audit_log SET actor = :b WHERE seq = :k", {"b": b"\x00\x01", "k": k}))
    damaged(chain.audit.verify(), k, Damage.MODIFIED)
