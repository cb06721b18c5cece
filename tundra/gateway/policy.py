"""The policy every gateway call passes before a servicer method runs.

In order: TLS 1.3 (a second layer behind the cipher list that already fails TLS 1.2 handshakes),
a client certificate whose single SPIFFE URI names an agent and whose EKU allows clientAuth, the
method in the allowlist (only the agent methods exist), a registered unrevoked agent and serial
(``services.agents.identify``, one indexed query on a gateway thread), and the source address in
the agent's trusted networks. A refusal aborts the call with a short reason and is audited through
``services.agents.refuse`` (rate-limited there).

The caller that passed is published to the servicer through :data:`CALLER`: each RPC runs in a
task of its own, so the context variable is that call's alone.
"""

from __future__ import annotations

import hashlib
import inspect
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tundra.core.crypto.primitives import new_id
from tundra.core.errors import AgentRefused, TundraError
from tundra.core.pki import x509 as x
from tundra.gateway.blocking import Blocking
from tundra.gateway.events import event
from tundra.gateway.status import status_for

if TYPE_CHECKING:
    from tundra.core.agents.models import Agent
    from tundra.core.services import Services

SERVICE = "/tundra.agent.v1.AgentGateway/"
SESSION_METHOD = SERVICE + "Session"
RENEW_METHOD = SERVICE + "Renew"
#: Only the agent methods exist; anything else is refused before a servicer is looked at.
ALLOWED_METHODS = frozenset({SESSION_METHOD, RENEW_METHOD})
#: Refusal reasons that mean "who you are could not be established" rather than "not allowed".
UNAUTHENTICATED_REASONS = frozenset(
    {"no-certificate", "bad-certificate", "no-identity", "expired", "unknown", "serial-unknown"}
)
PEER_CACHE_SIZE = 4096
#: One audit call per (agent, source, reason) per window from this process; the registry
#: rate-limits again across processes.
REFUSE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class PeerCertificate:
    agent_id: str | None
    serial: str
    not_before: datetime
    not_after: datetime
    client_auth: bool


@dataclass(frozen=True)
class Caller:
    agent: Agent
    certificate: PeerCertificate
    address: str
    method: str
    request_id: str

    @property
    def agent_id(self) -> str:
        return self.agent.id


CALLER: ContextVar[Caller] = ContextVar("tundra_gateway_caller")


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def refusal(reason: str, message: str) -> Refusal:
    code = (
        grpc.StatusCode.UNAUTHENTICATED
        if reason in UNAUTHENTICATED_REASONS
        else grpc.StatusCode.PERMISSION_DENIED
    )
    return Refusal(code, reason, message)


