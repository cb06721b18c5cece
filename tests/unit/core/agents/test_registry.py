"""The agent registry: identify() refusals, revocation, renewal, trusted networks, presence, and
the agent as the server inventory shows it."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography import x509
from enrollhelpers import SOURCE, audit_rows, cert_of, enroll, make_csr, serial_of

from tundra.core.agents.models import Agent
from tundra.core.audit.actions import Action
from tundra.core.clock import now, to_iso
from tundra.core.errors import AgentRefused, NotFound, PermissionDenied
from tundra.core.principal import Principal, PrincipalKind, cli_principal
from tundra.core.services import Services

SQLITE_ONLY = pytest.mark.parametrize("database_url", [""], ids=["sqlite"])


def reason_of(fn, *args, **kwargs) -> str:
    with pytest.raises(AgentRefused) as caught:
        fn(*args, **kwargs)
    return caught.value.reason


def token_principal(*scopes: str, servers: tuple[str, ...] = ()) -> Principal:
    return Principal(
        PrincipalKind.TOKEN,
        "tnd_live_t",
        scopes=frozenset(scopes),
        resources={"server": servers} if servers else {},
        token_id="t1",
    )


def login(services: Services) -> None:
    services.reauth.cli_login(
        cli_principal(), username="admin", password="correct horse battery staple"
    )


# -- identify: the gateway's per-call check ---------------------------------------------------


def test_identify_accepts_the_current_certificate(services) -> None:
    done = enroll(services)
    agent = services.agents.identify(done.agent_id, serial_of(cert_of(done)))
    assert (agent.id, agent.server_name, agent.server_address, agent.status) == (
        done.agent_id,
        "web-1",
        "203.0.113.10",
        "active",
    )
    assert agent.cert_not_after == to_iso(cert_of(done).not_valid_after_utc)


def test_identify_refusals(services) -> None:
    first = enroll(services)
    serial = serial_of(cert_of(first))
    assert reason_of(services.agents.identify, "0" * 32, serial) == "unknown"
    assert reason_of(services.agents.identify, first.agent_id, "abc123") == "serial-unknown"
    other = enroll(services, "web-2")
    # A serial issued to another agent is not this agent's.
    assert (
        reason_of(services.agents.identify, first.agent_id, serial_of(cert_of(other)))
        == "serial-unknown"
    )
    # One revoked serial of an active agent (the other stays good).
    renewed_pem, _ = services.agents.renew(
        first.agent_id, serial, make_csr()[1], source_address=SOURCE
    )
    renewed = serial_of(x509.load_pem_x509_certificate(renewed_pem))
    with services.db.transaction() as tx:
        tx.execute(
            "UPDATE agent_certificates SET revoked_at = :t WHERE serial = :s",
            {"t": to_iso(now()), "s": serial},
        )
    assert reason_of(services.agents.identify, first.agent_id, serial) == "serial-revoked"
    assert services.agents.identify(first.agent_id, renewed).active
    services.agents.revoke(cli_principal(), "web-1")
    assert reason_of(services.agents.identify, first.agent_id, renewed) == "revoked"


def test_an_agent_of_a_removed_server_is_unknown(services) -> None:
    done = enroll(services)
    login(services)
    services.servers.remove(cli_principal(), "web-1")
    assert reason_of(services.agents.identify, done.agent_id, serial_of(cert_of(done))) == "unknown"
    (row,) = audit_rows(services, Action.AGENT_REVOKE)
    assert row["details"] == {
        "agent_id": done.agent_id,
        "serials": [serial_of(cert_of(done))],
        "reason": "server-removed",
    }
    assert services.agents.revoked_among([done.agent_id]) == {done.agent_id}


# -- revocation ----------------------------------------------------------------------------------


def test_revoke_is_immediate_audited_and_checkpointed(services) -> None:
    done = enroll(services)
    serial = serial_of(cert_of(done))
    agent = services.agents.revoke(cli_principal(), "web-1", request_id="req-revoke")
    assert agent.status == "revoked" and agent.revoked_at is not None
    assert services.servers.get(cli_principal(), "web-1").status == "revoked"
    assert services.servers.get(cli_principal(), "web-1").connection == "revoked"
    assert reason_of(services.agents.identify, done.agent_id, serial) == "revoked"
    with services.db.read() as tx:
        assert (
            tx.fetchval(
                "SELECT revoked_at FROM agent_certificates WHERE serial = :s", {"s": serial}
            )
            is not None
        )
    (row,) = audit_rows(services, Action.AGENT_REVOKE)
    assert (row["resource"], row["request_id"]) == ("server:web-1", "req-revoke")
    assert row["details"]["serials"] == [serial]
    seq, _ = services.audit.head()
    assert (services.settings.checkpoints_dir / f"{seq}.note").exists()  # signed right after
    with pytest.raises(NotFound, match="no active agent"):
        services.agents.revoke(cli_principal(), "web-1")
    with pytest.raises(NotFound, match="no server"):
        services.agents.revoke(cli_principal(), "web-9")


def test_revoke_needs_write_on_that_server(services) -> None:
    enroll(services)
    with pytest.raises(PermissionDenied):
        services.agents.revoke(token_principal("servers:read"), "web-1")
    with pytest.raises(PermissionDenied):
        services.agents.revoke(token_principal("servers:write", servers=("web-2",)), "web-1")
    assert services.agents.revoke(token_principal("servers:write"), "web-1").status == "revoked"


def test_revoked_among_is_one_answer_for_many(services) -> None:
    keep = enroll(services, "web-1").agent_id
    gone = enroll(services, "web-2").agent_id
    services.agents.revoke(cli_principal(), "web-2")
    many = [keep, gone, "f" * 32] + [f"{i:032x}" for i in range(1200)]
    assert services.agents.revoked_among(many) == set(many) - {keep}
    assert services.agents.revoked_among([]) == set()
    assert services.agents.revoked_among([keep]) == set()


# -- renewal -------------------------------------------------------------------------------------


def test_renew_issues_a_new_certificate_and_keeps_the_old_valid(services) -> None:
    done = enroll(services)
    old = serial_of(cert_of(done))
    key, csr = make_csr()
    cert_pem, bundle = services.agents.renew(
        done.agent_id, old, csr, source_address=SOURCE, request_id="req-renew"
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    new = serial_of(cert)
    assert new != old and cert.public_key() == key.public_key()
    assert bundle == services.pki.ca_bundle_pem()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(f"spiffe://tundra/agent/{done.agent_id}")]
    agent = services.agents.identify(done.agent_id, new)
    assert agent.cert_serial == new
    assert services.agents.identify(done.agent_id, old).id == done.agent_id  # until it expires
    (row,) = audit_rows(services, Action.AGENT_CERT_RENEW)
    assert row["details"]["previous_serial"] == old and row["details"]["serial"] == new
    assert row["actor"] == f"agent:{done.agent_id}" and row["request_id"] == "req-renew"


def test_renew_applies_the_csr_rules_and_audits_refusals(services) -> None:
    done = enroll(services)
    serial = serial_of(cert_of(done))
    asking = make_csr(dns_names=("evil.example",))[1]
    assert (
        reason_of(services.agents.renew, done.agent_id, serial, asking, source_address=SOURCE)
        == "csr-names"
    )
    assert (
        reason_of(services.agents.renew, done.agent_id, serial, b"junk", source_address=SOURCE)
        == "csr-invalid"
    )
    reasons = [r["details"]["reason"] for r in audit_rows(services, Action.AGENT_REFUSED)]
    assert reasons == ["csr-names", "csr-invalid"]
    services.agents.revoke(cli_principal(), "web-1")
    assert (
        reason_of(
            services.agents.renew, done.agent_id, serial, make_csr()[1], source_address=SOURCE
        )
        == "revoked"
    )
    assert audit_rows(services, Action.AGENT_CERT_RENEW) == []


# -- trusted networks ----------------------------------------------------------------------------


def _agent(address: str) -> Agent:
    return Agent(
        id="a" * 32,
        server_id="s",
        server_name="web-1",
        server_address=address,
        status="active",
        cert_serial="1",
        cert_fingerprint="f",
        cert_not_after="",
        agent_version="",
        hostname="",
    )


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("address", "cidrs", "inside", "outside"),
    [
        ("203.0.113.10", "", ["203.0.113.10", "::ffff:203.0.113.10"], ["203.0.113.11", "10.0.0.1"]),
        ("2001:db8::1", "", ["2001:db8::1"], ["2001:db8::2"]),
        (
            "203.0.113.10",
            "10.0.0.0/8, fd00::/8",
            ["10.9.8.7", "fd00::5", "203.0.113.10"],
            ["11.0.0.1", "fe80::1"],
        ),
        ("localhost", "", ["127.0.0.1"], ["203.0.113.10"]),
        ("no-such-host.invalid", "198.51.100.0/24", ["198.51.100.4"], ["203.0.113.10"]),
    ],
)
def test_trusted_networks(services, address, cidrs, inside, outside) -> None:
    registry = type(services.agents)(
        Services(replace(services.settings, agent_trusted_cidrs=cidrs))
    )
    networks = registry.trusted_networks(_agent(address))

    def trusted(ip: str) -> bool:
        parsed = ipaddress.ip_address(ip)
        return any(parsed.version == n.version and parsed in n for n in networks)

    assert all(trusted(ip) for ip in inside), (inside, networks)
    assert not any(trusted(ip) for ip in outside), (outside, networks)


@SQLITE_ONLY
def test_resolved_names_are_cached(services, monkeypatch) -> None:
    import socket

    calls: list[str] = []
    real = socket.getaddrinfo

    def counting(host, *args, **kwargs):
        calls.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    for _ in range(3):
        services.agents.trusted_networks(_agent("localhost"))
    assert calls == ["localhost"]


# -- presence ------------------------------------------------------------------------------------


def test_presence_and_connection_state(services) -> None:
    done = enroll(services)
    heartbeat = services.settings.agent_heartbeat_seconds
    assert (
        services.agents.for_server(cli_principal(), "web-1").connection(heartbeat_seconds=heartbeat)
        == "never"
    )
    facts = {"os": "Debian GNU/Linux 12", "cpu_count": 2, "load_average": [0.1, 0.2, 0.3]}
    services.agents.mark_connected(
        done.agent_id, address="203.0.113.10", agent_version="0.4.1", hostname="web-1", facts=facts
    )
    server = services.servers.get(cli_principal(), "web-1")
    assert server.connection == "connected"
    assert server.agent.facts == facts and server.agent.agent_version == "0.4.1"
    assert server.as_dict()["agent"]["connection"] == "connected"
    assert server.as_dict()["agent"]["cert_not_after"] == to_iso(cert_of(done).not_valid_after_utc)
    # Silence for more than three heartbeats reads as disconnected, before the gateway notices.
    agent = services.agents.for_server(cli_principal(), "web-1")
    later = now() + timedelta(seconds=3 * heartbeat + 1)
    assert agent.connection(heartbeat_seconds=heartbeat, now=later) == "disconnected"
    seen = to_iso(later)
    services.agents.touch({done.agent_id: (seen, "203.0.113.99")})
    agent = services.agents.for_server(cli_principal(), "web-1")
    assert agent.last_seen_at == seen and agent.last_address == "203.0.113.99"
    assert agent.connection(heartbeat_seconds=heartbeat, now=later) == "connected"
    services.agents.mark_disconnected(done.agent_id)
    assert services.servers.get(cli_principal(), "web-1").connection == "disconnected"
    services.agents.touch({})
    # Telemetry writes no audit rows.
    with services.db.read() as tx:
        actions = {r["action"] for r in tx.fetchall("SELECT action FROM audit_log")}
    assert not any("presence" in a or "connect" in a for a in actions)


def test_oversized_facts_are_not_stored(services) -> None:
    done = enroll(services)
    services.agents.mark_connected(
        done.agent_id,
        address="203.0.113.10",
        agent_version="1",
        hostname="h",
        facts={"os": "x" * 20000},
    )
    assert services.agents.for_server(cli_principal(), "web-1").facts == {}


# -- operator views ------------------------------------------------------------------------------


def test_list_and_for_server_respect_token_restrictions(services) -> None:
    first = enroll(services, "web-1")
    second = enroll(services, "web-1")
    enroll(services, "web-2")
    services.servers.add(cli_principal(), name="web-3", address="203.0.113.3")
    agents = services.agents.list(cli_principal())
    assert [(a.server_name, a.status) for a in agents] == [
        ("web-1", "active"),
        ("web-1", "revoked"),
        ("web-2", "active"),
    ]
    assert services.agents.for_server(cli_principal(), "web-1").id == second.agent_id
    assert services.agents.for_server(cli_principal(), "web-3") is None
    with pytest.raises(NotFound):
        services.agents.for_server(cli_principal(), "web-9")
    restricted = token_principal("servers:read", servers=("web-2",))
    assert [a.server_name for a in services.agents.list(restricted)] == ["web-2"]
    with pytest.raises(PermissionDenied):
        services.agents.for_server(restricted, "web-1")
    # After revocation the newest agent is still what the server shows.
    services.agents.revoke(cli_principal(), "web-1")
    shown = services.servers.get(cli_principal(), "web-1").agent
    assert shown is not None and shown.id == second.agent_id and shown.status == "revoked"
    assert first.agent_id != second.agent_id


def test_server_listing_shows_each_servers_agent(services) -> None:
    enroll(services, "web-1")
    services.servers.add(cli_principal(), name="web-2", address="203.0.113.2")
    listed = {s.name: s for s in services.servers.list(cli_principal())}
    assert listed["web-1"].agent is not None and listed["web-1"].connection == "never"
    assert listed["web-2"].agent is None and listed["web-2"].connection is None
    assert listed["web-2"].as_dict()["agent"] is None
    assert "join_token" not in listed["web-1"].as_dict()
    updated = services.servers.update(cli_principal(), "web-1", tags=["prod"])
    assert updated.agent is not None and updated.status == "enrolled"


# -- refusals ------------------------------------------------------------------------------------


def test_refusals_are_audited_at_most_once_a_minute(services) -> None:
    for _ in range(3):
        services.agents.refuse(
            agent_id="a" * 32,
            reason="source",
            source="192.0.2.1",
            method="/tundra.agent.v1.AgentGateway/Session",
        )
    services.agents.refuse(agent_id="a" * 32, reason="revoked", source="192.0.2.1", method="m")
    services.agents.refuse(agent_id=None, reason="no-certificate", source="192.0.2.9", method="m")
    rows = audit_rows(services, Action.AGENT_REFUSED)
    assert [(r["resource"], r["details"]["reason"], r["actor"]) for r in rows] == [
        ("agent:" + "a" * 32, "source", "agent:" + "a" * 32),
        ("agent:" + "a" * 32, "revoked", "agent:" + "a" * 32),
        ("agent:unidentified", "no-certificate", "agent:unidentified"),
    ]
    assert rows[0]["details"]["method"] == "/tundra.agent.v1.AgentGateway/Session"
