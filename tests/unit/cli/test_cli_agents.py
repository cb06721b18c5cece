"""`tundra ca …`, `tundra server add|token|list|show` with agents, and the commands that round-trip
a signed command (ping, facts, service-status) through the real CommandService.

The agent's side of a command is played by a thread that claims the command from the queue (as
the gateway does), checks the envelope's signature with the agent's own verification code, and
completes it; no gateway or agent process is involved here (tests/e2e does that).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from clihelpers import run
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tundra.cli.exit import ExitStatus
from tundra.core.agents.envelope import verify_command
from tundra.core.audit.actions import Action
from tundra.core.clock import epoch
from tundra.core.principal import cli_principal
from tundra.core.services import Services

PASSWORD = "correct horse battery staple\n"
TOKEN = re.compile(r"tjn1\.[a-z2-7]{52}\.[0-9a-f]{64}")
FACTS = {
    "hostname": "web-1",
    "os": "Debian GNU/Linux 12 (bookworm)",
    "kernel": "6.1.0-18-amd64",
    "architecture": "x86_64",
    "cpu_count": 2,
    "cpu_model": "Example CPU",
    "memory_total_bytes": 4 * 1024**3,
    "memory_available_bytes": 3 * 1024**3,
    "disk_total_bytes": 40 * 1024**3,
    "disk_free_bytes": 30 * 1024**3,
    "uptime_seconds": 93784.0,
    "load_average": [0.5, 0.25, 0.125],
}


def csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def enroll(services: Services, token: str) -> str:
    return services.enrollment.enroll(
        join_token=token,
        csr_pem=csr_pem(),
        agent_version="0.4.0",
        hostname="web-1",
        source_address="198.51.100.7",
    ).agent_id


def add_enrolled(services: Services, env: dict[str, str], name: str = "web-1") -> str:
    added = run(env, "server", "add", name, "--address", "203.0.113.10", "--json")
    assert added.exit_code == 0, added.output
    return enroll(services, json.loads(added.stdout)["join_token"]["token"])


@contextmanager
def agent_side(
    services: Services,
    agent_id: str,
    *,
    status: str = "succeeded",
    output: dict[str, Any] | None = None,
    error: str | None = None,
) -> Iterator[list[Any]]:
    """Answer the agent's commands like a well-behaved agent would, until the block ends."""
    stop = threading.Event()
    seen: list[Any] = []
    keys = dict(services.command_signer.public_keys())

    def loop() -> None:
        try:
            while not stop.is_set():
                for queued in services.commands.claim([agent_id]):
                    command = verify_command(
                        queued.envelope,
                        queued.signature,
                        queued.key_id,
                        public_keys=keys,
                        agent_id=agent_id,
                        now_ms=int(epoch() * 1000),
                    )
                    seen.append(command)
                    services.commands.complete(
                        agent_id,
                        queued.id,
                        status=status,
                        output=output if status == "succeeded" else None,
                        error=error,
                    )
                time.sleep(0.005)
        finally:
            services.db.close_thread()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=10)


def login(env: dict[str, str]) -> None:
    result = run(env, "login", "--user", "admin", "--password-stdin", stdin=PASSWORD)
    assert result.exit_code == 0, result.output


# -- join tokens ---------------------------------------------------------------------------------


def test_server_add_prints_the_token_once_with_the_enroll_hint(services, env) -> None:
    result = run(env, "server", "add", "web-1", "--address", "203.0.113.10")
    assert result.exit_code == 0, result.output
    (token,) = TOKEN.findall(result.stdout)
    assert (
        "tundra agent enroll --url https://localhost:8443 --token-env TUNDRA_JOIN_TOKEN"
        in result.stdout
    )
    assert "shown once" in result.stdout
    assert enroll(services, token)  # the printed token is the real one
    assert services.servers.get(cli_principal(), "web-1").status == "enrolled"


def test_server_add_json_carries_the_token(services, env) -> None:
    result = run(env, "server", "add", "web-1", "--address", "203.0.113.10", "--json")
    data = json.loads(result.stdout)
    join = data["join_token"]
    assert TOKEN.fullmatch(join["token"]) and join["server_name"] == "web-1"
    assert join["enroll_command"] == (
        "tundra agent enroll --url https://localhost:8443 --token-env TUNDRA_JOIN_TOKEN"
    )
    assert join["ca_fingerprint"] == services.pki.ca_fingerprint()
    # Shown once: the listing never carries it.
    listed = json.loads(run(env, "server", "list", "--json").stdout)
    assert "join_token" not in listed[0] and join["token"] not in json.dumps(listed)


