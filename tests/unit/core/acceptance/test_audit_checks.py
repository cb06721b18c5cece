"""AU-01 and AU-02 against real deployments: the local database path and the remote path over
the real panel (uvicorn + TLS on loopback), each with passing and failing fixtures."""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tundra.core.acceptance import runner
from tundra.core.acceptance.checks import audit
from tundra.core.acceptance.context import RunOptions
from tundra.core.acceptance.model import Report, Result, Status
from tundra.core.acceptance.registry import default_registry
from tundra.core.principal import SYSTEM
from tundra.core.services import Services

USER = "acceptor"
PASSWORD = "acceptance password 123"


def specs() -> list[Any]:
    registry = default_registry(load=False)  # the audit module is imported above
    return [registry.get("AU-01"), registry.get("AU-02")]


def run_audit(options: RunOptions, only: str | None = None) -> dict[str, Result]:
    chosen = [s for s in specs() if only is None or s.id == only]
    report: Report = runner.run(options, checks=chosen)
    return report.by_id()


def tamper(services: Services, sql: str, params: dict[str, Any] | None = None) -> None:
    with services.db.transaction() as tx:
        tx.execute(sql, params or {})


@pytest.fixture
def acceptance_user(services: Services) -> str:
    services.users.add(SYSTEM, name=USER, password=PASSWORD, is_acceptance=True)
    return USER


# --- a real panel in threads ------------------------------------------------------------------


class RewriteRequestId:
    """A misconfigured proxy: gives the panel its own request id and answers the client with
    the client's id, so the log holds ids the client never learns."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        theirs = dict(scope["headers"]).get(b"x-request-id", b"")
        ours = f"proxy-{secrets.token_hex(8)}".encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
        scope = dict(scope, headers=[*headers, (b"x-request-id", ours)])

        async def answer(message: Any) -> None:
            if message["type"] == "http.response.start" and theirs:
                message["headers"] = [
                    (k, theirs if k == b"x-request-id" else v)
                    for k, v in message.get("headers", ())
                ]
            await send(message)

        await self.app(scope, receive, answer)


class DropRequestId:
    """A proxy that strips X-Request-ID from every answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def strip(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (k, v) for k, v in message.get("headers", ()) if k != b"x-request-id"
                ]
            await send(message)

        await self.app(scope, receive, strip)


@dataclass(frozen=True)
class Panel:
    port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@contextlib.contextmanager
def panel(services: Services, wrap: Any = None) -> Iterator[Panel]:
    import uvicorn

    from tundra.panel.app import create_app
    from tundra.panel.tls import server_context

    services.pki.ensure_panel_cert(SYSTEM)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(services)
    config = uvicorn.Config(
        wrap(app) if wrap else app,
        log_config=None,
        server_header=False,
        access_log=False,
        lifespan="off",
    )
    config.load()
    config.ssl = server_context(services.pki.panel_cert_path, services.pki.panel_key_path)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the panel did not start"
            time.sleep(0.02)
        yield Panel(int(sock.getsockname()[1]), services.pki.ca_cert_path)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def remote(p: Panel, **extra: Any) -> RunOptions:
    return RunOptions(url=p.url, ca_file=p.ca, user=USER, password=PASSWORD, **extra)


def active_runner_tokens(services: Services) -> int:
    with services.db.read() as tx:
        return int(
            tx.fetchval(
                "SELECT count(*) FROM api_tokens WHERE name LIKE 'acceptance-%'"
                " AND revoked_at IS NULL"
            )
        )


# --- AU-01 local --------------------------------------------------------------------------------


def test_au01_local_passes_against_the_newest_checkpoint(services: Services) -> None:
    services.audit.checkpoint()
    first = services.audit.head()[0]
    services.users.add(SYSTEM, name="later", password=PASSWORD)
    services.audit.checkpoint()
    result = run_audit(RunOptions(url="https://127.0.0.1", local=True, services=services))["AU-01"]
    assert result.status is Status.PASS, result.summary
    assert result.evidence["checkpoint"]["seq"] > first  # the newest, not the first
    assert result.evidence["checkpoint"]["signature"] == "verified"
    assert result.evidence["verification"]["ok"] is True


