"""The real agent gateway and misconfigured stand-ins for the agent acceptance checks.

- :class:`Deployment` / :func:`deployment`: an initialised home on the embedded database, the real
  :class:`tundra.gateway.server.Gateway` on 127.0.0.1 port 0 (its own event loop in a thread),
  and a test agent enrolled through core at 127.0.0.1 with its certificate, key and CA bundle
  written to files (``--agent-cert``/``--agent-key``/``--ca-file``).
- :func:`tls_stand_in`: a Python ``ssl`` mTLS server standing in for the gateway, each shape of
  wrong: TLS 1.2 allowed, a client certificate requested but not required, none requested, a
  foreign client CA, no ALPN, a server certificate from another CA. After the handshake it
  answers whatever arrives with an HTTP/2 SETTINGS frame (or stays silent).
- :func:`openssl_stand_in`: ``openssl s_server`` in the same roles.
- :func:`grpc_stand_in`: a gRPC server with the gateway's own credentials (or none required)
  but no policy interceptor: every Session gets a Welcome.
- Command guards that are wrong in one way each (for AG-06).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tundra.agent.guard import CommandGuard
from tundra.agent.v1 import agent_pb2
from tundra.core.acceptance.context import RunOptions
from tundra.core.agents.envelope import Command, verify_command
from tundra.core.home import initialize
from tundra.core.pki import x509 as x
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.core.settings import Settings
from tundra.gateway.server import Gateway

H2_SETTINGS = bytes.fromhex("000000040000000000")


def make_services(home: Path, **overrides: Any) -> Services:
    settings = replace(Settings(home=home, database_url="", password_profile="test"), **overrides)
    services = Services(settings)
    initialize(services, admin_name="admin", admin_password="correct horse battery staple")
    return services


@dataclass(frozen=True)
class AgentFiles:
    agent_id: str
    server_name: str
    cert: Path
    key: Path
    ca: Path


def enroll(services: Services, name: str, directory: Path, *, address: str) -> AgentFiles:
    """A server ``name`` at ``address`` and its agent, enrolled through core; files written."""
    services.servers.add(SYSTEM, name=name, address=address)
    token = services.enrollment.create_join_token(SYSTEM, name)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    enrolled = services.enrollment.enroll(
        join_token=token.token,
        csr_pem=csr.public_bytes(serialization.Encoding.PEM),
        agent_version="test-1",
        hostname=f"{name}.test",
        source_address=address,
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = AgentFiles(
        enrolled.agent_id,
        name,
        directory / "agent.crt",
        directory / "agent.key",
        directory / "ca.pem",
    )
    files.cert.write_bytes(enrolled.certificate_pem)
    files.key.write_bytes(x.key_to_pem(key))
    files.key.chmod(0o600)
    files.ca.write_bytes(enrolled.ca_bundle_pem)
    return files


class GatewayThread:
    """The real Gateway serving from its own event loop in a background thread."""

    def __init__(self, services: Services, *, listen: str = "127.0.0.1:0") -> None:
        self.services = services
        self.listen = listen
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.gateway: Gateway | None = None
        self.port = 0

    def start(self) -> int:
        self.thread.start()

        async def start() -> Gateway:
            gateway = Gateway(self.services, listen=self.listen)
            await gateway.start()
            return gateway

        self.gateway = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        self.port = self.gateway.port
        return self.port

    def stop(self) -> None:
        if self.gateway is not None:
            asyncio.run_coroutine_threadsafe(self.gateway.stop(1.0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@contextlib.contextmanager
def running_gateway(services: Services, *, listen: str = "127.0.0.1:0") -> Iterator[int]:
    runner = GatewayThread(services, listen=listen)
    try:
        yield runner.start()
    finally:
        runner.stop()


@dataclass(frozen=True)
class Deployment:
    services: Services
    port: int
    agent: AgentFiles
    #: The gateway's own certificate chain and key (what stand-ins serve).
    server_cert: Path
    server_key: Path

    @property
    def ca_pem(self) -> bytes:
        return self.services.pki.ca_bundle_pem()

    def options(self, *, port: int | None = None, local: bool = True, **changes: Any) -> RunOptions:
        values: dict[str, Any] = {
            "url": "https://127.0.0.1:9",
            "gateway": f"127.0.0.1:{port or self.port}",
            "agent_cert": self.agent.cert,
            "agent_key": self.agent.key,
            "ca_file": self.agent.ca,
            "local": local,
            "services": self.services if local else None,
            "io_timeout": 3.0,
        }
        values.update(changes)
        return RunOptions(**values)


@contextlib.contextmanager
def deployment(home: Path) -> Iterator[Deployment]:
    services = make_services(home / "home")
    try:
        agent = enroll(services, "web-1", home / "agent", address="127.0.0.1")
        with running_gateway(services) as port:
            yield Deployment(
                services,
                port,
                agent,
                services.pki.gateway_cert_path,
                services.pki.gateway_key_path,
            )
    finally:
        services.close()


# --- Python ssl stand-in -----------------------------------------------------------------------


def server_context(
    cert: Path,
    key: Path,
    *,
    client_ca: bytes | None,
    verify_mode: ssl.VerifyMode = ssl.CERT_REQUIRED,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    alpn: tuple[str, ...] = ("h2",),
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    context.minimum_version = minimum
    context.maximum_version = maximum
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.decode())
    context.verify_mode = verify_mode
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


@contextlib.contextmanager
def tls_stand_in(context: ssl.SSLContext, *, answer: bool = True) -> Iterator[int]:
    """A TLS server on 127.0.0.1 (its port): after a handshake, whatever arrives is answered
    with an HTTP/2 SETTINGS frame (``answer``) or ignored; failed handshakes are just closed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    while not stop.is_set():
                        data = tls.recv(4096)
                        if not data:
                            return
                        if answer:
                            tls.sendall(H2_SETTINGS)
            except (OSError, ssl.SSLError):
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=handle, args=(conn,), daemon=True)
            worker.start()
            workers.append(worker)

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        acceptor.join(10)
        listener.close()
        for worker in workers:
            worker.join(10)


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


