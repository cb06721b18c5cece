"""/api/v1/audit-log: cursor pages with filters, streamed exports that verify on their own, the
verify endpoint; and the stream bridge's back-pressure and cancellation."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from test_api_support import Api, api_fixture, error_of  # noqa: F401

from tundra.core.audit.actions import Action
from tundra.core.principal import SYSTEM
from tundra.core.uow import unit_of_work
from tundra.panel.api import stream


def fill(api: Api, count: int, *, actor_every: int = 3) -> None:
    """``count`` audit rows in one transaction: servers web-0…, some by a named user."""
    with unit_of_work(api.services.db, SYSTEM, request_id="fill-request") as uow:
        for i in range(count):
            uow.record(Action.SERVER_UPDATE if i % actor_every else Action.SERVER_CREATE,
                       f"server:web-{i}", {"i": i})


def pages(api: Api, token: str, query: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor = ""
    while True:
        response = api.call("GET", f"/api/v1/audit-log?{query}{cursor}", token)
        assert response.status_code == 200, response.text
        body = response.json()
        entries += body["entries"]
        if body["next"] is None:
            return entries
        cursor = f"&cursor={body['next']}"


def test_pages_walk_the_whole_log_in_order(api: Api) -> None:
    fill(api, 45)
    token = api.token("audit:read")
    everything = [r.as_dict() for r in api.audit_rows()]
    walked = pages(api, token, "limit=10")
    assert walked == everything
    assert [e["seq"] for e in walked] == list(range(1, len(everything) + 1))
    first = api.call("GET", "/api/v1/audit-log", token).json()
    assert len(first["entries"]) == min(100, len(everything))


def test_the_last_full_page_has_no_next(api: Api) -> None:
    token = api.token("audit:read")
    total = len(api.audit_rows())
    body = api.call("GET", f"/api/v1/audit-log?limit={total}", token).json()
    assert len(body["entries"]) == total
    assert body["next"] is None


@pytest.mark.parametrize(("query", "expected"), [
    ("action=fleet:server:create", lambda r: r.action == "fleet:server:create"),
    ("action=fleet:server:*", lambda r: r.action.startswith("fleet:server:")),
    ("resource=server:web-7", lambda r: r.resource == "server:web-7"),
    ("actor=system", lambda r: r.actor == "system"),
    ("actor=token:*", lambda r: r.actor.startswith("token:")),
])
def test_filters(api: Api, query: str, expected: Any) -> None:
    fill(api, 20)
    token = api.token("audit:read")
    api.call("GET", "/api/v1/servers", token)  # a token-denied row: an actor token:…
    wanted = [r.seq for r in api.audit_rows() if expected(r)]
    assert wanted
    assert [e["seq"] for e in pages(api, token, f"{query}&limit=4")] == wanted


def test_time_filters(api: Api) -> None:
    fill(api, 5)
    rows = api.audit_rows()
    middle = rows[len(rows) // 2].occurred_at
    token = api.token("audit:read")
    later = pages(api, token, f"since={middle}")
    assert later
    assert all(e["occurred_at"] >= middle for e in later)
    earlier = pages(api, token, f"until={middle}")
    assert all(e["occurred_at"] < middle for e in earlier)
    assert pages(api, token, "since=2000-01-01&until=2000-01-02") == []


@pytest.mark.parametrize("query", [
    "since=2024-13-01", "since=yesterday", "until=2024-01-01T25:00:00Z", "limit=0",
    "limit=1001", "limit=ten", "cursor=-1", "cursor=abc", "format=xml", "actor=",
    "action=%00", "nope=1", "limit=5&limit=6",
])
def test_invalid_queries_are_422(api: Api, query: str) -> None:
    response = api.call("GET", f"/api/v1/audit-log?{query}", api.token("audit:read"))
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "invalid_input"


@pytest.mark.parametrize("extra", ["actor=system", "action=x", "resource=y", "cursor=3",
                                   "limit=5"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_page_only_parameters_are_refused_on_exports(api: Api, fmt: str, extra: str) -> None:
    response = api.call("GET", f"/api/v1/audit-log?format={fmt}&{extra}", api.token("audit:read"))
    assert response.status_code == 422
    assert "only with format=json" in error_of(response)["message"]


@pytest.mark.parametrize(("fmt", "media"), [("jsonl", "application/jsonl"),
                                            ("csv", "text/csv; charset=utf-8")])
def test_exports_stream_the_core_export_and_verify_on_their_own(
        api: Api, tmp_path: Path, fmt: str, media: str) -> None:
    fill(api, 3000)
    token = api.token("audit:read")
    with api.client.stream("GET", f"/api/v1/audit-log?format={fmt}",
                           headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == media
        assert response.headers["cache-control"] == "no-store"
        assert "attachment" in response.headers["content-disposition"]
        chunks = list(response.iter_raw())
    streamed = b"".join(chunks)
    assert len(streamed) > stream.CHUNK  # big enough to have been sent in several chunks
    expected = io.BytesIO()
    api.services.audit.export(expected, format=fmt)
    # The export request's own token-use wrote nothing: the two are the same rows.
    assert streamed == expected.getvalue()
    exported = tmp_path / f"export.{fmt}"
    exported.write_bytes(streamed)
    result = api.services.audit.verify(file=exported)
    assert result.ok, result.message
    if fmt == "jsonl":
        assert json.loads(streamed.splitlines()[0])["seq"] == 1
    else:
        assert next(csv.reader(io.StringIO(streamed.decode())))[0] == "seq"


def test_a_time_range_export_is_contiguous(api: Api, tmp_path: Path) -> None:
    fill(api, 10)
    rows = api.audit_rows()
    since, until = rows[3].occurred_at, rows[-2].occurred_at
    token = api.token("audit:read")
    response = api.call("GET", f"/api/v1/audit-log?format=jsonl&since={since}&until={until}",
                        token)
    lines = [json.loads(line) for line in response.text.splitlines()]
    seqs = [line["seq"] for line in lines]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert all(since <= line["occurred_at"] < until for line in lines)
    exported = tmp_path / "range.jsonl"
    exported.write_text(response.text)
    assert api.services.audit.verify(file=exported).ok


def test_an_empty_export_is_an_empty_200(api: Api) -> None:
    response = api.call("GET", "/api/v1/audit-log?format=jsonl&since=2999-01-01",
                        api.token("audit:read"))
    assert response.status_code == 200
    assert response.content == b""


def test_verify_reports_an_intact_and_a_damaged_chain(api: Api) -> None:
    token = api.token("audit:read")
    intact = api.call("GET", "/api/v1/audit-log/verify", token).json()
    assert intact["ok"] is True
    assert intact["rows_checked"] == len(api.audit_rows())
    with api.services.db.transaction() as tx:
        tx.execute("UPDATE audit_log SET resource = 'server:forged' WHERE seq = 2")
    damaged = api.call("GET", "/api/v1/audit-log/verify", token)
    assert damaged.status_code == 200
    assert damaged.json()["ok"] is False
    assert damaged.json()["first_bad_seq"] == 2


# --- the stream bridge ------------------------------------------------------------------------

def _run_bridge(produce: Any, bodies: list[bytes], *, disconnect_after: int | None = None
                ) -> None:
    """Serve a Streamed response at the ASGI level to a slow client that keeps ``bodies``."""

    async def main() -> None:
        response = stream.Streamed(produce, media_type="text/plain")
        await response.started()
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                bodies.append(message["body"])
                await asyncio.sleep(0.005)  # a slow client
                if disconnect_after is not None and len(bodies) >= disconnect_after:
                    gone.set()
                    await asyncio.sleep(1)

        await response({"type": "http", "method": "GET", "path": "/", "headers": []},
                       receive, send)

    asyncio.run(main())


def test_the_producer_runs_at_most_a_few_chunks_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "CHUNK", 10)
    bodies: list[bytes] = []
    leads: list[int] = []

    def produce(out: Any) -> None:
        for i in range(80):
            out.write(f"{i:09d}\n".encode())  # one chunk per write
            leads.append(i + 1 - len(bodies))

    _run_bridge(produce, bodies)
    assert b"".join(bodies) == b"".join(f"{i:09d}\n".encode() for i in range(80))
    # Without back-pressure the fast producer would be ~80 chunks ahead of the slow client.
    assert max(leads) <= stream.AHEAD + 2, max(leads)


def test_a_client_that_goes_away_stops_the_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "CHUNK", 10)
    written = []
    finished = threading.Event()

    def produce(out: Any) -> None:
        try:
            for i in range(100_000):
                out.write(f"{i:09d}\n".encode())
                written.append(i)
        finally:
            finished.set()

    bodies: list[bytes] = []
    _run_bridge(produce, bodies, disconnect_after=3)
    assert finished.wait(5), "the producer did not stop after the client left"
    assert len(written) < 3 + stream.AHEAD + 5
    assert 3 <= len(bodies) < 20


def test_an_error_before_the_first_chunk_is_raised_to_the_handler() -> None:
    from tundra.core.errors import PermissionDenied

    def produce(out: Any) -> None:
        raise PermissionDenied("no")

    async def main() -> None:
        response = stream.Streamed(produce, media_type="text/plain")
        with pytest.raises(PermissionDenied):
            await response.started()

    asyncio.run(main())
