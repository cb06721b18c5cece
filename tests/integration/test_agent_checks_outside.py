"""AG-05 from a real "outside": a network namespace joined to this host by a veth pair.

The probe runs inside the namespace (``RunOptions.outside_probe = ("ip", "netns", "exec", NS)``)
and dials the gateway on this host's side of the veth. The real gateway (in-process, its own
event loop in a thread) must refuse the Session RPC from there (PERMISSION_DENIED: the address
is not the agent's server); a gateway bound to loopback only is refused at the TCP level; a gRPC
server with the gateway's credentials but no policy interceptor fails; an outside address that
``agent_trusted_cidrs`` trusts cannot test anything (skip). Root only;
``TUNDRA_REQUIRE_SERVICES=1`` turns the skip into a failure (CI runs as root). Namespace indexes
30–39 are this file's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from gatewayhelpers import enroll_agent, make_services
from netnshelpers import OutsideHost, outside_host

from tundra.agent.v1 import agent_pb2
from tundra.core.acceptance import runner
from tundra.core.acceptance.checks import agent as checks
from tundra.core.acceptance.context import RunOptions
from tundra.core.acceptance.model import Result, Status
from tundra.core.acceptance.registry import default_registry
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.gateway.server import Gateway


@contextlib.contextmanager
def gateway_thread(services: Services, listen: str) -> Iterator[int]:
    """The real Gateway on ``listen``, served from its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gateway = Gateway(services, listen=listen)
    try:
        yield asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(60)
    finally:
        asyncio.run_coroutine_threadsafe(gateway.stop(1.0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def _welcome_everyone(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for _ in requests:
        welcome = agent_pb2.Welcome(agent_id="whoever", heartbeat_seconds=15)
        yield agent_pb2.ControlMessage(welcome=welcome).SerializeToString()
        return


@contextlib.contextmanager
def no_policy_gateway(services: Services, host: str) -> Iterator[int]:
    """The gateway's certificate and client CA, but no policy: every Session is welcomed."""
    services.pki.ensure_gateway_cert(SYSTEM)
    chain, key, bundle = services.pki.gateway_credentials()
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=bundle, require_client_auth=True
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


def home_for(tmp_path: Path, outside: OutsideHost, **settings: Any) -> Services:
    # The gateway's certificate must name the address the outside dials.
    hostnames = f"localhost,127.0.0.1,::1,{outside.host_ip}"
    return make_services(tmp_path / "home", panel_hostnames=hostnames, **settings)


def ag05(outside: OutsideHost, port: int, **options: Any) -> Result:
    values: dict[str, Any] = {
        "url": f"https://{outside.host_ip}:9",
        "gateway": f"{outside.host_ip}:{port}",
        "outside_probe": ("ip", "netns", "exec", outside.name),
        "io_timeout": 3.0,
    }
    values.update(options)
    spec = default_registry(load=False).get("AG-05")
    assert spec.fn is checks.source_allowlist
    return runner.run(RunOptions(**values), checks=[spec]).by_id()["AG-05"]


def test_the_real_gateway_refuses_a_session_from_outside(tmp_path: Path) -> None:
    with outside_host(30) as outside:
        services = home_for(tmp_path, outside)
        try:
            with gateway_thread(services, f"{outside.host_ip}:0") as port:
                result = ag05(outside, port, local=True, services=services)
            servers = [s.name for s in services.servers.list(SYSTEM)]
        finally:
            services.close()
    assert result.status is Status.PASS, result.summary
    probe = result.evidence["probe"]
    assert probe["tcp"] == "open"
    assert probe["source"] == outside.ip
    assert probe["rpc"]["code"] == "PERMISSION_DENIED"
    assert f"source address {outside.ip} is not trusted" in probe["rpc"]["details"]
    assert result.evidence["vantage"] == f"outside probe: ip netns exec {outside.name}"
    assert not [name for name in servers if name.startswith("acceptance-")]


def test_without_the_control_plane_the_test_identity_is_refused_from_outside(
    tmp_path: Path,
) -> None:
    with outside_host(31) as outside:
        services = home_for(tmp_path, outside)
        try:
            agent = enroll_agent(services, "web-1", address="127.0.0.1")
            cert, key, ca = agent.write_files(tmp_path / "agent")
            with gateway_thread(services, f"{outside.host_ip}:0") as port:
                result = ag05(outside, port, agent_cert=cert, agent_key=key, ca_file=ca)
        finally:
            services.close()
    assert result.status is Status.PASS, result.summary
    assert result.evidence["identity"]["origin"] == "test identity"
    assert result.evidence["probe"]["rpc"]["code"] == "PERMISSION_DENIED"


def test_a_gateway_bound_to_loopback_is_refused_from_outside(tmp_path: Path) -> None:
    with outside_host(32) as outside:
        services = home_for(tmp_path, outside)
        try:
            with gateway_thread(services, "127.0.0.1:0") as port:
                result = ag05(outside, port, local=True, services=services)
        finally:
            services.close()
    assert result.status is Status.PASS, result.summary
    assert result.summary == (
        f"the gateway port is refused from outside probe: ip netns exec {outside.name}"
    )


def test_a_gateway_without_the_policy_fails_from_outside(tmp_path: Path) -> None:
    with outside_host(33) as outside:
        services = home_for(tmp_path, outside)
        try:
            with no_policy_gateway(services, outside.host_ip) as port:
                result = ag05(outside, port, local=True, services=services)
        finally:
            services.close()
    assert result.status is Status.FAIL, result.summary
    assert result.summary == (
        f"a Session from {outside.ip}, an untrusted address, was accepted (the gateway sent "
        "Welcome)"
    )


def test_a_trusted_outside_address_cannot_test_the_allowlist(tmp_path: Path) -> None:
    with outside_host(34) as outside:
        services = home_for(tmp_path, outside, agent_trusted_cidrs=f"{outside.ip}/32")
        try:
            with gateway_thread(services, f"{outside.host_ip}:0") as port:
                result = ag05(outside, port, local=True, services=services)
        finally:
            services.close()
    assert result.status is Status.SKIP, result.summary
    assert f"address {outside.ip} is trusted for the agent" in result.summary
