"""The agent gateway over real gRPC on loopback: the Session handshake, commands round trips,
the policy's refusals (revoked, impersonation, untrusted source, unknown methods), one session
per agent, and a graceful stop.

The handshake and revocation tests run on SQLite and PostgreSQL (``services``); the rest pin the
embedded database (``home_services``) to keep the suite quick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gatewayhelpers import (
    SERVICE,
    AgentSession,
    EnrolledAgent,
    Services,
    audit_rows,
    channel,
    enroll_agent,
    expect_refused,
    make_services,
    renew_call,
    result,
    running_gateway,
    wait_for,
)

from tundra.agent.v1 import agent_pb2
from tundra.core.audit.actions import Action
from tundra.core.principal import SYSTEM
from tundra.gateway.server import Gateway

OK = agent_pb2.CommandResult.STATUS_SUCCEEDED


@pytest.fixture
def home_services(tmp_path: Path) -> Iterator[Services]:
    svc = make_services(tmp_path / "home", gateway_poll_ms=20)
    yield svc
    svc.close()


def connection(services: Services, agent_id: str) -> str:
    agent = next(a for a in services.agents.list(SYSTEM) if a.id == agent_id)
    return agent.connection(heartbeat_seconds=services.settings.agent_heartbeat_seconds)


def test_enrolled_agent_completes_the_session_handshake(services: Services) -> None:
    agent = enroll_agent(services, "web-1")

    async def scenario() -> None:
        async with (
            running_gateway(services) as gateway,
            channel(gateway, agent.credentials()) as chan,
        ):
            session = AgentSession(chan)
            started = time.perf_counter()
            welcome = await session.open(agent.agent_id)
            handshake_ms = (time.perf_counter() - started) * 1000
            assert welcome.agent_id == agent.agent_id
            assert welcome.heartbeat_seconds == services.settings.agent_heartbeat_seconds
            assert welcome.ca_bundle_pem == services.pki.ca_bundle_pem()
            assert [(k.key_id, k.public_key) for k in welcome.command_keys] == (
                services.command_signer.public_keys()
            )
            assert gateway.connected_agents == {agent.agent_id}
            assert connection(services, agent.agent_id) == "connected"
            await session.send(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(sequence=7)))
            ack = await session.read()
            assert ack.heartbeat_ack.sequence == 7
            await session.call.done_writing()
            assert await session.ended() == grpc.StatusCode.OK
            await wait_for(lambda: not gateway.connected_agents)
            print(f"TLS handshake + Hello/Welcome: {handshake_ms:.1f} ms")
        row = next(a for a in services.agents.list(SYSTEM) if a.id == agent.agent_id)
        assert row.facts["os"] == "Debian"
        assert row.last_address == "127.0.0.1"
        assert row.connection(heartbeat_seconds=15) == "disconnected"

    asyncio.run(scenario())


def test_revoked_agent_loses_its_live_session_and_the_next_call(services: Services) -> None:
    agent = enroll_agent(services, "web-1")

    async def scenario() -> None:
        async with (
            running_gateway(services) as gateway,
            channel(gateway, agent.credentials()) as chan,
        ):
            session = AgentSession(chan)
            await session.open(agent.agent_id)
            started = time.perf_counter()
            await asyncio.to_thread(services.agents.revoke, SYSTEM, "web-1")
            assert await session.ended() == grpc.StatusCode.PERMISSION_DENIED
            ended_ms = (time.perf_counter() - started) * 1000
            assert ended_ms < 2000
            assert gateway.connected_agents == set()
            refused = await expect_refused(renew_call(chan, agent.key))
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            again = AgentSession(chan)
            refused = await expect_refused(again.open(agent.agent_id))
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            print(f"revoke → session ended in {ended_ms:.0f} ms")

    asyncio.run(scenario())
    reasons = {row["details"]["reason"] for row in audit_rows(services, Action.AGENT_REFUSED)}
    assert "revoked" in reasons


def test_execute_round_trip_and_the_queue_poller(home_services: Services) -> None:
    services = home_services
    agent = enroll_agent(services, "web-1")

    async def scenario() -> None:
        async with (
            running_gateway(services) as gateway,
            channel(gateway, agent.credentials()) as chan,
        ):
            session = AgentSession(chan)
            await session.open(agent.agent_id)
            answering = asyncio.create_task(
                session.answer(lambda env: (OK, {"pong": env["type"]}, ""))
            )
            outcome = await gateway.execute(agent.agent_id, "ping", timeout=10)
            assert outcome["status"] == "succeeded", outcome
            assert outcome["output"] == {"pong": "ping"}
            timings = []
            for _ in range(20):
                outcome = await gateway.execute(agent.agent_id, "ping", timeout=10)
                assert outcome["status"] == "succeeded"
                timings.append(outcome["round_trip_ms"])
            # A command queued by another front end reaches the agent through the poller.
            record = await asyncio.to_thread(
                services.commands.run, SYSTEM, "web-1", "facts", timeout=10
            )
            assert record.status == "succeeded"
            assert record.output == {"pong": "facts"}
            await session.call.done_writing()
            await answering
            timings.sort()
            print(f"execute round trip p50 {timings[10]:.1f} ms, max {timings[-1]:.1f} ms")

    asyncio.run(scenario())


def test_a_certificate_cannot_say_hello_as_another_agent(home_services: Services) -> None:
    services = home_services
    a = enroll_agent(services, "web-a")
    b = enroll_agent(services, "web-b")

    async def scenario() -> None:
        async with (
            running_gateway(services) as gateway,
            channel(gateway, a.credentials()) as chan,
        ):
            refused = await expect_refused(AgentSession(chan).open(b.agent_id))
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert gateway.connected_agents == set()

    asyncio.run(scenario())
    rows = audit_rows(services, Action.AGENT_REFUSED)
    assert [(r["resource"], r["details"]["reason"]) for r in rows] == [
        (f"agent:{a.agent_id}", "identity-mismatch")
    ]


def test_an_agent_cannot_complete_another_agents_command(home_services: Services) -> None:
    services = home_services
    a = enroll_agent(services, "web-a")
    b = enroll_agent(services, "web-b")

    async def scenario() -> None:
        async with (
            running_gateway(services) as gateway,
            channel(gateway, a.credentials()) as chan_a,
            channel(gateway, b.credentials()) as chan_b,
        ):
            session_a, session_b = AgentSession(chan_a), AgentSession(chan_b)
            await session_a.open(a.agent_id)
            await session_b.open(b.agent_id)
            waiting = asyncio.create_task(gateway.execute(b.agent_id, "ping", timeout=10))
            pushed = await session_b.read()
            assert pushed.WhichOneof("kind") == "command"
            command_id = json.loads(pushed.command.envelope)["command_id"]
            # A answers B's command: refused and audited; B's command is untouched.
            await session_a.send(result(command_id, OK, {"forged": True}))
            await wait_for(lambda: bool(audit_rows(services, Action.COMMAND_CROSS_AGENT)))
            record = services.commands.get(SYSTEM, command_id)
            assert record.status == "sent"
            assert not waiting.done()
            # B's own answer completes it; A's session is still up.
            await session_b.send(result(command_id, OK, {"pong": True}))
            outcome = await waiting
            assert outcome["status"] == "succeeded"
            assert outcome["output"] == {"pong": True}
            assert gateway.connected_agents == {a.agent_id, b.agent_id}

    asyncio.run(scenario())


def test_untrusted_source_address_is_refused(tmp_path: Path) -> None:
    # The server is registered at 127.0.0.2; the test connects from 127.0.0.1.
    services = make_services(tmp_path / "home")
    try:
        agent = enroll_agent(services, "web-1", address="127.0.0.2")

        async def scenario() -> None:
            async with (
                running_gateway(services) as gateway,
                channel(gateway, agent.credentials()) as chan,
            ):
                refused = await expect_refused(AgentSession(chan).open(agent.agent_id))
                assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "not trusted" in (refused.details() or "")
                refused = await expect_refused(renew_call(chan, agent.key))
                assert refused.code() == grpc.StatusCode.PERMISSION_DENIED

        asyncio.run(scenario())
        reasons = [r["details"]["reason"] for r in audit_rows(services, Action.AGENT_REFUSED)]
        assert "source" in reasons
    finally:
        services.close()
    # The same agent is let in when a configured network covers the source.
    services = make_services(tmp_path / "home2", agent_trusted_cidrs="127.0.0.0/8")
    try:
        agent = enroll_agent(services, "web-1", address="127.0.0.2")

        async def allowed() -> None:
            async with (
                running_gateway(services) as gateway,
                channel(gateway, agent.credentials()) as chan,
            ):
                await AgentSession(chan).open(agent.agent_id)

        asyncio.run(allowed())
    finally:
        services.close()


@pytest.mark.parametrize(
    "method",
    [
        SERVICE + "Shell",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/tundra.agent.v1.AgentGateway/session",
    ],
)
def test_methods_outside_the_allowlist_are_refused(home_services: Services, method: str) -> None:
    services = home_services
    agent = enroll_agent(services, "web-1")

    async def scenario() -> None:
        async with (
            running_gateway(services) as gateway,
            channel(gateway, agent.credentials()) as chan,
        ):
            call = chan.unary_unary(method)
            refused = await expect_refused(call(b"", timeout=10))
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refused.details() == "no such method"

    asyncio.run(scenario())
    rows = audit_rows(services, Action.AGENT_REFUSED)
    assert [r["details"]["reason"] for r in rows] == ["method"]


def test_a_new_session_replaces_the_older_one(home_services: Services) -> None:
    services = home_services
    agent = enroll_agent(services, "web-1")

    async def scenario() -> None:
        async with running_gateway(services) as gateway:
            async with (
                channel(gateway, agent.credentials()) as first_chan,
                channel(gateway, agent.credentials()) as second_chan,
            ):
                first = AgentSession(first_chan)
                await first.open(agent.agent_id)
                second = AgentSession(second_chan)
                await second.open(agent.agent_id)
                assert await first.ended() == grpc.StatusCode.ABORTED
                assert gateway.connected_agents == {agent.agent_id}
                # The survivor is the live one: commands reach it.
                answering = asyncio.create_task(second.answer(lambda env: (OK, {}, "")))
                outcome = await gateway.execute(agent.agent_id, "ping", timeout=10)
                assert outcome["status"] == "succeeded"
                await second.call.done_writing()
                await answering
            await wait_for(lambda: not gateway.connected_agents)
        assert connection(services, agent.agent_id) == "disconnected"

    asyncio.run(scenario())


def test_stop_ends_sessions_and_records_last_seen(home_services: Services) -> None:
    services = home_services
    agent = enroll_agent(services, "web-1")

    async def scenario() -> None:
        gateway = Gateway(services, listen="127.0.0.1:0")
        await gateway.start()
        try:
            async with channel(gateway, agent.credentials()) as chan:
                session = AgentSession(chan)
                await session.open(agent.agent_id)
                beat = agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(sequence=1))
                await session.send(beat)
                await session.read()
                stopping = asyncio.create_task(gateway.stop(5.0))
                assert await session.ended() == grpc.StatusCode.UNAVAILABLE
                await stopping
        finally:
            await gateway.stop(0)

    asyncio.run(scenario())
    row = next(a for a in services.agents.list(SYSTEM) if a.id == agent.agent_id)
    assert row.last_seen_at is not None
    assert row.connection(heartbeat_seconds=15) == "disconnected"


def test_renew_returns_a_working_certificate_for_the_callers_own_identity(
    home_services: Services,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from tundra.core.pki import x509 as x

    services = home_services
    agent = enroll_agent(services, "web-1")
    new_key = ec.generate_private_key(ec.SECP256R1())

    async def scenario() -> None:
        async with (
            running_gateway(services) as gateway,
            channel(gateway, agent.credentials()) as chan,
        ):
            response = await renew_call(chan, new_key)
            cert = x509.load_pem_x509_certificate(response.certificate_pem)
            assert x.agent_id_from_cert(cert) == agent.agent_id
            assert response.ca_bundle_pem == services.pki.ca_bundle_pem()
            renewed = EnrolledAgent(
                agent.agent_id, "web-1", new_key, response.certificate_pem, agent.ca_bundle_pem
            )
            async with channel(gateway, renewed.credentials()) as new_chan:
                welcome = await AgentSession(new_chan).open(agent.agent_id)
                assert welcome.agent_id == agent.agent_id

    asyncio.run(scenario())


def test_the_first_message_must_be_hello(home_services: Services) -> None:
    services = home_services
    agent = enroll_agent(services, "web-1")

    async def scenario() -> None:
        async with (
            running_gateway(services) as gateway,
            channel(gateway, agent.credentials()) as chan,
        ):
            session = AgentSession(chan)
            await session.send(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(sequence=1)))
            assert await session.ended() == grpc.StatusCode.PERMISSION_DENIED
            assert gateway.connected_agents == set()

    asyncio.run(scenario())


def test_malformed_results_are_recorded_as_failures(home_services: Services) -> None:
    services = home_services
    agent = enroll_agent(services, "web-1")

    def reply(envelope: dict[str, object]) -> tuple[int, None, str]:
        return OK, None, ""

    async def scenario() -> None:
        async with (
            running_gateway(services) as gateway,
            channel(gateway, agent.credentials()) as chan,
        ):
            session = AgentSession(chan)
            await session.open(agent.agent_id)
            waiting = asyncio.create_task(gateway.execute(agent.agent_id, "ping", timeout=10))
            pushed = await session.read()
            command_id = json.loads(pushed.command.envelope)["command_id"]
            await session.send(
                agent_pb2.AgentMessage(
                    result=agent_pb2.CommandResult(
                        command_id=command_id, status=OK, output_json=b"[1, 2"
                    )
                )
            )
            outcome = await waiting
            assert outcome["status"] == "failed"
            assert "not a JSON object" in outcome["error"]
            assert services.commands.get(SYSTEM, command_id).status == "failed"

    asyncio.run(scenario())


def test_sessions_end_when_the_certificate_expires_or_the_agent_falls_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import UTC, datetime, timedelta

    from gatewayhelpers import agent_cert

    caplog.set_level(logging.INFO, logger="tundra.gateway")
    services = make_services(tmp_path / "home", agent_heartbeat_seconds=1)
    try:
        short = enroll_agent(services, "web-short")
        silent = enroll_agent(services, "web-silent")
        ca_key, ca_cert = services.pki._ca()
        # The registered serial and key, valid for two more seconds only.
        short_lived = agent_cert(
            ca_key,
            ca_cert,
            short.key.public_key(),
            agent_id=short.agent_id,
            serial=short.serial,
            not_after=datetime.now(UTC) + timedelta(seconds=2),
        )

        async def heartbeats(session: AgentSession) -> None:
            sequence = 0
            while True:
                sequence += 1
                beat = agent_pb2.Heartbeat(sequence=sequence)
                await session.send(agent_pb2.AgentMessage(heartbeat=beat))
                await asyncio.sleep(0.3)

        async def scenario() -> None:
            async with (
                running_gateway(services) as gateway,
                channel(gateway, short.credentials(cert_pem=short_lived)) as chan_short,
                channel(gateway, silent.credentials()) as chan_silent,
            ):
                s1, s2 = AgentSession(chan_short), AgentSession(chan_silent)
                await s1.open(short.agent_id)
                await s2.open(silent.agent_id)
                beating = asyncio.create_task(heartbeats(s1))
                started = time.monotonic()
                # A heartbeating agent whose certificate expires loses its session at once
                # (seen on the gateway's side: the client's next write races with the end).
                await wait_for(lambda: short.agent_id not in gateway.connected_agents)
                assert time.monotonic() - started < 5
                closed = [
                    json.loads(r.getMessage())
                    for r in caplog.records
                    if r.name == "tundra.gateway" and '"session.closed"' in r.getMessage()
                ]
                assert [(c["agent_id"], c["code"], c["reason"]) for c in closed] == [
                    (short.agent_id, "UNAUTHENTICATED", "the client certificate has expired")
                ]
                beating.cancel()
                await asyncio.gather(beating, return_exceptions=True)
                assert await s2.ended(timeout=15) == grpc.StatusCode.UNAVAILABLE
                assert "no heartbeat" in (await s2.call.details() or "")
                assert gateway.connected_agents == set()

        asyncio.run(scenario())
    finally:
        services.close()


def test_a_dropped_connection_ends_the_session_and_fails_waiters_fast(
    home_services: Services,
) -> None:
    from tundra.core.errors import Conflict

    services = home_services
    agent = enroll_agent(services, "web-1")

    async def scenario() -> None:
        async with running_gateway(services) as gateway:
            with pytest.raises(Conflict):
                await gateway.execute(agent.agent_id, "ping")
            chan = channel(gateway, agent.credentials())
            session = AgentSession(chan)
            await session.open(agent.agent_id)
            waiting = asyncio.create_task(gateway.execute(agent.agent_id, "ping", timeout=30))
            pushed = await session.read()
            assert pushed.WhichOneof("kind") == "command"
            started = time.monotonic()
            await chan.close()  # the agent vanishes without answering
            outcome = await waiting
            assert outcome["status"] == "sent"
            assert outcome["error"] == "the session ended"
            assert time.monotonic() - started < 5
            await wait_for(lambda: not gateway.connected_agents)
        assert connection(services, agent.agent_id) == "disconnected"

    asyncio.run(scenario())