def test_au01_local_without_checkpoints_passes_and_says_so(services: Services) -> None:
    result = run_audit(RunOptions(url="https://127.0.0.1", local=True, services=services))["AU-01"]
    assert result.status is Status.PASS
    assert "no checkpoint" in result.summary
    assert result.evidence["checkpoint"] is None


def test_au01_local_fails_on_a_tampered_row(services: Services) -> None:
    tamper(services, "UPDATE audit_log SET resource = 'user:mallory' WHERE seq = 2")
    result = run_audit(RunOptions(url="https://127.0.0.1", local=True, services=services))["AU-01"]
    assert result.status is Status.FAIL
    assert result.evidence["verification"]["reason"] == "modified"
    assert result.evidence["verification"]["first_bad_seq"] == 2


def test_au01_local_fails_when_the_log_was_cut_after_a_checkpoint(services: Services) -> None:
    services.users.add(SYSTEM, name="later", password=PASSWORD)
    head = services.audit.head()[0]
    services.audit.checkpoint()
    tamper(services, "DELETE FROM audit_log WHERE seq = :s", {"s": head})
    result = run_audit(RunOptions(url="https://127.0.0.1", local=True, services=services))["AU-01"]
    assert result.status is Status.FAIL
    assert result.evidence["verification"]["reason"] == "truncated"


def test_au01_local_fails_on_a_forged_checkpoint(services: Services, tmp_path: Path) -> None:
    note = services.audit.checkpoint()
    forged = tmp_path / "forged.note"
    lines = note.read_text().split("\n")
    lines[1] = str(int(lines[1]) + 1)  # claims one more row than was signed
    forged.write_text("\n".join(lines))
    options = RunOptions(url="https://127.0.0.1", local=True, services=services, checkpoint=forged)
    result = run_audit(options)["AU-01"]
    assert result.status is Status.FAIL
    assert "checkpoint" in result.summary


def test_au01_and_au02_skip_without_access() -> None:
    results = run_audit(RunOptions(url="https://127.0.0.1"))
    for result in results.values():
        assert result.status is Status.SKIP
        assert "--local" in result.summary and "--password-env" in result.summary


# --- AU-02 local --------------------------------------------------------------------------------


def test_au02_local_creates_and_revokes_a_token_with_its_request_ids(
    services: Services, acceptance_user: str
) -> None:
    result = run_audit(
        RunOptions(url="https://127.0.0.1", local=True, services=services), only="AU-02"
    )["AU-02"]
    assert result.status is Status.PASS, result.summary
    rows = result.evidence["rows"]
    assert len(rows) == 2
    assert all(rid.startswith("acceptance-AU-02-") for rid in rows)
    assert active_runner_tokens(services) == 0


def test_au02_local_skips_without_an_acceptance_account(services: Services) -> None:
    result = run_audit(
        RunOptions(url="https://127.0.0.1", local=True, services=services), only="AU-02"
    )["AU-02"]
    assert result.status is Status.SKIP
    assert "--acceptance" in result.summary


# --- remote -------------------------------------------------------------------------------------


def test_remote_audit_checks_pass_and_clean_up(services: Services, acceptance_user: str) -> None:
    with panel(services) as p:
        results = run_audit(remote(p))
        assert active_runner_tokens(services) == 0  # revoked when the run ended
    au01, au02 = results["AU-01"], results["AU-02"]
    assert au01.status is Status.PASS, au01.summary
    assert au01.evidence["panel_verification"]["ok"] is True
    assert au01.evidence["runner_verification"]["anchor_seq"] == 1
    assert au02.status is Status.PASS, au02.summary
    assert au02.evidence["answered_request_id"] == au02.evidence["sent_request_id"]
    assert au02.evidence["row"]["actor"] == f"user:{USER}"
    # The session the runner opened was logged out again.
    with services.db.read() as tx:
        actions = [r["action"] for r in tx.fetchall("SELECT action FROM audit_log ORDER BY seq")]
    assert "identity:session:logout" in actions
    # No secret in the evidence: cookie values and the token are redacted.
    with services.db.read() as tx:
        prefix = tx.fetchval("SELECT display_prefix FROM api_tokens WHERE name LIKE 'accept%'")
    assert prefix in repr(au02.evidence)  # the display prefix is not secret
    assert not re.search(re.escape(prefix) + r"[A-Za-z0-9_-]{8}", repr(au02.evidence))
    assert "password" not in repr(au02.evidence).lower().replace("password-", "")