def test_server_token_replaces_the_previous_one(services, env) -> None:
    first = json.loads(
        run(env, "server", "add", "web-1", "--address", "203.0.113.10", "--json").stdout
    )["join_token"]["token"]
    result = run(env, "server", "token", "web-1")
    assert result.exit_code == 0, result.output
    (second,) = TOKEN.findall(result.stdout)
    assert second != first and "--token-env TUNDRA_JOIN_TOKEN" in result.stdout
    third = json.loads(run(env, "server", "token", "web-1", "--json").stdout)["token"]
    from tundra.core.errors import AgentRefused

    for stale in (first, second):
        with pytest.raises(AgentRefused):
            enroll(services, stale)
    assert enroll(services, third)
    assert len([r for r in _audit(services, Action.JOIN_TOKEN_CREATE)]) == 3


def test_server_token_errors(env) -> None:
    result = run(env, "server", "token", "nope")
    assert result.exit_code == ExitStatus.NOT_FOUND
    assert "no server named 'nope'" in result.stderr


def _audit(services: Services, action: str) -> list[dict]:
    with services.db.read() as tx:
        return tx.fetchall("SELECT * FROM audit_log WHERE action = :a", {"a": action})


# -- list and show -------------------------------------------------------------------------------


def test_list_and_show_the_agent(services, env) -> None:
    agent_id = add_enrolled(services, env)
    run(env, "server", "add", "db-1", "--address", "203.0.113.11")
    services.agents.mark_connected(
        agent_id, address="203.0.113.10", agent_version="0.4.2", hostname="web-1", facts=FACTS
    )
    table = run({**env, "COLUMNS": "200"}, "server", "list")
    assert table.exit_code == 0, table.output
    web = next(line for line in table.stdout.splitlines() if "web-1" in line)
    assert "connected" in web and "0.4.2" in web and "enrolled" in web and "ago" in web
    db = next(line for line in table.stdout.splitlines() if "db-1" in line)
    assert "pending" in db and "none" in db

    listed = {s["name"]: s for s in json.loads(run(env, "server", "list", "--json").stdout)}
    assert listed["web-1"]["connection"] == "connected"
    assert listed["web-1"]["agent"]["agent_version"] == "0.4.2"
    assert listed["web-1"]["agent"]["cert_not_after"]
    assert listed["db-1"]["agent"] is None and listed["db-1"]["connection"] is None

    shown = run({**env, "COLUMNS": "200"}, "server", "show", "web-1")
    assert shown.exit_code == 0, shown.output
    for text in (
        agent_id,
        "connected",
        "0.4.2",
        "Debian GNU/Linux 12",
        "6.1.0-18-amd64",
        "4.0 GiB (3.0 GiB available)",
        "1d 2h 3m",
        "0.50 0.25 0.12",
        "cert expires",
    ):
        assert text in shown.stdout, text
    data = json.loads(run(env, "server", "show", "web-1", "--json").stdout)
    assert data["agent"]["facts"] == FACTS and data["agent"]["id"] == agent_id
    pending = run(env, "server", "show", "db-1")
    assert "not enrolled" in pending.stdout


# -- ca ------------------------------------------------------------------------------------------


def test_ca_status(services, env) -> None:
    table = run(env, "ca", "status")
    assert table.exit_code == 0, table.output
    fingerprint = services.pki.ca_fingerprint()
    assert "Active CA" in table.stdout and fingerprint in table.stdout
    (info,) = json.loads(run(env, "ca", "status", "--json").stdout)
    assert (info["status"], info["fingerprint"], info["trusted"]) == ("active", fingerprint, True)


