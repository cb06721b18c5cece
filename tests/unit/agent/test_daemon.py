"""The agent daemon against a small real gRPC gateway on loopback (mutual TLS, this test's CA).

The gateway here is a stand-in written for the test (the real one is tested in
tests/integration/test_gateway*.py): it records Hello, heartbeats and results, sends signed
commands, renews certificates and can refuse, so the daemon's own behaviour is pinned down:
session flow, guard + executors, renewal with an atomic swap and a reconnect, backoff after a
refusal, and a clean SIGTERM.
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from tundra.agent.config import AgentConfig, write_config
from tundra.agent.daemon import AgentDaemon, JsonLog, backoff_delay, claimed_command_id
from tundra.agent.state import AgentState
from tundra.agent.v1 import agent_pb2, agent_pb2_grpc
from tundra.core.agents.envelope import SIGNING_CONTEXT, build_envelope, key_id_for
from tundra.core.crypto.primitives import new_id
from tundra.core.pki import x509 as x

Status = agent_pb2.CommandResult.Status


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Session:
    peer_pem: bytes
    hello: agent_pb2.Hello
    outbox: queue.Queue[agent_pb2.ControlMessage | None] = field(default_factory=queue.Queue)
    received: list[agent_pb2.AgentMessage] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def results(self) -> list[agent_pb2.CommandResult]:
        return [m.result for m in self.received if m.WhichOneof("kind") == "result"]

    def heartbeats(self) -> list[agent_pb2.Heartbeat]:
        return [m.heartbeat for m in self.received if m.WhichOneof("kind") == "heartbeat"]


class Gateway(agent_pb2_grpc.AgentGatewayServicer):  # type: ignore[misc]
    def __init__(self, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate) -> None:
        self.ca_key, self.ca_cert = ca_key, ca_cert
        self.command_key = ed25519.Ed25519PrivateKey.generate()
        self.sessions: list[Session] = []
        self.refusals = 0
        self.refuse = False
        self.renewals: list[x509.Certificate] = []

    @property
    def command_key_raw(self) -> bytes:
        return self.command_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, agent_id: str, type: str = "ping") -> agent_pb2.SignedCommand:
        _, envelope = build_envelope(agent_id=agent_id, type=type, payload={}, ttl_seconds=30)
        return agent_pb2.SignedCommand(
            envelope=envelope,
            signature=self.command_key.sign(SIGNING_CONTEXT + envelope),
            key_id=key_id_for(self.command_key_raw),
        )

    def Session(self, requests: Iterator[agent_pb2.AgentMessage], context: Any) -> Iterator[Any]:
        if self.refuse:
            self.refusals += 1
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "agent revoked")
        first = next(requests)
        session = Session(context.auth_context()["x509_pem_cert"][0], first.hello)
        self.sessions.append(session)

        def consume() -> None:
            try:
                for message in requests:
                    session.received.append(message)
                    if message.WhichOneof("kind") == "heartbeat":
                        ack = agent_pb2.HeartbeatAck(sequence=message.heartbeat.sequence)
                        session.outbox.put(agent_pb2.ControlMessage(heartbeat_ack=ack))
            except grpc.RpcError:
                pass
            finally:
                session.ended.set()
                session.outbox.put(None)

        threading.Thread(target=consume, daemon=True).start()
        yield agent_pb2.ControlMessage(
            welcome=agent_pb2.Welcome(
                agent_id=first.hello.agent_id,
                heartbeat_seconds=1,
                ca_bundle_pem=x.cert_to_pem(self.ca_cert),
                command_keys=[
                    agent_pb2.CommandKey(
                        key_id=key_id_for(self.command_key_raw), public_key=self.command_key_raw
                    )
                ],
            )
        )
        while (message := session.outbox.get()) is not None:
            yield message

    def Renew(self, request: agent_pb2.RenewRequest, context: Any) -> agent_pb2.RenewResponse:
        peer = x509.load_pem_x509_certificate(context.auth_context()["x509_pem_cert"][0])
        csr = x509.load_pem_x509_csr(request.csr_pem)
        assert len(csr.subject) == 0 and len(csr.extensions) == 0
        cert = agent_cert(self.ca_key, self.ca_cert, csr.public_key(), _san_agent_id(peer), hours=1)
        self.renewals.append(cert)
        return agent_pb2.RenewResponse(
            certificate_pem=x.cert_to_pem(cert), ca_bundle_pem=x.cert_to_pem(self.ca_cert)
        )

    def close_sessions(self) -> None:
        for session in self.sessions:
            session.outbox.put(None)


def agent_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: Any,
    agent_id: str,
    *,
    hours: float = 24,
    start: datetime | None = None,
) -> x509.Certificate:
    start = start or datetime.now(UTC) - timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "web-1")]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(hours=hours))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://tundra/agent/{agent_id}")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _san_agent_id(cert: x509.Certificate) -> str:
    uri = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(uri.get_values_for_type(x509.UniformResourceIdentifier)[0]).rsplit("/", 1)[1]


@dataclass
class Setup:
    gateway: Gateway
    config_path: Path
    config: AgentConfig
    state: AgentState

    def daemon(self, stream: io.StringIO, **options: Any) -> tuple[AgentDaemon, threading.Thread]:
        daemon = AgentDaemon(self.config_path, log=JsonLog(stream), **options)
        thread = threading.Thread(target=daemon.run, kwargs={"handle_signals": False})
        thread.start()
        return daemon, thread


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    servers: list[tuple[grpc.Server, Gateway]] = []

    def make(*, cert_start: datetime | None = None, cert_hours: float = 24) -> Setup:
        ca_key, ca_cert = x.generate_ca("test-gateway-ca")
        server_cert = x.issue_server_cert(ca_key, ca_cert, ["localhost", "127.0.0.1"])
        gateway = Gateway(ca_key, ca_cert)
        server = grpc.server(ThreadPoolExecutor(max_workers=8))
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(gateway, server)
        credentials = grpc.ssl_server_credentials(
            [(x.key_to_pem(server_cert.key), x.cert_to_pem(server_cert.cert))],
            root_certificates=x.cert_to_pem(ca_cert),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        servers.append((server, gateway))

        agent_id = new_id()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = agent_cert(
            ca_key, ca_cert, key.public_key(), agent_id, hours=cert_hours, start=cert_start
        )
        state = AgentState(tmp_path / f"state-{port}")
        state.prepare()
        state.store_credentials(key_pem=x.key_to_pem(key), cert_pem=x.cert_to_pem(cert))
        state.store_ca_bundle(x.cert_to_pem(ca_cert))
        state.store_command_keys({key_id_for(gateway.command_key_raw): gateway.command_key_raw})
        config = AgentConfig(
            agent_id=agent_id,
            server_name="web-1",
            gateway=f"127.0.0.1:{port}",
            panel_url="https://127.0.0.1:1",
            state_dir=state.dir,
        )
        config_path = tmp_path / f"agent-{port}.toml"
        write_config(config, config_path)
        return Setup(gateway, config_path, config, state)

    yield make
    for server, gateway in servers:
        gateway.close_sessions()
        server.stop(grace=None).wait()


def log_events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def stop(daemon: AgentDaemon, thread: threading.Thread) -> float:
    started = time.monotonic()
    daemon.request_stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    return time.monotonic() - started


def test_session_hello_heartbeats_commands_and_replay(setup: Callable[..., Setup]) -> None:
    s = setup()
    stream = io.StringIO()
    daemon, thread = s.daemon(stream)
    try:
        session = wait_for(lambda: s.gateway.sessions and s.gateway.sessions[0], "a session")
        assert session.hello.agent_id == s.config.agent_id
        assert session.hello.facts.cpu_count >= 1
        assert _san_agent_id(x509.load_pem_x509_certificate(session.peer_pem)) == (
            s.config.agent_id
        )

        command = s.gateway.sign(s.config.agent_id)
        session.outbox.put(agent_pb2.ControlMessage(command=command))
        session.outbox.put(agent_pb2.ControlMessage(command=command))  # the same bytes again
        results = wait_for(lambda: len(session.results()) == 2 and session.results(), "results")
        by_status = {r.status: r for r in results}
        assert set(by_status) == {Status.STATUS_SUCCEEDED, Status.STATUS_REFUSED}
        assert json.loads(by_status[Status.STATUS_SUCCEEDED].output_json)
        assert by_status[Status.STATUS_REFUSED].error.startswith("replay")
        assert by_status[Status.STATUS_REFUSED].command_id == claimed_command_id(command.envelope)

        other = s.gateway.sign(new_id())  # for another agent
        session.outbox.put(agent_pb2.ControlMessage(command=other))
        refused = wait_for(lambda: len(session.results()) == 3 and session.results()[2], "3rd")
        assert refused.status == Status.STATUS_REFUSED
        assert refused.error.startswith("audience")

        # ping runs on the event loop; facts (it reads /proc and the disks) on a worker thread.
        facts = s.gateway.sign(s.config.agent_id, "facts")
        session.outbox.put(agent_pb2.ControlMessage(command=facts))
        answered = wait_for(lambda: len(session.results()) == 4 and session.results()[3], "4th")
        assert answered.status == Status.STATUS_SUCCEEDED, answered.error
        assert json.loads(answered.output_json)["cpu_count"] >= 1

        wait_for(lambda: len(session.heartbeats()) >= 2, "two heartbeats", timeout=5)
    finally:
        elapsed = stop(daemon, thread)
    assert elapsed < 3
    assert session.ended.wait(5)
    events = [e["event"] for e in log_events(stream)]
    assert events[0] == "starting"
    assert "connected" in events
    assert events[-1] == "stopped"
    assert all({"ts", "level", "event"} <= set(e) for e in log_events(stream))


def test_renewal_at_two_thirds_swaps_the_pair_and_reconnects(
    setup: Callable[..., Setup],
) -> None:
    # A 1-hour certificate 50 minutes old: past two thirds, so renewal is due at once.
    s = setup(cert_start=datetime.now(UTC) - timedelta(minutes=50), cert_hours=1)
    old_serial = s.state.load_credentials().cert.serial_number
    stream = io.StringIO()
    daemon, thread = s.daemon(stream)
    try:
        wait_for(lambda: len(s.gateway.sessions) >= 2, "a second session after renewal")
    finally:
        stop(daemon, thread)
    (renewed,) = s.gateway.renewals
    creds = s.state.load_credentials()
    assert creds.cert.serial_number == renewed.serial_number != old_serial
    second = x509.load_pem_x509_certificate(s.gateway.sessions[1].peer_pem)
    assert second.serial_number == renewed.serial_number
    assert stat_mode(s.state.key_path) == 0o600
    assert not list(s.state.dir.glob("*.new"))
    assert "renewed" in [e["event"] for e in log_events(stream)]


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_refusal_is_logged_and_retried_with_backoff(setup: Callable[..., Setup]) -> None:
    s = setup()
    s.gateway.refuse = True
    stream = io.StringIO()
    daemon, thread = s.daemon(stream, backoff_base=0.02, backoff_cap=0.1)
    try:
        wait_for(lambda: s.gateway.refusals >= 3, "three refused attempts")
        s.gateway.refuse = False
        wait_for(lambda: s.gateway.sessions, "a session once accepted again")
    finally:
        stop(daemon, thread)
    events = log_events(stream)
    refused = [e for e in events if e["event"] == "refused"]
    assert refused and refused[0]["code"] == "PERMISSION_DENIED"
    assert "agent revoked" in refused[0]["details"]
    assert "hint" in refused[0]
    waits = [e["seconds"] for e in events if e["event"] == "reconnect-wait"]
    assert waits and all(0 <= w <= 0.1 for w in waits)


def test_expired_certificate_is_reported_not_dialled(setup: Callable[..., Setup]) -> None:
    s = setup(cert_start=datetime.now(UTC) - timedelta(hours=3), cert_hours=1)
    stream = io.StringIO()
    daemon, thread = s.daemon(stream, backoff_base=0.02, backoff_cap=0.05)
    try:
        wait_for(
            lambda: any(e["event"] == "certificate-expired" for e in log_events(stream)),
            "the expiry report",
        )
    finally:
        stop(daemon, thread)
    assert s.gateway.sessions == []


@pytest.mark.parametrize("attempt", [0, 1, 5, 20, 200])
def test_backoff_is_full_jitter_under_the_cap(attempt: int) -> None:
    import random

    rng = random.Random(attempt)
    ceiling = min(60.0, 0.5 * 2**attempt)
    delays = [backoff_delay(attempt, rng, base=0.5, cap=60.0) for _ in range(200)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.8  # it spreads over the whole range
    assert min(delays) < ceiling * 0.2


def test_claimed_command_id_never_trusts_garbage() -> None:
    assert claimed_command_id(b'{"command_id": "abc123"}') == "abc123"
    assert claimed_command_id(b'{"command_id": "a b"}') == ""
    assert claimed_command_id(b"[1]") == ""
    assert claimed_command_id(b"\xff") == ""


def test_sigterm_closes_the_stream_and_exits_0(setup: Callable[..., Setup]) -> None:
    s = setup()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tundra", "agent", "run", "--config", str(s.config_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        session = wait_for(lambda: s.gateway.sessions and s.gateway.sessions[0], "a session", 60)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err.decode()
    assert elapsed < 3
    assert session.ended.wait(5)
    assert out == b""
    events = [json.loads(line) for line in err.decode().splitlines()]
    assert [e["event"] for e in events if e["event"] in {"signal", "closing", "stopped"}] == [
        "signal",
        "closing",
        "stopped",
    ]


def test_the_agent_cannot_be_talked_down_to_tls_1_2(
    setup: Callable[..., Setup], tmp_path: Path
) -> None:
    """A fake gateway that speaks at most TLS 1.2 (with a valid certificate from the agent's CA)
    gets no handshake: the agent offers TLS 1.2 only an RSA suite, and the key is ECDSA."""
    import socket
    import ssl

    s = setup()
    ca_key, ca_cert = s.gateway.ca_key, s.gateway.ca_cert
    issued = x.issue_server_cert(ca_key, ca_cert, ["127.0.0.1"])
    (tmp_path / "gw.crt").write_bytes(x.cert_to_pem(issued.cert))
    (tmp_path / "gw.key").write_bytes(x.key_to_pem(issued.key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tmp_path / "gw.crt", tmp_path / "gw.key")
    errors: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            with raw:
                raw.settimeout(5)
                try:
                    with context.wrap_socket(raw, server_side=True):
                        errors.append("handshake completed")
                except (ssl.SSLError, OSError) as exc:
                    errors.append(str(exc))

    thread = threading.Thread(target=serve)
    thread.start()
    port = listener.getsockname()[1]
    config = AgentConfig(**{**s.config.as_dict(), "gateway": f"127.0.0.1:{port}",
                            "state_dir": s.state.dir})  # fmt: skip
    write_config(config, s.config_path)
    stream = io.StringIO()
    daemon, agent = s.daemon(stream, backoff_base=0.05, backoff_cap=0.1)
    try:
        wait_for(lambda: errors, "a handshake attempt")
    finally:
        stop(daemon, agent)
        done.set()
        thread.join(timeout=5)
        listener.close()
    assert "handshake completed" not in errors
    assert any("NO_SHARED_CIPHER" in e or "no shared cipher" in e.lower() for e in errors), errors
    assert "connected" not in [e["event"] for e in log_events(stream)]