@contextlib.contextmanager
def openssl_stand_in(cert: Path, key: Path, *args: str) -> Iterator[int]:
    """``openssl s_server`` on 127.0.0.1 with ``args`` (its port)."""
    binary = shutil.which("openssl")
    assert binary is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [
            binary,
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-quiet",
            *args,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise AssertionError(f"openssl s_server did not start: {err}") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stderr):
            if stream is not None:
                stream.close()


# --- gRPC stand-in without the policy ----------------------------------------------------------


def _welcome_everyone(
    request_iterator: Iterator[bytes], context: grpc.ServicerContext
) -> Iterator[bytes]:
    for _ in request_iterator:
        welcome = agent_pb2.Welcome(agent_id="whoever", heartbeat_seconds=15)
        yield agent_pb2.ControlMessage(welcome=welcome).SerializeToString()
        return


@contextlib.contextmanager
def grpc_stand_in(
    deployment: Deployment, *, require_client_auth: bool = True, host: str = "127.0.0.1"
) -> Iterator[int]:
    """The gateway's certificate and client CA, but no policy: every Session is welcomed."""
    chain, key, bundle = deployment.services.pki.gateway_credentials()
    credentials = grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=bundle if require_client_auth else None,
        require_client_auth=require_client_auth,
    )
    handler = grpc.method_handlers_generic_handler(
        "tundra.agent.v1.AgentGateway",
        {"Session": grpc.stream_stream_rpc_method_handler(_welcome_everyone)},
    )
    pool = ThreadPoolExecutor(max_workers=4)
    server = grpc.server(pool, handlers=[handler])
    port = server.add_secure_port(f"{host}:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait(10)
        pool.shutdown(wait=True)


# --- command guards wrong in one way each ------------------------------------------------------


class ForgetfulGuard:
    """Verifies signature, audience and expiry, but keeps no nonces at all."""

    def __init__(self, *, agent_id: str, state_dir: Path, public_keys: Mapping[str, bytes]) -> None:
        self.agent_id = agent_id
        self.keys = dict(public_keys)

    def check(self, signed: Any, *, now_ms: int | None = None) -> Command:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return verify_command(
            signed.envelope,
            signed.signature,
            signed.key_id,
            public_keys=self.keys,
            agent_id=self.agent_id,
            now_ms=now,
        )

    def close(self) -> None:
        pass


class InMemoryNonceGuard(ForgetfulGuard):
    """Refuses a replay while it runs, but forgets every nonce on restart."""

    def __init__(self, *, agent_id: str, state_dir: Path, public_keys: Mapping[str, bytes]) -> None:
        super().__init__(agent_id=agent_id, state_dir=state_dir, public_keys=public_keys)
        self.seen: set[str] = set()

    def check(self, signed: Any, *, now_ms: int | None = None) -> Command:
        from tundra.core.errors import CommandRefused

        command = super().check(signed, now_ms=now_ms)
        if command.nonce in self.seen:
            raise CommandRefused("replayed", reason="replay")
        self.seen.add(command.nonce)
        return command


class ClockBlindGuard(CommandGuard):
    """The real guard, but it ignores the clock it is given (checks at the issue time)."""

    def check(self, signed: Any, *, now_ms: int | None = None) -> Command:
        import json

        issued = int(json.loads(signed.envelope)["issued_at_ms"])
        return super().check(signed, now_ms=issued)