def test_ca_rotate_is_sensitive(services, env) -> None:
    before = services.pki.ca_fingerprint()
    refused = run(env, "ca", "rotate", "--yes")
    assert refused.exit_code == ExitStatus.PERMISSION_DENIED
    assert "tundra login" in refused.stderr
    assert services.pki.ca_fingerprint() == before
    aborted = run(env, "ca", "rotate", stdin="n\n")
    assert aborted.exit_code == ExitStatus.FAILURE and services.pki.ca_fingerprint() == before

    login(env)
    done = run(env, "ca", "rotate", "--yes", "--json")
    assert done.exit_code == 0, done.output
    info = json.loads(done.stdout)
    assert info["status"] == "active" and info["fingerprint"] == services.pki.ca_fingerprint()
    assert info["fingerprint"] != before
    statuses = [
        (i["fingerprint"], i["status"])
        for i in json.loads(run(env, "ca", "status", "--json").stdout)
    ]
    assert statuses == [(info["fingerprint"], "active"), (before, "previous")]
    (row,) = _audit(services, Action.PKI_CA_ROTATE)
    assert row["actor"] == cli_principal().actor
    again = run(env, "ca", "rotate", "--yes")
    assert again.exit_code == 0 and "stays trusted" in again.stderr


# -- signed commands -----------------------------------------------------------------------------


def test_ping_round_trips_a_signed_command(services, env) -> None:
    agent_id = add_enrolled(services, env)
    with agent_side(services, agent_id, output={"pong": True}) as seen:
        result = run(env, "server", "ping", "web-1")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"pong from web-1: \d+\.\d ms\n", result.stdout)
    (command,) = seen
    assert (command.type, command.agent_id, dict(command.payload)) == ("ping", agent_id, {})
    with agent_side(services, agent_id, output={"pong": True}):
        data = json.loads(run(env, "server", "ping", "web-1", "--json").stdout)
    assert data["status"] == "succeeded" and data["round_trip_ms"] >= 0
    assert data["issued_by"] == cli_principal().actor


def test_facts_and_service_status(services, env) -> None:
    agent_id = add_enrolled(services, env)
    with agent_side(services, agent_id, output=FACTS):
        shown = run(env, "server", "facts", "web-1")
    assert shown.exit_code == 0, shown.output
    assert "Debian GNU/Linux 12" in shown.stdout and "x86_64" in shown.stdout
    state = {
        "unit": "nginx.service",
        "load_state": "loaded",
        "active_state": "active",
        "sub_state": "running",
        "main_pid": 4242,
        "started_at": None,
    }
    with agent_side(services, agent_id, output=state) as seen:
        result = run(env, "server", "service-status", "web-1", "nginx")
        data = json.loads(run(env, "server", "service-status", "web-1", "nginx", "--json").stdout)
    assert result.exit_code == 0, result.output
    assert "nginx.service on web-1" in result.stdout and "running" in result.stdout
    assert "4242" in result.stdout
    assert [dict(c.payload) for c in seen] == [{"unit": "nginx.service"}] * 2
    assert data["output"]["active_state"] == "active"


@pytest.mark.parametrize(
    ("status", "error", "code", "message"),
    [
        ("failed", "systemctl is not installed", ExitStatus.FAILURE, "the command failed"),
        ("refused", "replay", ExitStatus.PERMISSION_DENIED, "the agent refused the command"),
    ],
)
def test_an_unsuccessful_answer_is_a_clear_error(
    services, env, status, error, code, message
) -> None:
    agent_id = add_enrolled(services, env)
    with agent_side(services, agent_id, status=status, error=error):
        result = run(env, "server", "service-status", "web-1", "nginx")
    assert result.exit_code == code, result.output
    assert message in result.stderr and error in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_no_answer_in_time_is_a_temporary_failure(services, env) -> None:
    add_enrolled(services, env)
    result = run(env, "server", "ping", "web-1", "--timeout", "0.3")
    assert result.exit_code == ExitStatus.THROTTLED  # 75, EX_TEMPFAIL: try again later
    assert "no answer from the agent within 0.3 s" in result.stderr
    assert "tundra server show web-1" in result.stderr
    data = run(env, "server", "ping", "web-1", "--timeout", "0.2", "--json")
    assert data.exit_code == ExitStatus.THROTTLED
    assert json.loads(data.stdout)["status"] in ("queued", "sent", "expired")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["server", "ping", "nope"], ExitStatus.NOT_FOUND, "no server named 'nope'"),
        (["server", "ping", "db-1"], ExitStatus.CONFLICT, "no enrolled agent"),
        (["server", "service-status", "web-1", "../etc/passwd"], ExitStatus.USAGE, "unit"),
        (["server", "ping", "web-1", "--timeout", "0"], ExitStatus.USAGE, "--timeout"),
    ],
)
def test_command_errors(services, env, args, code, message) -> None:
    add_enrolled(services, env)
    run(env, "server", "add", "db-1", "--address", "203.0.113.11")
    result = run(env, *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