def test_remote_au01_fails_on_a_tampered_row(services: Services, acceptance_user: str) -> None:
    tamper(services, "UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 3")
    with panel(services) as p:
        result = run_audit(remote(p), only="AU-01")["AU-01"]
    assert result.status is Status.FAIL
    assert "broken" in result.summary


def test_remote_au01_fails_against_a_checkpoint_beyond_the_log(
    services: Services, acceptance_user: str, tmp_path: Path
) -> None:
    services.users.add(SYSTEM, name="later", password=PASSWORD)
    note = services.audit.checkpoint(out=tmp_path / "newest.note")
    head = services.audit.head()[0]
    tamper(services, "DELETE FROM audit_log WHERE seq = :s", {"s": head})
    with panel(services) as p:
        result = run_audit(remote(p, checkpoint=note), only="AU-01")["AU-01"]
    assert result.status is Status.FAIL
    # The runner's own login rows took the deleted row's seq: the checkpoint's hash there
    # differs, so the cut is seen as a rewrite.
    assert result.evidence["runner_verification"]["reason"] == "rewritten"
    assert result.evidence["checkpoint"]["signature"].startswith("not verified")


def test_remote_au01_passes_against_an_older_checkpoint(
    services: Services, acceptance_user: str, tmp_path: Path
) -> None:
    note = services.audit.checkpoint(out=tmp_path / "old.note")
    with panel(services) as p:
        result = run_audit(remote(p, checkpoint=note), only="AU-01")["AU-01"]
    assert result.status is Status.PASS, result.summary
    assert "matches the checkpoint" in result.summary


@pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
def test_remote_au02_fails_when_a_proxy_rewrites_request_ids(
    services: Services, acceptance_user: str
) -> None:
    with panel(services, wrap=RewriteRequestId) as p:
        result = run_audit(remote(p), only="AU-02")["AU-02"]
    assert result.status is Status.FAIL
    assert "no identity:token:create row with request id" in result.summary


@pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
def test_remote_au02_fails_without_a_request_id_header(
    services: Services, acceptance_user: str
) -> None:
    with panel(services, wrap=DropRequestId) as p:
        result = run_audit(remote(p), only="AU-02")["AU-02"]
    assert result.status is Status.FAIL
    assert "X-Request-ID" in result.summary


@pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
def test_remote_wrong_password_is_an_error_not_a_failure(
    services: Services, acceptance_user: str
) -> None:
    with panel(services) as p:
        options = RunOptions(url=p.url, ca_file=p.ca, user=USER, password="not the password 1")
        results = run_audit(options)
    for result in results.values():
        assert result.status is Status.ERROR
        assert "did not succeed" in result.summary


@pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
def test_remote_login_with_totp(services: Services, acceptance_user: str) -> None:
    enrollment = services.totp.enroll(SYSTEM, USER)
    with panel(services) as p:
        without = run_audit(remote(p), only="AU-02")["AU-02"]
        with_secret = run_audit(remote(p, totp_secret=enrollment.secret_b32), only="AU-02")
    assert without.status is Status.ERROR and "--totp-secret-env" in without.summary
    assert with_secret["AU-02"].status is Status.PASS, with_secret["AU-02"].summary


def test_note_parser_refuses_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.note"
    bad.write_text("origin\nnot-a-number\nxx\n\n— sig\n")
    from tundra.core.errors import InvalidFile

    with pytest.raises(InvalidFile):
        audit.parse_note_unverified(bad)