def parse_peer_certificate(pem: bytes) -> PeerCertificate:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = ExtendedKeyUsageOID.CLIENT_AUTH in eku
    except x509.ExtensionNotFound:
        client_auth = False
    return PeerCertificate(
        agent_id=x.agent_id_from_cert(cert),
        serial=x.serial_hex(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        client_auth=client_auth,
    )


class PeerCache:
    """Parsed peer certificates by SHA-256 of their PEM (parsing costs ~50 µs per call)."""

    def __init__(self, size: int = PEER_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[bytes, PeerCertificate | None] = OrderedDict()

    def get(self, pem: bytes) -> PeerCertificate | None:
        key = hashlib.sha256(pem).digest()
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        try:
            parsed: PeerCertificate | None = parse_peer_certificate(pem)
        except (ValueError, TundraError):
            parsed = None
        self._items[key] = parsed
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return parsed


def peer_ip(peer: str) -> str | None:
    """The IP address in gRPC's ``context.peer()`` ("ipv4:1.2.3.4:5", "ipv6:[::1]:5")."""
    kind, _, rest = unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = rest.rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class Policy:
    def __init__(self, services: Services, pool: Blocking) -> None:
        self._services = services
        self._pool = pool
        self._peers = PeerCache()
        self._refused: dict[tuple[str | None, str, str], float] = {}
        self._refused_lock = threading.Lock()
        self.checks = 0

    async def authorize(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Caller:
        """The caller, or abort the call (raises) with the refusal."""
        address = peer_ip(context.peer()) or context.peer()
        agent_id: str | None = None
        try:
            auth = context.auth_context()
            if auth.get("ssl_tls_version") != [b"TLSv1.3"]:
                raise refusal("tls-version", "TLS 1.3 is required")
            pem = next(iter(auth.get("x509_pem_cert", ())), None)
            if not pem:
                raise refusal("no-certificate", "a client certificate is required")
            peer = self._peers.get(pem)
            if peer is None:
                raise refusal("bad-certificate", "the client certificate cannot be read")
            agent_id = peer.agent_id
            if agent_id is None:
                raise refusal("no-identity", "the client certificate names no agent")
            if not peer.client_auth:
                raise refusal("eku", "the client certificate does not allow clientAuth")
            now = datetime.now(UTC)
            if not peer.not_before <= now < peer.not_after:
                raise refusal("expired", "the client certificate is not valid now")
            if method not in ALLOWED_METHODS:
                raise refusal("method", "no such method")
            agent = await self._pool(self._identify, agent_id, peer.serial, address)
            self.checks += 1
            return Caller(agent, peer, address, method, new_id())
        except Refusal as refused:
            await self.refuse(context, refused, agent_id=agent_id, source=address, method=method)
        except AgentRefused as exc:
            await self.refuse(
                context,
                refusal(exc.reason, exc.message),
                agent_id=agent_id,
                source=address,
                method=method,
            )
        except TundraError as exc:
            # Not a verdict on the caller (the database is down, say): no audit row.
            event("gateway.policy-error", level=logging.WARNING, agent_id=agent_id, error=str(exc))
            await context.abort(status_for(exc), exc.message)
            raise AssertionError("unreachable: abort raises") from exc  # pragma: no cover

    def _identify(self, agent_id: str, serial: str, address: str) -> Agent:
        agents = self._services.agents
        agent = agents.identify(agent_id, serial)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise refusal("source", "the source address is not trusted") from None
        if not any(ip in network for network in agents.trusted_networks(agent)):
            raise refusal("source", f"source address {address} is not trusted for this agent")
        return agent

    async def refuse(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        refused: Refusal,
        *,
        agent_id: str | None,
        source: str,
        method: str,
    ) -> NoReturn:
        """Log and audit a refusal, then abort the call with its status and reason.

        A caller refused again and again is logged and audited once a window, not per call."""
        if self._should_audit(agent_id, source, refused.reason):
            event(
                "gateway.refused",
                level=logging.WARNING,
                reason=refused.reason,
                code=refused.code.name,
                agent_id=agent_id,
                source=source,
                method=method,
            )
            try:
                await self._pool(
                    self._services.agents.refuse,
                    agent_id=agent_id,
                    reason=refused.reason,
                    source=source,
                    method=method,
                )
            except Exception as exc:
                # The caller is refused whether or not the audit row could be written.
                event("gateway.audit-error", level=logging.ERROR, error=repr(exc))
        await context.abort(refused.code, refused.message)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _should_audit(self, agent_id: str | None, source: str, reason: str) -> bool:
        now = time.monotonic()
        key = (agent_id, source, reason)
        with self._refused_lock:
            if now - self._refused.get(key, -REFUSE_WINDOW_SECONDS) < REFUSE_WINDOW_SECONDS:
                return False
            if len(self._refused) > 10_000:
                self._refused = {
                    k: t for k, t in self._refused.items() if now - t < REFUSE_WINDOW_SECONDS
                }
            self._refused[key] = now
            return True


Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


class PolicyInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each handler's behaviour so the policy sees the call's context before it runs."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method not in ALLOWED_METHODS:
            # Not a method of the protocol: no deserializer (raw bytes), works for any call shape.
            return grpc.stream_stream_rpc_method_handler(self._guard(_nothing, method))
        kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        kind = next(k for k in kinds if getattr(handler, k) is not None)
        return getattr(grpc, f"{kind}_rpc_method_handler")(  # type: ignore[no-any-return]
            self._guard(getattr(handler, kind), method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard(self, behaviour: Behaviour, method: str) -> Behaviour:
        policy = self._policy
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                CALLER.set(await policy.authorize(context, method))
                async for item in behaviour(request, context):
                    yield item

            return stream

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            CALLER.set(await policy.authorize(context, method))
            return await behaviour(request, context)

        return call


async def _nothing(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # authorize() always refuses a method outside the allowlist; this line is never reached.
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no such method")
